"""The executor's cache of loaded functions: bounded in count and in bytes, newest kept."""

from __future__ import annotations

import os
import pickle
from types import SimpleNamespace
from typing import Any

import cloudpickle
import pytest

from burla import protocol
from burla.exec import runner
from burla.exec.runner import Runner

pytestmark = pytest.mark.timeout(10)


def make_function(payload: bytes) -> Any:
    def uses(x: int) -> int:
        return len(payload) + x

    return uses


def load(r: Runner, name: str, payload: bytes) -> None:
    blob = cloudpickle.dumps(make_function(payload), protocol=pickle.HIGHEST_PROTOCOL)
    r.load(protocol.Load(f"job-{name}", name, {}, blob))


def test_small_functions_stay_until_the_count_bound():
    r = Runner(SimpleNamespace(job_id=""), None)  # type: ignore[arg-type]
    for n in range(runner.FUNCTION_CACHE_SIZE + 2):
        load(r, f"f{n}", b"x")
    assert list(r.functions) == [f"f{n}" for n in range(2, runner.FUNCTION_CACHE_SIZE + 2)]
    assert r.function is r.functions[f"f{runner.FUNCTION_CACHE_SIZE + 1}"]


def test_a_big_function_is_dropped_before_the_next_one_loads(monkeypatch):
    monkeypatch.setattr(runner, "FUNCTION_CACHE_BYTES", 1000)
    r = Runner(SimpleNamespace(job_id=""), None)  # type: ignore[arg-type]
    load(r, "small", b"x")
    load(r, "big", bytes(2000))
    assert list(r.functions) == ["big"] and r.function(1) == 2001  # kept alone while in use
    load(r, "other", b"yy")
    assert list(r.functions) == ["other"] and r.function(1) == 3
    r.load(protocol.Load("job-again", "other", {}, b""))  # cached: no bytes needed
    assert r.function(1) == 3 and r.job_id == "job-again"


def test_a_crash_report_keeps_the_users_frames_only() -> None:
    from burla.exec import zygote

    runtime = os.path.dirname(zygote.__file__)
    report = (
        "Fatal Python error: Segmentation fault\n\nStack (most recent call first):\n"
        '  File "/usr/lib/python3.11/ctypes/__init__.py", line 519 in string_at\n'
        '  File "/home/me/job.py", line 5 in crash\n'
        f'  File "{runtime}/runner.py", line 155 in run_chunk\n'
        f'  File "{runtime}/zygote.py", line 257 in _child\n'
        '  File "<frozen runpy>", line 88 in _run_code\n'
        "\nExtension modules: msgpack._cmsgpack (total: 1)\n"
    )
    kept = zygote.without_runtime_frames(report)
    assert "in crash" in kept and "in string_at" in kept and "Extension modules" in kept
    assert "run_chunk" not in kept and "_child" not in kept and "runpy" not in kept


def test_a_crash_report_pipe_never_blocks_its_writer() -> None:
    from burla.exec import zygote

    read_fd, write_fd = zygote.crash_pipe()
    try:
        written = 0
        with pytest.raises(BlockingIOError):  # full: the writer is told, not stopped
            while written < 64 << 20:
                written += os.write(write_fd, b"x" * 65536)
        assert written >= 64 * 1024  # at least a default pipe's worth fits
    finally:
        os.close(read_fd)
        os.close(write_fd)

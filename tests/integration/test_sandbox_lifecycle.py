"""The executor sandbox against the real kernel: how its processes start, fail, end and die
with their parent (signals, exit codes, named failing steps). Root only."""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import os
import resource
import select
import signal
import subprocess

import psutil
import pytest

from burla.agent.sandbox import SandboxSpec
from tests.integration.sandbox_harness import (
    EVENT_TIMEOUT,
    MARKS,
    fork_sandboxed,
    no_leftover_processes,  # noqa: F401 - an autouse fixture: importing it applies it here
    read_line,
    reap,
    run_sandboxed,
    run_sandboxed_status,
    wait_gone,
)

pytestmark = MARKS


def _start_waiting_executor(spec: SandboxSpec, on_sigterm_exit: int | None) -> tuple[int, int]:
    """Fork a sandboxed executor that reports readiness, then waits for a signal forever.

    Returns the outer reaper's pid and the read end of its pipe."""
    r, w = os.pipe()

    def inside() -> None:
        if on_sigterm_exit is not None:
            signal.signal(signal.SIGTERM, lambda *_: os._exit(on_sigterm_exit))
        os.write(w, b"ready\n")
        while True:
            signal.pause()

    pid = fork_sandboxed(spec, inside, w, [r])
    os.close(w)
    assert read_line(r) == "ready"
    return pid, r


def _sandbox_pids(outer: int) -> list[int]:
    """The outer reaper, pid 1 of its namespace and the executor, as host pids."""
    below = psutil.Process(outer).children(recursive=True)
    assert len(below) == 2, f"expected pid 1 and the executor under {outer}, got {below}"
    return [outer] + [p.pid for p in below]


@pytest.mark.parametrize(
    ("on_sigterm_exit", "expected"),
    [(None, -signal.SIGTERM), (7, 7)],
    ids=["default-action", "handler-exits-7"],
)
def test_sigterm_to_outer_reaper_reaches_executor(
    on_sigterm_exit: int | None, expected: int
) -> None:
    outer, r = _start_waiting_executor(SandboxSpec(), on_sigterm_exit)
    try:
        pids = _sandbox_pids(outer)
        os.kill(outer, signal.SIGTERM)
        assert os.waitstatus_to_exitcode(reap(outer)) == expected
        assert all(wait_gone(pid) for pid in pids)
    finally:
        os.close(r)


def test_executor_exit_code_and_crash_signal_propagate() -> None:
    def exits_3() -> None:
        os._exit(3)

    def segfaults() -> None:
        faulthandler.disable()  # pytest's would print a traceback before the crash
        ctypes.string_at(0)

    assert os.waitstatus_to_exitcode(run_sandboxed_status(exits_3)) == 3
    assert os.waitstatus_to_exitcode(run_sandboxed_status(segfaults)) == -signal.SIGSEGV


def test_killing_the_parent_kills_the_sandbox() -> None:
    """The agent-side forker (here `middle`) is SIGKILLed: every sandbox process must follow."""
    report_r, report_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(report_r)
            outer, ready = _start_waiting_executor(SandboxSpec(), None)
            os.write(report_w, f"{outer}\n".encode())
            os.waitpid(outer, 0)
        finally:
            os._exit(1)
    os.close(report_w)
    try:
        pids = _sandbox_pids(int(read_line(report_r)))
    finally:
        os.close(report_r)
    os.kill(middle, signal.SIGKILL)
    assert os.waitstatus_to_exitcode(reap(middle)) == -signal.SIGKILL
    still_running = [pid for pid in pids if not wait_gone(pid)]
    assert not still_running, f"sandbox processes outlived their parent: {still_running}"


def test_failed_step_is_named_before_any_fork() -> None:
    outcome = run_sandboxed(SandboxSpec(hidden_paths=("/nonexistent/burla-state",)), dict)
    assert outcome.reply["step"] == "hide /nonexistent/burla-state"
    assert "no such path" in outcome.reply["error"] and outcome.reply["errno"] == errno.ENOENT
    assert outcome.reply["pid"] > 2, "raised in the caller's process, outside any namespace"


def test_failed_step_inside_names_step_and_errno() -> None:
    outcome = run_sandboxed(SandboxSpec(workdir="/proc/burla-cannot-exist"), dict)
    assert outcome.reply["step"] == "create workdir /proc/burla-cannot-exist"
    assert outcome.reply["errno"] is not None
    assert "ENOENT" in outcome.reply["error"] or "EACCES" in outcome.reply["error"]
    assert outcome.reply["pid"] == 2, "raised in the executor, which alone returns"


def test_spec_refuses_root_and_bad_values() -> None:
    with pytest.raises(ValueError, match="unprivileged"):
        SandboxSpec(uid=0)
    with pytest.raises(ValueError, match="absolute"):
        SandboxSpec(hidden_paths=("relative/state",))
    with pytest.raises(ValueError, match="under /dev/"):
        SandboxSpec(private_dev=("/etc/passwd",))
    with pytest.raises(ValueError, match="RLIMIT_NOFILE"):
        SandboxSpec(rlimits={resource.RLIMIT_NOFILE: (10, 5)})


def test_processes_the_user_leaves_behind_die_with_the_executor() -> None:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def inside() -> None:
        subprocess.Popen(["sleep", "1000"], start_new_session=True)  # escapes its parent's group
        os.write(ready_w, b"ready\n")
        select.select([go_r], [], [], EVENT_TIMEOUT)
        os._exit(0)

    out_r, out_w = os.pipe()
    outer = fork_sandboxed(SandboxSpec(), inside, out_w, [out_r, ready_r, go_w])
    for fd in (out_w, ready_w, go_r):
        os.close(fd)
    try:
        assert read_line(ready_r) == "ready"
        below = psutil.Process(outer).children(recursive=True)
        assert [p.name() for p in below].count("sleep") == 1, below
        os.write(go_w, b"go")
        assert os.waitstatus_to_exitcode(reap(outer)) == 0
        still_running = [p.pid for p in below if not wait_gone(p.pid)]
        assert not still_running, f"left behind: {still_running}"
    finally:
        for fd in (out_r, ready_r, go_w):
            os.close(fd)

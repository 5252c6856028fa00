"""What the sandbox tests share: fork a child into the sandbox, run a check inside, read its
JSON reply, and reap it within a bounded time (root only; the tests skip where unsupported)."""

from __future__ import annotations

import json
import os
import select
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from burla.agent.sandbox import SandboxError, SandboxSpec, enter_sandbox, sandbox_supported

UNSUPPORTED = sandbox_supported()
MARKS = [
    pytest.mark.skipif(UNSUPPORTED is not None, reason=f"sandbox unsupported: {UNSUPPORTED}"),
    pytest.mark.timeout(60),
]
# How long any one process event (a message, an exit) may take before the test fails.
EVENT_TIMEOUT = 15.0
Check = Callable[[], Any]


def read_all(fd: int, timeout: float = EVENT_TIMEOUT) -> bytes:
    """Everything written to fd until every writer has closed it."""
    deadline, chunks = time.monotonic() + timeout, list[bytes]()
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no EOF on the result pipe within {timeout}s")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def read_line(fd: int, timeout: float = EVENT_TIMEOUT) -> str:
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, f"no message within {timeout}s"
    return os.read(fd, 4096).decode().strip()


def wait_gone(pid: int, timeout: float = EVENT_TIMEOUT) -> bool:
    """True once pid has exited (zombie or reaped), False if it still runs after timeout."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def reap(pid: int, timeout: float = EVENT_TIMEOUT) -> int:
    if not wait_gone(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"process {pid} still ran after {timeout}s")
    return os.waitpid(pid, 0)[1]


def fork_sandboxed(spec: SandboxSpec, check: Check, out_fd: int, close_fds: list[int]) -> int:
    """Fork a child that enters the sandbox, runs check inside and writes its JSON to out_fd."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for fd in close_fds:
            os.close(fd)
        try:
            enter_sandbox(spec)
            reply = {"result": check()}
        except SandboxError as e:
            reply = {"error": str(e), "step": e.step, "errno": e.errno, "pid": os.getpid()}
        os.write(out_fd, json.dumps(reply).encode())
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


@dataclass
class Outcome:
    reply: dict[str, Any]
    status: int


def run_sandboxed(spec: SandboxSpec, check: Check) -> Outcome:
    r, w = os.pipe()
    pid = fork_sandboxed(spec, check, w, [r])
    os.close(w)
    try:
        data = read_all(r)
    finally:
        os.close(r)
    status = reap(pid)
    assert data, f"the sandboxed child sent nothing (wait status {status})"
    return Outcome(json.loads(data), status)


def result_of(outcome: Outcome) -> Any:
    assert "result" in outcome.reply, outcome.reply
    assert os.waitstatus_to_exitcode(outcome.status) == 0
    return outcome.reply["result"]



def run_sandboxed_status(check: Check) -> int:
    r, w = os.pipe()
    pid = fork_sandboxed(SandboxSpec(), check, w, [r])
    os.close(w)
    try:
        assert read_all(r) == b"", "the check was to end the executor before it replied"
    finally:
        os.close(r)
    return reap(pid)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(left, timeout=EVENT_TIMEOUT)
    assert not alive, f"processes left behind: {alive}"


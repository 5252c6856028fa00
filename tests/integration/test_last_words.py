"""What a call printed right before a SIGKILL or a segfault reaches the caller: output still in
the capture pipes, and output the executor's link thread had taken but not yet sent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from burla import remote_parallel_map

pytestmark = pytest.mark.timeout(60)


def die(kind: str) -> None:
    import ctypes
    import signal

    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def speak_then_die(kind: str, marker: str) -> str:
    """The first attempt writes, flushes and dies at once; the retry returns."""
    import sys

    if os.path.exists(marker):
        return "retried"
    pid = os.getpid()
    Path(marker).write_text(str(pid))
    os.write(1, f"last words from fd 1 of {pid}\n".encode())
    print(f"flushed last words of {pid}", flush=True)
    print(f"flushed to stderr by {pid}", file=sys.stderr, flush=True)
    die(kind)
    return "unreachable"


@pytest.mark.parametrize("kind", ["sigkill", "segfault"])
def test_what_a_call_wrote_and_flushed_right_before_it_died_arrives(
    cluster, capfd, tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "died"
    assert remote_parallel_map(speak_then_die, [(kind, str(marker))], spinner=False) == [
        "retried"]
    pid = marker.read_text()
    captured = capfd.readouterr()
    assert f"last words from fd 1 of {pid}\n" in captured.out, captured
    assert f"flushed last words of {pid}\n" in captured.out, captured
    assert f"flushed to stderr by {pid}\n" in captured.err, captured


def taken_by_the_link_thread_then_killed(marker: str) -> str:
    """Output the link thread has taken and holds unsent (it sends every 50 ms) when the
    executor is killed: an unterminated line read from fd 1, and a complete Python line.
    Capture's internals tell when the link thread has taken them, so nothing waits on time."""
    import fcntl
    import signal
    import struct
    import sys
    import termios
    import time

    if os.path.exists(marker):
        return "retried"
    pid = os.getpid()
    Path(marker).write_text(str(pid))
    capture = sys.stdout.capture  # type: ignore[attr-defined]
    print(f"a line printed, unflushed, by {pid}")
    deadline = time.monotonic() + 10
    while capture.texts[0] and time.monotonic() < deadline:  # until the link thread takes it
        time.sleep(0.0005)
    os.write(1, f"an unterminated line from fd 1 of {pid}".encode())
    while time.monotonic() < deadline:  # until the link thread has read it from the pipe
        pending = struct.unpack("i", fcntl.ioctl(1, termios.FIONREAD, b"\0\0\0\0"))[0]
        if not pending:
            break
        time.sleep(0.0005)
    with capture._lock:  # the link thread's read (and its record of it) is over
        pass
    os.kill(pid, signal.SIGKILL)
    return "unreachable"


def test_output_the_link_thread_held_unsent_arrives_after_a_sigkill(
    cluster, capfd, tmp_path: Path
) -> None:
    marker = tmp_path / "died"
    assert remote_parallel_map(taken_by_the_link_thread_then_killed, [str(marker)],
                               spinner=False) == ["retried"]
    pid = marker.read_text()
    out = capfd.readouterr().out
    assert f"a line printed, unflushed, by {pid}\n" in out, out
    assert f"an unterminated line from fd 1 of {pid}" in out, out


def subprocess_speaks_then_parent_dies(marker: str) -> str:
    """A subprocess's output, still in the pipe, when the call's executor is killed."""
    import subprocess

    if os.path.exists(marker):
        return "retried"
    Path(marker).write_text(str(os.getpid()))
    subprocess.run(["sh", "-c", "echo from a subprocess; kill -KILL $PPID"], check=False)
    return "unreachable"


def test_output_of_a_subprocess_that_kills_its_executor_arrives(
    cluster, capfd, tmp_path: Path
) -> None:
    marker = tmp_path / "died"
    assert remote_parallel_map(subprocess_speaks_then_parent_dies, [str(marker)],
                               spinner=False) == ["retried"]
    assert "from a subprocess\n" in capfd.readouterr().out


def killed_while_its_output_is_in_the_pipe(marker: str) -> str:
    """Holding the capture's lock keeps the link thread from reading fd 1: the line is still
    in the pipe when the executor dies, for the zygote to read."""
    import signal
    import sys

    if os.path.exists(marker):
        return "retried"
    pid = os.getpid()
    Path(marker).write_text(str(pid))
    with sys.stdout.capture._lock:  # type: ignore[attr-defined]
        os.write(1, f"still in the pipe, from {pid}\n".encode())
        os.kill(pid, signal.SIGKILL)
    return "unreachable"


def test_output_still_in_the_pipe_when_the_executor_dies_arrives(
    cluster, capfd, tmp_path: Path
) -> None:
    marker = tmp_path / "died"
    assert remote_parallel_map(killed_while_its_output_is_in_the_pipe, [str(marker)],
                               spinner=False) == ["retried"]
    assert f"still in the pipe, from {marker.read_text()}\n" in capfd.readouterr().out


def sent_then_killed(marker: str) -> str:
    """A line that was sent before the executor died, then one that was not."""
    import signal
    import sys
    import time

    if os.path.exists(marker):
        return "retried"
    pid = os.getpid()
    Path(marker).write_text(str(pid))
    capture = sys.stdout.capture  # type: ignore[attr-defined]
    print(f"early line, sent, by {pid}", flush=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the link thread sent it: its journal is empty
        with capture._lock:
            if capture.journal._length == 0:
                break
        time.sleep(0.001)
    print(f"late line, unsent, by {pid}", flush=True)
    os.kill(pid, signal.SIGKILL)
    return "unreachable"


def test_output_sent_before_the_crash_is_not_repeated(cluster, capfd, tmp_path: Path) -> None:
    marker = tmp_path / "died"
    assert remote_parallel_map(sent_then_killed, [str(marker)], spinner=False) == ["retried"]
    pid = marker.read_text()
    out = capfd.readouterr().out
    # Sent means handed to ZeroMQ: a SIGKILL before its I/O thread wrote it can still lose it
    # (docs/architecture.md, "Output"), but never make it arrive twice.
    assert out.count(f"early line, sent, by {pid}\n") <= 1, out
    assert out.count(f"late line, unsent, by {pid}\n") == 1, out

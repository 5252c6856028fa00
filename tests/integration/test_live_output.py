"""Remote output shows while the call runs, as on a terminal: a line without its newline too."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

from burla import remote_parallel_map
from tests.vt import Screen

pytestmark = pytest.mark.timeout(90)
PARTIAL = "step 1 of 2... "
# The call gives up waiting after this long, so a failing test ends instead of hanging.
CALL_WAIT_SECONDS = 30


def print_partial_then_wait(go: str) -> bool:
    print(PARTIAL, end="", flush=True)
    deadline = time.monotonic() + CALL_WAIT_SECONDS
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    seen = os.path.exists(go)
    print("done")
    return seen


class Watcher(io.StringIO):
    """The caller's stdout: once the partial line shows, it lets the call go on."""

    def __init__(self, go: Path) -> None:
        super().__init__()
        self.go = go

    def write(self, text: str) -> int:
        written = super().write(text)
        if PARTIAL in self.getvalue() and not self.go.exists():
            self.go.write_text("seen")
        return written


def test_a_partial_line_arrives_while_the_call_still_runs(
    cluster: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    go = tmp_path / "go"
    watcher = Watcher(go)
    monkeypatch.setattr(sys, "stdout", watcher)
    # The call ends its line only once the caller has seen the start of it: before the fix the
    # line waited for its newline, the call for the caller, until CALL_WAIT_SECONDS ran out.
    assert remote_parallel_map(print_partial_then_wait, [str(go)], spinner=False) == [True]
    assert watcher.getvalue() == PARTIAL + "done\n"


ON_A_TERMINAL = '''
import os, sys, time
from burla import remote_parallel_map


def wait_for(path):
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


def call(folder):
    seen_frame = wait_for(os.path.join(folder, "frame-seen"))
    print("remote partial", end="", flush=True)
    seen_partial = wait_for(os.path.join(folder, "partial-seen"))
    print(" and its end")
    return seen_frame and seen_partial


if __name__ == "__main__":
    print("before:", end=" ", flush=True)
    print(remote_parallel_map(call, [sys.argv[1]]))
'''
COLUMNS = 80


def _run_on_a_pty(script: Path, folder: Path) -> str:
    """Run `script` on a pseudo-terminal of COLUMNS columns; create the files its call waits
    for once the terminal shows a status frame, then the call's partial line."""
    pid, master = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
        os.execve(sys.executable, [sys.executable, str(script), str(folder)],
                  {**os.environ, "TERM": "xterm"})
    transcript = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.1)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child is gone and the terminal drained
                break
            if not data:
                break
            transcript += data
            text = transcript.decode(errors="replace")
            if " running · " in text:
                (folder / "frame-seen").touch()
            if "remote partial" in text:
                (folder / "partial-seen").touch()
    finally:
        os.close(master)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, transcript.decode(errors="replace")
    return transcript.decode()


def test_on_a_terminal_the_status_line_keeps_the_callers_line_and_shows_a_partial_one(
    cluster: object, tmp_path: Path,
) -> None:
    script = tmp_path / "on_a_terminal.py"
    script.write_text(ON_A_TERMINAL)
    transcript = _run_on_a_pty(script, tmp_path)
    assert Screen(transcript, COLUMNS).lines == [
        "before:",  # the caller's own line: the status line began below it
        "remote partial and its end",  # shown before its end, never drawn over
        "[True]",  # the call saw the terminal show both
        "",
    ], transcript

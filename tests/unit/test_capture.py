"""Capture under a full pipe: every line arrives, tagged with the input that printed it.

Capture takes over fds 1 and 2, so the case runs in a child interpreter with a reader thread
that plays the executor's link thread.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PIPE_BYTES = 4096  # the smallest pipe Linux makes: one page
CHILD = textwrap.dedent(
    f"""
    import fcntl, json, select, sys, threading, time
    from burla.exec.capture import Capture

    inputs = int(sys.argv[2])
    capture = Capture()
    for fd in capture.read_fds:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, {PIPE_BYTES})
    entries, stop = [], threading.Event()

    def reader():
        poller = select.poll()
        for fd in capture.read_fds:
            poller.register(fd, select.POLLIN)
        while not stop.is_set():
            for fd, _ in poller.poll(10):
                time.sleep(0.02)  # a busy link thread: the runner meets a full pipe meanwhile
                capture.read(fd, entries)
        capture.read_all(entries)

    thread = threading.Thread(target=reader)
    thread.start()
    for index in range(inputs):
        capture.begin(index)
        # Written at end() in one go, it leaves no room in the pipe for the separator.
        print(f"{{index:04d}} " + "x" * ({PIPE_BYTES} - 32))
        capture.end(index)
    stop.set()
    thread.join()
    with open(sys.argv[1], "w") as out:
        json.dump(entries, out)
    """
)


@pytest.mark.timeout(40)
def test_a_separator_meeting_a_full_pipe_waits_for_the_reader(tmp_path: Path) -> None:
    # The separator write used to hold the lock that the reader needs to drain the pipe: the
    # executor hung for good (seen in W5, 10,000 inputs printing 10 lines each).
    inputs = 20
    out = tmp_path / "entries.json"
    child = subprocess.run([sys.executable, "-c", CHILD, str(out), str(inputs)],
                           timeout=20, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    tagged = [(index, stream, text) for index, stream, text in json.loads(out.read_text())]
    assert [(index, stream) for index, stream, _ in tagged] == [(i, 1) for i in range(inputs)]
    assert all(text.startswith(f"{index:04d} x") for index, _, text in tagged)

"""Capture: every line arrives, whole, tagged with the input that printed it.

Capture takes over fds 1 and 2, so each case runs in a child interpreter with a reader thread
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

    out_path, mode, inputs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    capture = Capture()
    if mode == "pipe":  # as if C code had written: Python's writes use the pipes
        capture.use_pipes()
    for fd in capture.read_fds:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, {PIPE_BYTES})
    entries, stop = [], threading.Event()

    def reader():
        poller = select.poll()
        for fd in capture.read_fds:
            poller.register(fd, select.POLLIN)
        while not stop.is_set():
            capture.take_texts(entries)
            for fd, _ in poller.poll(1):
                time.sleep(0.02)  # a busy link thread: the runner meets a full pipe meanwhile
                capture.read(fd, entries)
        capture.read_all(entries)

    thread = threading.Thread(target=reader)
    thread.start()
    for index in range(inputs):
        capture.begin(index)
        # Pipe mode: written at end() in one go, it leaves no room for the separator.
        print(f"{{index:04d}} " + "x" * ({PIPE_BYTES} - 32))
        if mode == "memory":  # lines built from many writes, some on stderr
            for part in range(50):
                print(f"{{index:04d}}", end="")
                print(f" {{part}}", end=" y\\n" if part % 10 == 9 else "")
            print(f"{{index:04d}} to stderr", file=sys.stderr)
        capture.end(index)
    stop.set()
    thread.join()
    with open(out_path, "w") as out:
        json.dump(entries, out)
    """
)


def _run_child(tmp_path: Path, mode: str, inputs: int) -> list[tuple[int, int, str]]:
    out = tmp_path / "entries.json"
    child = subprocess.run([sys.executable, "-c", CHILD, str(out), mode, str(inputs)],
                           timeout=20, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    return [(index, stream, text) for index, stream, text in json.loads(out.read_text())]


@pytest.mark.timeout(40)
def test_a_separator_meeting_a_full_pipe_waits_for_the_reader(tmp_path: Path) -> None:
    # The separator write used to hold the lock that the reader needs to drain the pipe: the
    # executor hung for good (seen in W5, 10,000 inputs printing 10 lines each).
    inputs = 20
    entries = _run_child(tmp_path, "pipe", inputs)
    assert [(index, stream) for index, stream, _ in entries] == [(i, 1) for i in range(inputs)]
    assert all(text.startswith(f"{index:04d} x") for index, _, text in entries)


@pytest.mark.timeout(40)
def test_python_writes_kept_in_memory_arrive_as_whole_lines_of_their_input(
    tmp_path: Path,
) -> None:
    inputs = 300
    entries = _run_child(tmp_path, "memory", inputs)
    lines: dict[tuple[int, int], list[str]] = {}
    for index, stream, text in entries:
        assert text.endswith("\n"), f"entry {text[-30:]!r} of input {index} cuts a line"
        for line in text.splitlines():
            assert line.startswith(f"{index:04d}"), f"{line[:20]!r} tagged with input {index}"
            lines.setdefault((index, stream), []).append(line)
    for index in range(inputs):
        stdout = lines[(index, 1)]
        assert len(stdout) == 6 and stdout[0].startswith(f"{index:04d} x")
        expected = ["".join(f"{index:04d} {p}" for p in range(start, start + 10)) + " y"
                    for start in range(0, 50, 10)]
        assert stdout[1:] == expected
        assert lines[(index, 2)] == [f"{index:04d} to stderr"]


PARTIAL_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from burla.exec.capture import Capture

    capture = Capture()
    steps = {}

    def step(name, take):
        out = []
        take(out)
        steps[name] = out

    def later():  # a cutoff every line open now began before
        return time.monotonic() + 1

    # Python's writes, kept in memory.
    capture.begin(3)
    print("a\\nb", end="")
    step("complete lines only", capture.take_texts)
    step("too fresh", lambda out: capture.take_partial(time.monotonic() - 10, out))
    steps["due"] = [capture.partial_due(later())]
    step("as it stands", lambda out: capture.take_partial(later(), out))
    print("c")
    print("abc", end="")
    step("held", capture.take_texts)
    sys.stdout.write("\\n")  # its end came before it was due: one whole line
    step("joined", lambda out: capture.take_partial(later(), out))
    print("p", end="")
    capture.take_texts([])
    capture.end(3)
    before_next = time.monotonic()
    capture.begin(4)
    print("q", end="")
    step("next input", lambda out: capture.take_partial(before_next, out))
    capture.end(4)
    step("ended", capture.take_texts)

    # fd-level writes, through the pipes, closed by separators.
    capture.use_pipes()
    read = lambda out: capture.read(capture.read_fds[0], out)
    capture.begin(5)
    os.write(1, b"50%")
    step("pipe held", read)
    step("pipe as it stands", lambda out: capture.take_partial(later(), out))
    os.write(1, "é".encode()[:1])
    read([])
    step("half a character", lambda out: capture.take_partial(later(), out))
    os.write(1, "é".encode()[1:] + b" done\\ntail")
    step("pipe rest", read)
    step("pipe tail", lambda out: capture.take_partial(later(), out))
    capture.end(5)
    capture.begin(6)
    os.write(1, b"six\\n")
    step("after the separator", read)
    with open(sys.argv[1], "w") as out:
        json.dump(steps, out)
    """
)


@pytest.mark.timeout(40)
def test_an_unterminated_line_goes_as_it_stands_once_due_and_keeps_its_input(
    tmp_path: Path,
) -> None:
    out = tmp_path / "steps.json"
    child = subprocess.run([sys.executable, "-c", PARTIAL_CHILD, str(out)], timeout=20,
                           capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    steps = json.loads(out.read_text())
    assert steps == {
        "complete lines only": [[3, 1, "a\n"]],
        "too fresh": [],  # a print's text waits for its newline, written right after it
        "due": [True],
        "as it stands": [[3, 1, "b"]],
        "held": [[3, 1, "c\n"]],
        "joined": [[3, 1, "abc\n"]],
        "next input": [[3, 1, "p"]],  # input 4's line began after the cutoff: it waits
        "ended": [[4, 1, "q"]],
        "pipe held": [],
        "pipe as it stands": [[5, 1, "50%"]],
        "half a character": [],  # never a broken UTF-8 character
        "pipe rest": [[5, 1, "é done\n"]],
        "pipe tail": [[5, 1, "tail"]],
        "after the separator": [[6, 1, "six\n"]],
    }

"""The executor's link thread sends a line left unterminated while the call that wrote it runs.

Capture takes over fds 1 and 2, so the case runs in a child interpreter; a ROUTER socket there
plays the agent, and the child's main thread plays a call blocked mid-line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    import zmq
    from burla import protocol, transport
    from burla.exec.capture import Capture
    from burla.exec.link import AgentLink

    ctx = zmq.Context()
    agent = transport.router_socket(ctx, "tcp://127.0.0.1:0")
    capture = Capture()
    link = AgentLink(transport.bound_endpoint(agent), "exec-1", capture)
    link.job_id = "job-1"
    link.start()
    received = []

    def wait_for(text):
        # Bounded: the call below never ends its line, so only a partial send can deliver it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if agent.poll(100):
                _peer, msg = transport.recv_sync(agent, routed=True)
                if isinstance(msg, protocol.Logs):
                    received.extend(msg.entries())
                    if "".join(e[2] for e in received).endswith(text):
                        return True
        return False

    link.busy = True  # a chunk runs: the runner is inside a call
    capture.begin(7)
    print("downloading... ", end="", flush=True)
    arrived = [wait_for("downloading... ")]
    print("\\r 50%", end="")
    arrived.append(arrived[-1] and wait_for("\\r 50%"))
    capture.use_pipes()  # a C extension or a subprocess writes to fd 2 as well
    os.write(2, b"fd-level, no newline")
    arrived.append(arrived[-1] and wait_for("fd-level, no newline"))
    link.busy = False
    capture.end(7)
    link.close()
    with open(sys.argv[1], "w") as out:
        json.dump({"arrived": arrived, "received": received}, out)
    """
)


@pytest.mark.timeout(60)
def test_a_line_without_its_newline_is_sent_while_the_call_still_runs(tmp_path: Path) -> None:
    out = tmp_path / "link.json"
    child = subprocess.run([sys.executable, "-c", CHILD, str(out)], timeout=45,
                           capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    report = json.loads(out.read_text())
    assert report["arrived"] == [True, True, True], report["received"]
    assert [(index, stream) for index, stream, _ in report["received"]] == [
        (7, 1), (7, 1), (7, 2)]
    assert "".join(text for _, _, text in report["received"]) == (
        "downloading... \r 50%fd-level, no newline")


def test_one_huge_print_travels_in_pieces_that_each_fit_a_message() -> None:
    from burla.exec.link import LOG_BATCH_BYTES, _split_batch

    huge = "x" * (3 * LOG_BATCH_BYTES + 5)
    entries: list[list[object]] = [[4, 1, "before\n"], [5, 1, huge], [5, 2, "after\n"]]
    batches = []
    while entries:
        batch, entries = _split_batch(entries)
        batches.append(batch)
    for batch in batches:
        assert sum(len(str(entry[2])) for entry in batch) <= LOG_BATCH_BYTES + len("after\n")
    flat = [entry for batch in batches for entry in batch]
    assert "".join(str(e[2]) for e in flat if e[:2] == [5, 1]) == huge
    assert flat[0] == [4, 1, "before\n"] and flat[-1] == [5, 2, "after\n"]

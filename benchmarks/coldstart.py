"""W3: start a tool from nothing in a fresh interpreter and time it to the first result."""

from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import memory
from benchmarks.peers.base import Peer
from benchmarks.peers.burla_peer import local_down

# Bounds one cold start, its shutdown included; a slower one is reported as a failure.
COLD_START_TIMEOUT_S = 90
# How long `burla local down` may leave a coordinator process behind before that is a failure.
DOWN_GRACE_S = 10


def _wait_burla_down() -> None:
    before = memory.burla_coordinators()
    local_down()
    deadline = time.monotonic() + DOWN_GRACE_S
    while memory.burla_coordinators() or any(p.is_running() for p in before):
        if time.monotonic() > deadline:
            raise RuntimeError("a burla coordinator is still running after `burla local down`")
        time.sleep(0.05)


def measure(peer: Peer) -> dict[str, float]:
    """Run the peer's cold-start script once; returns in-script and spawn-to-result seconds."""
    if not peer.cold_start_script:
        raise RuntimeError(f"{peer.name} has no cold-start script")
    if peer.name == "burla":
        _wait_burla_down()
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        script = Path(tmp, "cold_start.py")
        script.write_text(peer.cold_start_script)
        # Files, not pipes: a daemon the script leaves running must not hold our read end open.
        out_path, err_path = Path(tmp, "out"), Path(tmp, "err")
        with out_path.open("w") as out, err_path.open("w") as err:
            spawned_at = time.time()
            done = subprocess.run(
                [sys.executable, str(script)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                timeout=COLD_START_TIMEOUT_S,
            )
        lines = [ln for ln in out_path.read_text().splitlines() if ln.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            tail = err_path.read_text()[-800:]
            raise RuntimeError(f"cold start exited {done.returncode} without a result: {tail}")
    _, elapsed, done_at, result = lines[-1].split(" ", 3)
    if ast.literal_eval(result) != [2, 4, 6]:
        raise AssertionError(f"wrong results: cold start returned {result}")
    return {"seconds": float(elapsed), "spawn_to_result": float(done_at) - spawned_at}

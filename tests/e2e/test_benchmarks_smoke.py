"""Smoke test of the benchmark suite: a quick W2 run prints a table with a measured burla row."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# The peers W2's target names, and the local reference; ipyparallel (10 s to start) is left out.
TOOLS = ["burla", "multiprocessing", "ray", "dask"]
MEASURED = re.compile(r"^\d+(\.\d+)? (ms|s)$")


def _rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("| W2"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[1]] = cells
    return rows


@pytest.mark.timeout(90)
def test_quick_w2_reports_burla_and_skips_missing_peers(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--only", "W2",
         "--peers", *TOOLS, "--log-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=80,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| workload | tool | median | detail | burla/peer | target |" in done.stdout
    rows = _rows(done.stdout)
    assert "burla" in rows, done.stdout
    burla = rows["burla"]
    assert MEASURED.match(burla[2]), f"burla did not measure: {burla}\n{done.stderr[-3000:]}"
    assert burla[5].startswith(("met", "missed", "incomplete")), burla
    for tool in TOOLS[1:]:
        cells = rows[tool]
        # An installed peer is measured; a missing one is a clean skip, never an error.
        assert MEASURED.match(cells[2]) or cells[2].startswith("skipped: not installed"), cells
        if MEASURED.match(cells[2]):
            assert re.match(r"^\d+\.\d\d$", cells[4]), f"no burla/peer ratio: {cells}"

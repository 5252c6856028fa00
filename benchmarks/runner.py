"""Run each (workload, tool) in its own bounded subprocess and collect Outcomes; no formatting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks import memory, tasks
from benchmarks.outcome import Outcome
from benchmarks.peers import PEERS
from benchmarks.peers.burla_peer import local_down
from benchmarks.workloads import W5_END_MARKER, W5_REPEAT_STRIDE, WORKLOADS, Workload

REPO_ROOT = Path(__file__).resolve().parent.parent
# Time a run may take beyond its budget: starting a cluster (ipyparallel takes ~7 s here,
# Ray ~5 s), preparing inputs, and stopping again.
STARTUP_ALLOWANCE_S = 120
# A run is killed when the machine's available memory falls below this share: one runaway peer
# must not take the machine (and the rest of the suite) down with it. System-wide, because
# summing RSS over a tree counts shared memory (Ray's object store) once per process.
MEMORY_GUARD_FREE_FRACTION = 0.12
POLL_S = 0.5
# Time past the budget before a run is killed: lets a repeat that just finished stop its cluster.
STOP_GRACE_S = 20
LINE_RE = re.compile(rf"{tasks.LINE_PREFIX} (\d+) (\d+)\b|{W5_END_MARKER} (\d+)")


@dataclass(frozen=True)
class Options:
    quick: bool
    repeats: int
    workers: int
    log_dir: Path


def _is_burla_daemon(proc: psutil.Process) -> bool:
    try:
        joined = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return "burla" in joined and "benchmarks" not in joined and "cold_start.py" not in joined


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_one(workload: Workload, tool: str, opts: Options) -> Outcome:
    outcome = Outcome(workload.name, tool)
    missing = PEERS[tool].missing()
    if missing:
        outcome.skipped = f"not installed ({', '.join(missing)}); pip install -e '.[bench]'"
        return outcome
    budget = workload.quick_budget_s if opts.quick else workload.budget_s
    stem = opts.log_dir / f"{workload.name}-{tool}"
    result_path = stem.with_suffix(".json")
    cmd = [
        sys.executable, "-m", "benchmarks.child", "--workload", workload.name, "--tool", tool,
        "--workers", str(opts.workers), "--repeats", str(opts.repeats), "--budget", str(budget),
        "--result", str(result_path), *(["--quick"] if opts.quick else []),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    min_available = psutil.virtual_memory().total * MEMORY_GUARD_FREE_FRACTION
    seen: dict[int, psutil.Process] = {}
    with open(f"{stem}.out", "w") as out, open(f"{stem}.err", "w") as err:
        child = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + budget + STARTUP_ALLOWANCE_S
        measuring = False
        while child.poll() is None:
            tree = memory.descendants(child.pid)
            seen.update((p.pid, p) for p in tree)
            if not measuring and (first := _first_measure_at(result_path)):
                # Once timing began, the budget runs from there: startup slack is not for work.
                measuring, deadline = True, first + budget + STOP_GRACE_S
            if time.time() > deadline:
                outcome.killed = f"timeout (> {budget:.0f} s budget)"
            elif psutil.virtual_memory().available < min_available:
                outcome.killed = f"memory guard (< {min_available / 2**30:.1f} GiB free)"
            if outcome.killed:
                memory.kill_all([psutil.Process(child.pid), *tree])
                break
            time.sleep(POLL_S)
        child.wait()
    leftovers = [p for p in seen.values() if p.is_running() and not _is_burla_daemon(p)]
    memory.kill_all(leftovers)
    if outcome.killed and tool == "burla":
        try:  # a stuck embedded cluster would fail every later burla run too
            local_down()
        except Exception as exc:  # noqa: BLE001
            outcome.notes.append(f"burla local down after kill failed: {exc}")
    _read_result(outcome, result_path, Path(f"{stem}.err"))
    if workload.name == "W5" and outcome.runs:
        _verify_lines(outcome, Path(f"{stem}.out"), workload, opts)
    return outcome


def _first_measure_at(result_path: Path) -> float | None:
    try:
        return json.loads(result_path.read_text()).get("first_measure_at")
    except (OSError, ValueError):
        return None


def _read_result(outcome: Outcome, result_path: Path, err_path: Path) -> None:
    try:
        state = json.loads(result_path.read_text())
    except (OSError, ValueError):
        tail = err_path.read_text()[-300:] if err_path.exists() else ""
        outcome.error = outcome.error or f"no result written; stderr: {tail.strip()}"
        return
    outcome.runs = state["runs"]
    outcome.error = state["error"]
    outcome.notes += state["notes"]
    outcome.versions = state["versions"]
    if outcome.killed and state["measure_started_at"]:
        outcome.lower_bound_s = time.time() - state["measure_started_at"]
    if not state["complete"] and not outcome.killed and not outcome.error:
        outcome.error = "run exited before finishing; see " + str(err_path)


def _verify_lines(outcome: Outcome, out_path: Path, workload: Workload, opts: Options) -> None:
    """Count, per repeat, the W5 lines that reached stdout before the call returned, in order."""
    n = workload.quick_size if opts.quick else workload.size
    arrived: dict[int, list[int]] = defaultdict(list)  # input -> line numbers, as seen
    ended: set[int] = set()
    late: dict[int, int] = defaultdict(int)  # repeat -> lines seen after its call returned
    with out_path.open(errors="replace") as out:
        for line in out:
            for match in LINE_RE.finditer(line):
                if match.group(3) is not None:
                    ended.add(int(match.group(3)))
                    continue
                x, j = int(match.group(1)), int(match.group(2))
                if x // W5_REPEAT_STRIDE in ended:
                    late[x // W5_REPEAT_STRIDE] += 1
                arrived[x].append(j)
    expected = list(range(tasks.LINES_PER_TASK))
    for repeat, run in enumerate(outcome.runs):
        xs = range(repeat * W5_REPEAT_STRIDE, repeat * W5_REPEAT_STRIDE + n)
        got = sum(len(arrived.get(x, ())) for x in xs)
        ordered = sum(arrived.get(x) == expected for x in xs)
        run["lines_arrived"] = got / (n * tasks.LINES_PER_TASK)
        run["tasks_in_order"] = ordered / n
        run["late_lines"] = late[repeat]
    outcome.notes.append(
        "lines arrived {:.1%}, tasks complete and in order {:.1%}".format(
            outcome.median().get("lines_arrived", 0), outcome.median().get("tasks_in_order", 0)
        )
    )


def run_suite(names: list[str], tools: list[str], opts: Options) -> list[Outcome]:
    outcomes = []
    for name in names:
        workload = WORKLOADS[name]
        for tool in tools:
            if workload.tools is not None and tool not in workload.tools:
                continue
            _progress(f"[bench] {name} on {tool} ...")
            began = time.monotonic()
            outcome = run_one(workload, tool, opts)
            status = outcome.skipped or outcome.killed or outcome.error or "ok"
            _progress(f"[bench] {name} on {tool}: {status} ({time.monotonic() - began:.0f} s)")
            outcomes.append(outcome)
    return outcomes


def default_log_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="burla-bench-"))

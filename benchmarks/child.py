"""Run one workload on one tool in this process and write what it measured to a JSON file."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import memory, tasks
from benchmarks.contention import ForeignLoad
from benchmarks.peers import PEERS
from benchmarks.workloads import WORKLOADS

MB = 1024 * 1024


class Reporter:
    """Rewrites the result file atomically after every step, so a killed run leaves its progress."""

    def __init__(self, path: Path, workload: str, tool: str) -> None:
        self.path = path
        self.state: dict[str, Any] = {
            "workload": workload, "tool": tool, "runs": [], "error": None, "notes": [],
            "versions": "", "measure_started_at": None, "complete": False,
        }

    def update(self, **changes: Any) -> None:
        self.state.update(changes)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.path)


def run(args: argparse.Namespace) -> int:
    workload = WORKLOADS[args.workload]
    peer = PEERS[args.tool]()
    n = workload.quick_size if args.quick else workload.size
    report = Reporter(Path(args.result), workload.name, peer.name)
    started = False
    try:
        prepared = workload.prepare(peer, n) if workload.own_cluster else None
        if not workload.own_cluster:
            peer.start(args.workers)
            started = True
            warm = list(range(2 * args.workers))
            if peer.map(tasks.noop, warm) != warm:
                raise AssertionError("warm-up returned wrong results")
            prepared = workload.prepare(peer, n)
        note = workload.note(peer)
        report.update(versions=peer.versions(), notes=[note] if note else [])
        spent = last = 0.0
        for repeat in range(args.repeats):
            if repeat and spent + last > args.budget:
                report.state["notes"].append(f"stopped after {repeat} repeats (time budget)")
                break
            now = time.time()
            report.update(measure_started_at=now, first_measure_at=report.state.get(
                "first_measure_at") or now)
            began = time.perf_counter()
            with ForeignLoad(peer.cpu_processes) as foreign:
                if workload.sampled:
                    with memory.PeakSampler(peer.cluster_processes) as sampler:
                        metrics = workload.measure(peer, prepared, n, repeat)
                    metrics["client_peak_mb"] = sampler.client_peak / MB
                    metrics["cluster_peak_mb"] = sampler.cluster_peak / MB
                else:
                    metrics = workload.measure(peer, prepared, n, repeat)
            metrics["foreign_cores"] = foreign.cores
            last = time.perf_counter() - began
            spent += last
            report.update(runs=[*report.state["runs"], metrics], measure_started_at=None)
            if started:
                peer.between_runs()
    except BaseException as exc:  # noqa: BLE001 - any failure becomes the row's error text
        traceback.print_exc()
        report.update(error=f"{type(exc).__name__}: {exc}"[:300])
    finally:
        if started:
            try:
                peer.stop()
            except Exception as exc:  # noqa: BLE001 - a failed stop is a note, not a lost result
                report.state["notes"].append(f"stop failed: {type(exc).__name__}: {exc}"[:200])
    report.update(complete=True)
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child")
    parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    parser.add_argument("--tool", required=True, choices=sorted(PEERS))
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--budget", type=float, required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--quick", action="store_true")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

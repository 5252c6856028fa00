"""Command line: `python -m benchmarks run [--quick] [--only W1 W2] [--peers ...] [--out FILE]`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks import report, runner
from benchmarks.peers import PEERS
from benchmarks.workloads import WORKLOADS

ALL_NAMES = sorted(WORKLOADS)
FULL_REPEATS = 3


def _names(only: list[str] | None) -> list[str]:
    if not only:
        return ALL_NAMES
    names = [n.upper() for n in only]
    unknown = [n for n in names if n not in ALL_NAMES]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; choose from {ALL_NAMES}")
    return sorted(set(names), key=ALL_NAMES.index)


def _tools(peers: list[str] | None) -> list[str]:
    if not peers:
        return list(PEERS)
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise SystemExit(f"unknown tool(s) {unknown}; choose from {list(PEERS)}")
    return [p for p in PEERS if p in peers]


def cmd_run(args: argparse.Namespace) -> int:
    names = _names(args.only)
    tools = _tools(args.peers)
    repeats = args.repeats or (1 if args.quick else FULL_REPEATS)
    log_dir = Path(args.log_dir) if args.log_dir else runner.default_log_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    opts = runner.Options(quick=args.quick, repeats=repeats, workers=args.workers,
                          log_dir=log_dir)
    print(f"[bench] logs of every run in {log_dir}", file=sys.stderr, flush=True)
    load_at_start, state_at_start = os.getloadavg()[0], report.code_state()
    outcomes = runner.run_suite([n for n in names if n in WORKLOADS], tools, opts)
    if "burla" in tools and not args.keep_cluster:
        try:
            runner.local_down()
        except Exception as exc:  # noqa: BLE001 - the report matters more than the cleanup
            print(f"[bench] burla local down failed: {exc}", file=sys.stderr)
    mode = "quick" if args.quick else "full"
    text = report.header(mode, repeats, args.workers, outcomes, load_at_start,
                         state_at_start) + "\n\n"
    text += report.table(outcomes, names) + "\n"
    print(text)
    out = Path(args.out) if args.out else (None if args.quick else report.default_results_path())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"[bench] wrote {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="burla's benchmark suite against its peers")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run workloads on burla and every installed peer")
    run.add_argument("--quick", action="store_true",
                     help="smaller inputs and one repeat; writes no results file unless --out")
    run.add_argument("--only", nargs="+", metavar="NAME", help=f"workloads, from {ALL_NAMES}")
    run.add_argument("--peers", nargs="+", metavar="TOOL",
                     help=f"tools to run (default: all installed), from {list(PEERS)}")
    run.add_argument("--out", help="write the markdown report here (full runs default to "
                     "benchmarks/results/YYYY-MM-DD-<commit>.md)")
    run.add_argument("--repeats", type=int, help=f"repeats per measurement (default: quick 1, "
                     f"full {FULL_REPEATS}); medians are reported")
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                     help="worker processes for every tool (default: this machine's CPUs)")
    run.add_argument("--log-dir", help="where each run's stdout/stderr/result go (default: temp)")
    run.add_argument("--keep-cluster", action="store_true",
                     help="leave burla's embedded cluster running at the end")
    args = parser.parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

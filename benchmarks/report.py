"""The markdown report: run header (date, machine, commit) and one table of medians and ratios."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import subprocess
from collections import defaultdict
from pathlib import Path

import psutil

from benchmarks import targets
from benchmarks.outcome import Outcome
from benchmarks.workloads import WORKLOADS, fmt_s

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Other processes' CPU during a repeat (in cores, of this machine's few) worth flagging on its row.
CONTENTION_NOTE_CORES = 0.25


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def short_commit() -> str:
    # Set when running from an exported tree (`git archive`), which has no history to ask.
    exported = os.environ.get("BURLA_BENCH_COMMIT")
    return exported or _git("rev-parse", "--short", "HEAD") or "nocommit"


def code_state() -> str:
    """HEAD plus a digest of uncommitted changes to burla's code, to notice edits mid-run."""
    changes = _git("status", "--porcelain", "--", "burla", "pyproject.toml")
    changes += _git("diff", "HEAD", "--", "burla", "pyproject.toml")
    digest = hashlib.sha1(changes.encode()).hexdigest()[:8] if changes else ""
    return short_commit() + (f"+uncommitted-{digest}" if digest else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header(
    mode: str, repeats: int, workers: int, outcomes: list[Outcome], load_at_start: float,
    state_at_start: str,
) -> str:
    state = code_state()
    dirty = " (burla's code has uncommitted changes)" if "+" in state else ""
    if state != state_at_start:
        dirty += (f"; burla's code changed during this run ({state_at_start} -> {state}), "
                  "so rows may mix versions")
    versions = sorted({o.versions for o in outcomes if o.versions})
    ram = psutil.virtual_memory().total / 2**30
    return "\n".join([
        f"# burla benchmarks, {dt.date.today().isoformat()}",
        "",
        f"- commit: `{short_commit()}`{dirty}",
        f"- machine: {os.cpu_count()} cores ({cpu_model()}), {ram:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- load average (1 min): {load_at_start:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end (other processes share this machine's cores)",
        f"- mode: {mode}, {repeats} repeat(s) per measurement, medians shown; "
        f"{workers} worker processes for every tool",
        f"- tools: {', '.join(versions) or 'none ran'}",
        "- rows say when other processes used CPU during a repeat (the worst repeat is shown)",
        "- burla/peer: burla's median time divided by the peer's (< 1: burla is faster); "
        "the target column is checked on burla's row only",
    ])


def _cell(outcome: Outcome, primary: str) -> str:
    if outcome.skipped:
        return f"skipped: {outcome.skipped}"
    if outcome.ok:
        return fmt_s(outcome.median()[primary])
    if outcome.killed:
        bound = f", ran > {fmt_s(outcome.lower_bound_s)}" if outcome.lower_bound_s else ""
        return f"killed: {outcome.killed}{bound}"
    return f"failed: {outcome.error}"


def _ratio(burla: Outcome | None, peer: Outcome, primary: str) -> str:
    if peer.tool == "burla" or burla is None or not burla.ok:
        return ""
    mine = burla.median()[primary]
    if peer.ok:
        return f"{mine / peer.median()[primary]:.2f}"
    if peer.killed and peer.lower_bound_s:
        return f"< {mine / peer.lower_bound_s:.2g}"
    return ""


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(outcomes: list[Outcome], names: list[str]) -> str:
    by_workload: dict[str, dict[str, Outcome]] = defaultdict(dict)
    for outcome in outcomes:
        by_workload[outcome.workload][outcome.tool] = outcome
    rows = [
        "| workload | tool | median | detail | burla/peer | target |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        workload = WORKLOADS[name]
        tools = by_workload.get(name, {})
        burla = tools.get("burla")
        for tool, outcome in tools.items():
            detail = workload.detail(outcome.median(), tool) if outcome.ok else ""
            foreign = max((run.get("foreign_cores", 0.0) for run in outcome.runs), default=0.0)
            if foreign >= CONTENTION_NOTE_CORES:
                detail += f"; other processes used up to {foreign:.1f} cores"
            notes = "; ".join(outcome.notes)
            if notes:
                detail = f"{detail}; {notes}" if detail else notes
            target = targets.evaluate(name, tools) if tool == "burla" else ""
            cells = [f"{name} {workload.title}" if tool == next(iter(tools)) else name, tool,
                     _cell(outcome, workload.primary), detail,
                     _ratio(burla, outcome, workload.primary), target]
            rows.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return "\n".join(rows)


def default_results_path() -> Path:
    return RESULTS_DIR / f"{dt.date.today().isoformat()}-{short_commit()}.md"

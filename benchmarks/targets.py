"""The issue's targets for burla, checked against the medians of one suite run."""

from __future__ import annotations

import math
from collections.abc import Callable

from benchmarks.outcome import Outcome
from benchmarks.workloads import fmt_s

Check = tuple[bool | None, str]  # (met, or None when it could not be checked; what was checked)
MB_LIMIT = 300  # W6/W7: coordinator (and W7 client) peak RSS, MB


def peer_value(outcome: Outcome | None, key: str) -> float | None:
    """A peer's median; infinity if it was killed before finishing; None if it never ran."""
    if outcome is None:
        return None
    if outcome.ok:
        return outcome.median().get(key)
    return math.inf if outcome.killed else None


def _at_most(value: float, limit: float, what: str, fmt: Callable[[float], str]) -> Check:
    return value <= limit, f"{what} {fmt(value)} {'≤' if value <= limit else '>'} {fmt(limit)}"


def _beats(burla: float, peers: dict[str, Outcome], names: list[str], key: str) -> list[Check]:
    checks: list[Check] = []
    for name in names:
        value = peer_value(peers.get(name), key)
        if value is None:
            checks.append((None, f"vs {name}: not run"))
        else:
            shown = "killed" if math.isinf(value) else fmt_s(value)
            checks.append((burla < value, f"{'<' if burla < value else '≥'} {name} ({shown})"))
    return checks


def _mb(value: float) -> str:
    return f"{value:.0f} MB"


def _coordinator(m: dict[str, float]) -> Check:
    peak = m.get("cluster_peak_mb", 0.0)
    if not peak:
        return None, "coordinator process not found (cmdline match)"
    return _at_most(peak, MB_LIMIT, "coordinator", _mb)


def _w8(m: dict[str, float]) -> Check:
    """The literal target, and beside it the time read against the floor: 1.5x a small job
    is less than pickling and unpickling a 50 MB closure once takes on a small machine."""
    met, literal = _at_most(m["ratio"], 1.5, "big/small", lambda v: f"{v:.2f}")
    floor_based = m["seconds"] / (m["small"] + m["floor"])
    sign = "≤" if floor_based <= 1.5 else ">"
    return met, (f"{literal}; against the floor: big/(small + dumps+loads "
                 f"{fmt_s(m['floor'])}) {floor_based:.2f} {sign} 1.50")


def checks_for(name: str, m: dict[str, float], peers: dict[str, Outcome]) -> list[Check]:
    others = [p for p in peers if p not in ("burla", "multiprocessing")]
    if name == "W1":
        mp = peer_value(peers.get("multiprocessing"), "seconds")
        first: Check = (None, "vs multiprocessing: not run")
        if mp is not None:
            ratio = mp / m["seconds"]
            first = (ratio >= 0.5, f"{ratio:.2f}× multiprocessing throughput (need ≥ 0.5×)")
        return [first, *_beats(m["seconds"], peers, others, "seconds")]
    if name == "W2":
        return [
            _at_most(m["p50"], 0.005, "p50", fmt_s),
            _at_most(m["p99"], 0.020, "p99", fmt_s),
            *_beats(m["p50"], peers, ["ray", "dask"], "p50"),
        ]
    if name == "W3":
        first = _at_most(m["seconds"], 0.8, "to result", fmt_s)
        return [first, *_beats(m["seconds"], peers, ["dask"], "seconds")]
    if name == "W4":
        return [_at_most(m["ratio"], 1.15, "makespan/bound", lambda v: f"{v:.2f}")]
    if name == "W5":
        arrived, in_order = m.get("lines_arrived", 0.0), m.get("tasks_in_order", 0.0)
        return [
            (arrived == 1.0, f"lines arrived {arrived:.1%}"),
            (in_order == 1.0, f"tasks in order {in_order:.1%}"),
            (m.get("late_lines", 0) == 0, f"{m.get('late_lines', 0):.0f} late lines"),
            _at_most(m["ratio"], 2.0, "print/quiet", lambda v: f"{v:.2f}"),
        ]
    if name == "W6":
        mbps = m["mb_per_s"]
        return [
            (mbps >= 200, f"{mbps:.0f} MB/s {'≥' if mbps >= 200 else '<'} 200 MB/s"),
            _coordinator(m),
        ]
    if name == "W7":
        return [
            _at_most(m["client_maxrss_mb"], MB_LIMIT, "client", _mb),
            _coordinator(m),
        ]
    if name == "W8":
        return [_w8(m)]
    if name == "W9":
        rate = m["inputs_per_second"]
        return [
            (rate >= 200_000, f"{rate:,.0f} inputs/s {'≥' if rate >= 200_000 else '<'} 200,000"),
            _at_most(m["idle_cpu_percent"], 5.0, "idle heartbeats",
                     lambda v: f"{v:.1f}% of a core"),
        ]
    return []


def evaluate(name: str, peers: dict[str, Outcome]) -> str:
    """The target cell of burla's row: met / missed, with what decided it."""
    burla = peers.get("burla")
    if burla is None:
        return ""
    if not burla.ok:
        return "missed (burla did not finish)"
    checks = checks_for(name, burla.median(), peers)
    failed = [text for ok, text in checks if ok is False]
    passed = [text for ok, text in checks if ok]
    unchecked = [text for ok, text in checks if ok is None]
    if failed:
        verdict = "missed: " + "; ".join(failed)
    elif unchecked:  # nothing failed, but a comparison the target names could not be made
        verdict = "incomplete: " + "; ".join(passed) if passed else "incomplete"
    else:
        verdict = "met: " + "; ".join(passed)
    if unchecked:
        verdict += "; unchecked: " + ", ".join(unchecked)
    return verdict

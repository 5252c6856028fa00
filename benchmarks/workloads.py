"""The workloads W1-W8: sizes, budgets, and one timed measurement each (no cluster setup here)."""

from __future__ import annotations

import math
import pickle
import random
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from benchmarks import coldstart, tasks
from benchmarks.peers.base import Peer

MB = 1024 * 1024
# W4: lognormal task durations, median 5 ms, sigma 1.0, a fixed seed; one 1 s straggler last.
W4_SEED = 20240601
W4_MEDIAN_S = 0.005
W4_SIGMA = 1.0
W4_TASKS = 2_000
W4_STRAGGLER_S = 1.0
# W5 inputs encode the repeat, so lines of different repeats can never be confused.
W5_REPEAT_STRIDE = 10_000_000
W5_END_MARKER = "w5-end"
W8_BIG = 50 * MB
W8_SMALL = 100
# W2: untimed calls before timing, so one-off costs (function export, imports) are excluded.
W2_WARM_CALLS = 5

Metrics = dict[str, float]


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    size: int
    quick_size: int
    # Seconds of timed work a tool gets for all its repeats; past it the runner kills the run.
    budget_s: float
    quick_budget_s: float
    measure: Callable[[Peer, Any, int, int], Metrics]  # (peer, prepared, n, repeat) -> metrics
    primary: str  # the metric (seconds) shown as the median and used for burla/peer ratios
    detail: Callable[[Metrics, str], str]  # (median metrics, tool) -> the table's detail cell
    prepare: Callable[[Peer, int], Any] = lambda peer, n: None  # untimed, once per run
    tools: tuple[str, ...] | None = None  # None: every tool
    sampled: bool = False  # sample client and cluster RSS around each measurement
    own_cluster: bool = False  # the measurement starts its cluster itself (cold start)
    note: Callable[[Peer], str] = lambda peer: ""  # a caveat about this tool, for the table


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"wrong results: {what}")


def measure_w1(peer: Peer, inputs: list[int], n: int, repeat: int) -> Metrics:
    seconds, results = _timed(lambda: peer.map(tasks.noop, inputs))
    _check(results == inputs, "W1 results differ from inputs")
    return {"seconds": seconds, "per_s": n / seconds}


def prepare_w2(peer: Peer, n: int) -> None:
    for _ in range(W2_WARM_CALLS):
        peer.map(tasks.noop, [1, 2, 3])


def measure_w2(peer: Peer, prepared: None, n: int, repeat: int) -> Metrics:
    latencies = []
    for _ in range(n):
        seconds, results = _timed(lambda: peer.map(tasks.noop, [1, 2, 3]))
        _check(results == [1, 2, 3], f"W2 got {results!r}")
        latencies.append(seconds)
    centiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50": statistics.median(latencies), "p99": centiles[98], "max": max(latencies)}


def measure_w3(peer: Peer, prepared: None, n: int, repeat: int) -> Metrics:
    return coldstart.measure(peer)


def w4_durations() -> list[float]:
    rng = random.Random(W4_SEED)
    durations = [rng.lognormvariate(math.log(W4_MEDIAN_S), W4_SIGMA) for _ in range(W4_TASKS)]
    return durations + [W4_STRAGGLER_S]


def measure_w4(peer: Peer, durations: list[float], n: int, repeat: int) -> Metrics:
    seconds, results = _timed(lambda: peer.map(tasks.spin, durations))
    _check(results == durations, "W4 results differ from inputs")
    bound = max(sum(durations) / peer.n_workers, max(durations))
    return {"seconds": seconds, "bound": bound, "ratio": seconds / bound}


def measure_w5(peer: Peer, prepared: None, n: int, repeat: int) -> Metrics:
    inputs = [repeat * W5_REPEAT_STRIDE + i for i in range(n)]
    quiet, results = _timed(lambda: peer.map(tasks.silent, inputs))
    _check(results == inputs, "W5 quiet results differ from inputs")
    seconds, results = _timed(lambda: peer.map(tasks.chatty, inputs))
    _check(results == inputs, "W5 printing results differ from inputs")
    # Lines printed after this marker arrived after the call returned: counted late.
    print(f"{W5_END_MARKER} {repeat}", flush=True)
    return {"seconds": seconds, "quiet": quiet, "ratio": seconds / quiet}


def prepare_w6(peer: Peer, n: int) -> list[bytes]:
    return [tasks.make_blob(i, MB) for i in range(n)]


def measure_w6(peer: Peer, blobs: list[bytes], n: int, repeat: int) -> Metrics:
    seconds, results = _timed(lambda: peer.map(tasks.echo_blob, blobs))
    _check(len(results) == n, f"W6 got {len(results)} results for {n} inputs")
    for blob, result in zip(blobs, results, strict=True):
        _check(result[: tasks.BLOB_HEAD] == blob[: tasks.BLOB_HEAD] and len(result) == MB, "W6")
    del results
    return {"seconds": seconds, "mb_per_s": n / seconds}


def measure_w7(peer: Peer, prepared: None, n: int, repeat: int) -> Metrics:
    seconds, results = _timed(lambda: peer.map(tasks.nothing, (i for i in range(n))))
    _check(len(results) == n, f"W7 got {len(results)} results for {n} inputs")
    del results
    # ru_maxrss is in KiB on Linux: the client process's peak over its whole life.
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "client_maxrss_mb": maxrss}


def measure_w8(peer: Peer, prepared: None, n: int, repeat: int) -> Metrics:
    inputs = list(range(n))

    def closure(size: int) -> Callable[[int], int]:
        # A fresh payload each repeat: a cluster that caches functions must ship it again.
        payload = random.randbytes(16) + bytes(size - 16)
        return tasks.make_closure(payload) if peer.ships_closures else tasks.PayloadHolder(payload)

    small, results = _timed(lambda: peer.map(closure(W8_SMALL), inputs))
    _check(results == [x + W8_SMALL for x in inputs], "W8 small-closure results")
    big_f = closure(W8_BIG)
    seconds, results = _timed(lambda: peer.map(big_f, inputs))
    _check(results == [x + W8_BIG for x in inputs], "W8 big-closure results")
    # A tiny call right after: shows a cost the big job leaves behind, and keeps it out of the
    # next repeat's small-closure baseline.
    after, _ = _timed(lambda: peer.map(tasks.noop, [1, 2, 3]))
    floor = _serialization_floor(big_f)
    return {"seconds": seconds, "small": small, "ratio": seconds / small, "next_call": after,
            "floor": floor, "floor_ratio": seconds / floor}


def _serialization_floor(function: Callable[[int], int]) -> float:
    """Seconds to pickle `function` once and unpickle it once, here, outside any job: what
    shipping it costs at the least, before a byte crosses a wire."""
    start = time.perf_counter()
    pickle.loads(cloudpickle.dumps(function, protocol=pickle.HIGHEST_PROTOCOL))
    return time.perf_counter() - start


def measure_w9(peer: Peer, prepared: None, n: int, repeat: int) -> Metrics:
    from benchmarks import w9_coordinator  # noqa: PLC0415 - only this workload needs it

    result = w9_coordinator.run(agents=1000, slots=32, inputs=n, idle_seconds=5.0)
    return {"seconds": result["seconds"], "inputs_per_second": result["inputs_per_second"],
            "chunks": result["chunks"], "chunks_per_second": result["chunks_per_second"],
            "job_cpu_percent": result["coordinator_cpu_percent_of_core_during_job"],
            "idle_cpu_percent": result["idle_cpu_percent_of_core"]}


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _rss(m: Metrics, tool: str) -> str:
    if "cluster_peak_mb" not in m:
        return ""
    # A tree's RSS sum counts shared memory (Ray's object store) once per process mapping it.
    label = "coordinator RSS" if tool == "burla" else "cluster RSS sum"
    return f", {label} peak {m['cluster_peak_mb']:.0f} MB"


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            "W1", "no-op inputs end to end", 1_000_000, 100_000, 60, 60,
            measure_w1, "seconds", lambda m, t: f"{m['per_s']:,.0f} inputs/s" + _rss(m, t),
            prepare=lambda peer, n: list(range(n)), sampled=True,
        ),
        Workload(
            "W2", "warm map(f, [1,2,3]) latency", 200, 30, 120, 60,
            measure_w2, "p50", lambda m, t: f"p99 {fmt_s(m['p99'])}, max {fmt_s(m['max'])}",
            prepare=prepare_w2,
        ),
        Workload(
            "W3", "cold start to first result, fresh interpreter", 1, 1, 120, 60,
            measure_w3, "seconds", lambda m, t: f"spawn to result {fmt_s(m['spawn_to_result'])}",
            tools=("burla", "multiprocessing", "ray", "dask", "ipp"), own_cluster=True,
        ),
        Workload(
            "W4", "2,000 lognormal tasks + one 1 s task", W4_TASKS + 1, W4_TASKS + 1, 120, 60,
            measure_w4, "seconds",
            lambda m, t: f"makespan/bound {m['ratio']:.2f} (bound {fmt_s(m['bound'])})",
            prepare=lambda peer, n: w4_durations(),
        ),
        Workload(
            "W5", "tasks printing 10 lines each", 10_000, 1_000, 180, 60,
            measure_w5, "seconds",
            lambda m, t: f"quiet {fmt_s(m['quiet'])}, print/quiet {m['ratio']:.2f}",
            note=lambda peer: peer.output_note,
        ),
        Workload(
            "W6", "1 MB in, 1 MB out per task", 2_000, 200, 180, 60,
            measure_w6, "seconds", lambda m, t: f"{m['mb_per_s']:.0f} MB/s each way" + _rss(m, t),
            prepare=prepare_w6, sampled=True,
        ),
        Workload(
            "W7", "inputs from a generator (memory)", 5_000_000, 200_000, 300, 90,
            measure_w7, "seconds",
            lambda m, t: f"client maxrss {m['client_maxrss_mb']:.0f} MB" + _rss(m, t),
            tools=("burla",), sampled=True,
        ),
        Workload(
            "W8", "function closing over 50 MB, tiny inputs", 10_000, 1_000, 180, 60,
            measure_w8, "seconds",
            lambda m, t: f"small closure {fmt_s(m['small'])}, big/small {m['ratio']:.2f}, "
            f"floor (dumps+loads) {fmt_s(m['floor'])}, big/floor {m['floor_ratio']:.2f}, "
            f"next tiny call {fmt_s(m['next_call'])}",
            note=lambda peer: "" if peer.ships_closures else "a callable object holding the "
            "payload (the standard pickle cannot ship closures)",
        ),
    ]
}
WORKLOADS["W9"] = Workload(
    "W9", "coordinator alone, 1,000 simulated agents × 32 slots", 2_000_000, 200_000, 300, 120,
    measure_w9, "seconds",
    lambda m, t: f"{m['inputs_per_second']:,.0f} inputs/s in {m['chunks']:,.0f} chunks "
    f"({m['chunks_per_second']:,.0f}/s, coordinator {m['job_cpu_percent']:.0f}% of a core); "
    f"1,000 idle agents cost {m['idle_cpu_percent']:.1f}% of a core",
    tools=("burla",), own_cluster=True,
)

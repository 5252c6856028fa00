"""What every chaos test checks after its job: each index exactly once, slots and credits back,
and no process or cgroup left behind. Checks poll a condition within a bound; none sleeps blind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
from daemons import Cluster

T = TypeVar("T")

# How long a cluster may take to give back slots and respawn executors after a job.
SETTLE_SECONDS = 20.0
_POLL_SECONDS = 0.1
_CGROUP_MOUNT = Path("/sys/fs/cgroup")


def expected(n: int) -> list[int]:
    """What every chaos job returns: f(x) = x * 3 + 1, unique per index so a duplicate shows."""
    return [x * 3 + 1 for x in range(n)]


def assert_exactly_once(values: Iterable[int], n: int) -> None:
    """`values` (in any order) hold f(i) exactly once for every i < n, and nothing else."""
    counts = Counter(values)
    wanted = Counter(expected(n))
    missing = sorted((wanted - counts).elements())
    extra = sorted((counts - wanted).elements())
    assert not missing and not extra, (
        f"{len(missing)} results missing (first: {missing[:10]}), "
        f"{len(extra)} duplicate or unexpected (first: {extra[:10]}); "
        f"got {sum(counts.values())} results for {n} inputs"
    )


def wait_for(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(_POLL_SECONDS)


def job_progress(cluster: Cluster, endpoint: str | None = None) -> int:
    """Results delivered so far by the one running job (0 when none is listed yet)."""
    jobs = cluster.status(endpoint)["jobs"]
    return int(jobs[0]["done"]) if jobs else 0


def sigkill(process: subprocess.Popen[bytes] | psutil.Process | int) -> None:
    pid = process if isinstance(process, int) else process.pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def exited(process: psutil.Process) -> bool:
    """The process is gone (or a zombie waiting for its parent to reap it)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def log_events(cluster: Cluster, name: str, event: str) -> list[dict[str, Any]]:
    """The JSON log records of daemon `name` (agent0, coordinator, ...) with this event."""
    records = []
    for line in (cluster.root / f"{name}.log").read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                records.append(record)
    return records


# --- processes ----------------------------------------------------------------------------------


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _kind(process: psutil.Process) -> str:
    cmdline = _cmdline(process)
    if "burla.exec" in cmdline:
        return "burla.exec"
    with contextlib.suppress(psutil.Error):
        return process.name()
    return "?"


def tree_shape(agent_pid: int) -> Counter[tuple[int, str]]:
    """What runs under an agent, as (depth, kind) counts: executors are replaced after a crash
    (new pids), but the shape at rest is the same, and anything left over changes it."""
    shape: Counter[tuple[int, str]] = Counter()

    def walk(process: psutil.Process, depth: int) -> None:
        with contextlib.suppress(psutil.Error):
            for child in process.children():
                shape[(depth, _kind(child))] += 1
                walk(child, depth + 1)

    with contextlib.suppress(psutil.NoSuchProcess):
        walk(psutil.Process(agent_pid), 1)
    return shape


class Tracker:
    """Every process seen under a cluster's agents, to find those left behind later."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}  # pid -> create time (a reused pid is someone else)

    def sample(self, cluster: Cluster) -> None:
        for agent in cluster.agents:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(agent.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        self.seen[child.pid] = child.create_time()

    def strays(self, cluster: Cluster) -> list[psutil.Process]:
        """Seen processes still alive but no longer under a live agent of the cluster."""
        under = set()
        for agent in cluster.agents:
            with contextlib.suppress(psutil.Error):
                under |= {c.pid for c in psutil.Process(agent.pid).children(recursive=True)}
        left = []
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if process.create_time() == created and pid not in under \
                        and process.status() != psutil.STATUS_ZOMBIE:
                    left.append(process)
        return left

    def kill_strays(self, cluster: Cluster) -> None:
        for process in self.strays(cluster):
            with contextlib.suppress(psutil.Error):
                process.kill()


# --- cgroups ------------------------------------------------------------------------------------


def _root_names(cluster: Cluster) -> dict[str, str]:
    """Cgroup root name -> agent name, for the cluster's agents (none without cgroups)."""
    try:
        from burla.agent.limits import cgroup_root_name
    except ImportError:
        return {}
    return {cgroup_root_name(cluster.root / f"agent{i}"): f"agent{i}"
            for i in range(len(cluster.agents))}


def cgroup_roots(cluster: Cluster) -> list[Path]:
    """The cgroup directories the cluster's agents may use (none if the agent has no cgroups)."""
    names = _root_names(cluster)
    if not names or not _CGROUP_MOUNT.is_dir():
        return []
    return [_CGROUP_MOUNT / hierarchy.name / name
            for hierarchy in _CGROUP_MOUNT.iterdir() for name in names]


def cgroup_owner(cluster: Cluster, root: Path) -> str:
    return _root_names(cluster).get(root.name, "")


def cgroup_tasks(root: Path) -> list[int]:
    """Processes in `root` or any cgroup below it."""
    pids = []
    for procs in root.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def remove_cgroup(root: Path) -> None:
    """Remove an emptied cgroup tree, deepest first (cgroupfs allows only rmdir)."""
    if not root.is_dir():
        return
    for path in sorted((p for p in root.rglob("*") if p.is_dir()),
                       key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def cgroup_dirs(cluster: Cluster) -> Counter[Path]:
    """How many cgroup directories each agent root holds now, below itself."""
    counts: Counter[Path] = Counter()
    for root in cgroup_roots(cluster):
        if root.is_dir():
            counts[root] = sum(1 for path in root.rglob("*") if path.is_dir())
    return counts


# --- the whole check ----------------------------------------------------------------------------


@dataclass
class Baseline:
    """The cluster at rest before the chaos: processes under each agent, cgroup dirs."""

    shapes: dict[int, Counter[tuple[int, str]]]
    cgroups: Counter[Path]
    tracker: Tracker = field(default_factory=Tracker)

    @classmethod
    def take(cls, cluster: Cluster, tracker: Tracker) -> Baseline:
        """Once every agent runs its warm executors (one per CPU) and nothing changes."""
        def resting() -> dict[int, Counter[tuple[int, str]]] | None:
            if any(len(cluster.executors(a)) < agent_cpus(a) for a in cluster.agents):
                return None
            shapes = {a.pid: tree_shape(a.pid) for a in cluster.agents}
            again = {a.pid: tree_shape(a.pid) for a in cluster.agents}
            return shapes if shapes == again else None

        shapes = wait_for(resting, 15, "every agent's warm executors to be up")
        tracker.sample(cluster)
        return cls(shapes, cgroup_dirs(cluster), tracker)


def agent_cpus(agent: subprocess.Popen[bytes]) -> int:
    """The CPUs an agent was started to offer (its --cpus flag)."""
    args = [str(a) for a in agent.args]
    return int(args[args.index("--cpus") + 1])


def assert_settled(cluster: Cluster, baseline: Baseline, *, nodes: int | None = None,
                   endpoint: str | None = None) -> dict[str, Any]:
    """Slots back, no job listed, every agent's processes and cgroups as before, no strays."""
    baseline.tracker.sample(cluster)

    def idle() -> dict[str, Any] | None:
        status = cluster.status(endpoint)
        busy = [n for n in status["nodes"] if n["used_cpus"] != 0]
        if busy or status["jobs"] or (nodes is not None and len(status["nodes"]) != nodes):
            return None
        return status

    try:
        status = wait_for(idle, SETTLE_SECONDS, "every node idle and no job listed")
    except AssertionError:
        raise AssertionError(
            f"the cluster did not give its slots back: {cluster.status(endpoint)}") from None
    alive = [a.pid for a in cluster.agents if a.poll() is None]

    def same_trees() -> bool:
        return all(tree_shape(pid) == baseline.shapes.get(pid) for pid in alive)

    try:
        wait_for(same_trees, SETTLE_SECONDS, "the agents' process trees as at the start")
    except AssertionError:
        now = {pid: tree_shape(pid) for pid in alive}
        raise AssertionError(f"process trees differ: before {baseline.shapes}, now {now}") \
            from None
    try:
        wait_for(lambda: not baseline.tracker.strays(cluster), 5, "orphaned processes to go")
    except AssertionError:
        raise AssertionError(f"left behind: {baseline.tracker.strays(cluster)}") from None
    live = {f"agent{i}" for i, a in enumerate(cluster.agents) if a.poll() is None}
    roots = cgroup_roots(cluster)
    alive_roots = {r for r in roots if cgroup_owner(cluster, r) in live}

    def cgroups_back() -> bool:
        now = cgroup_dirs(cluster)
        return all(now.get(r) == baseline.cgroups.get(r) for r in alive_roots) and \
            not any(cgroup_tasks(r) for r in roots if r not in alive_roots)

    try:
        wait_for(cgroups_back, 5, "executor cgroups back to their count at the start")
    except AssertionError:
        raise AssertionError(f"cgroups differ: before {dict(baseline.cgroups)}, "
                             f"now {dict(cgroup_dirs(cluster))}") from None
    return status


def assert_rejoins_and_serves(cluster: Cluster, index: int, within: float) -> None:
    """Agent `index`, cut off from its coordinator and given up on, registers again (its new
    Hello is welcomed), stays up, and takes a share of the next job."""
    name = f"agent{index}"
    agent = cluster.agents[index]

    def welcomed_again() -> bool:
        return agent.poll() is not None or len(log_events(cluster, name, "registered")) >= 2

    wait_for(welcomed_again, within, f"{name} to be welcomed back by the coordinator")
    stopping = log_events(cluster, name, "agent_stopping")
    assert agent.poll() is None and not stopping, (
        f"{name} stopped ({stopping[:1]}, exit code {agent.poll()}) instead of registering "
        f"again; its last log lines: "
        f"{(cluster.root / f'{name}.log').read_text().splitlines()[-6:]}")
    assigned = len(log_events(cluster, name, "job_assigned"))
    from burla import remote_parallel_map

    wide = remote_parallel_map(_slow_identity, range(2 * len(cluster.agents)), spinner=False)
    assert wide == list(range(2 * len(cluster.agents)))
    assert agent.poll() is None, f"{name} exited with {agent.returncode} during the next job"
    assert len(log_events(cluster, name, "job_assigned")) > assigned, \
        f"{name} took no share of the next job"


def _slow_identity(x: int) -> int:
    import time

    time.sleep(0.2)
    return x

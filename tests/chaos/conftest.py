"""Fixtures for chaos tests: private clusters whose every process and cgroup is gone after the
test, whatever the test did to them (stopped, killed, partitioned)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from daemons import Cluster, running_cluster

from .invariants import Tracker, cgroup_owner, cgroup_roots, cgroup_tasks, remove_cgroup


def resume_and_reap(cluster: Cluster, tracker: Tracker) -> None:
    """Resume stopped agents and kill what escaped them, so stop() can finish cleanly."""
    tracker.sample(cluster)
    for agent in cluster.agents:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent.pid, signal.SIGCONT)
    tracker.kill_strays(cluster)


def assert_nothing_left(cluster: Cluster, tracker: Tracker) -> None:
    """After stop: no process escaped, and no cgroup is left but those of agents the test
    SIGKILLed (they cannot clean up; their next start would): those must hold no process,
    and are removed here."""
    left = tracker.strays(cluster)
    tracker.kill_strays(cluster)
    killed = {f"agent{i}" for i, a in enumerate(cluster.agents) if a.returncode == -9}
    roots = [r for r in cgroup_roots(cluster) if r.exists()]
    kept = [r for r in roots if cgroup_owner(cluster, r) not in killed]
    busy = [r for r in roots if cgroup_tasks(r)]
    for root in roots:
        remove_cgroup(root)
    assert not left and not kept and not busy, \
        f"left behind after stop: processes {left}, cgroups {kept}, cgroups with tasks {busy}"


@pytest.fixture
def tracker() -> Tracker:
    return Tracker()


@pytest.fixture
def chaos_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracker: Tracker
) -> Iterator[Callable[..., Cluster]]:
    """Factory for a private cluster selected through the environment for this test's calls."""
    made: list[Cluster] = []
    with ExitStack() as stack:

        def make(agents: int = 1, cpus: int = 2, agent_args: tuple[str, ...] = ()) -> Cluster:
            root = tmp_path / f"cluster{len(made)}"
            root.mkdir()
            cluster = stack.enter_context(running_cluster(root, agents, cpus, agent_args))
            stack.callback(resume_and_reap, cluster, tracker)
            made.append(cluster)
            for key, value in cluster.env().items():
                monkeypatch.setenv(key, value)
            tracker.sample(cluster)
            return cluster

        yield make
    for cluster in made:
        assert_nothing_left(cluster, tracker)

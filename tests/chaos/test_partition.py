"""A real partition: agents in their own network namespaces, one link down for 10 s. The job
loses and duplicates nothing, and the cut-off agent comes back under a new registration."""

from __future__ import annotations

import time

import pytest
from daemons import Cluster, PathNotifier
from netns import leftovers, namespaces, unavailable

from burla import remote_parallel_map

from .conftest import assert_nothing_left, resume_and_reap
from .invariants import (
    Baseline,
    assert_exactly_once,
    assert_rejoins_and_serves,
    assert_settled,
    log_events,
    wait_for,
)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(unavailable() is not None, reason=unavailable() or ""),
]

N_INPUTS = 3_000
CUT_SECONDS = 10.0
# TCP retransmits back off during the cut; then the agent re-registers after its 5 s of silence.
REJOIN_WITHIN_SECONDS = 25.0


def slowish(x):
    import time

    time.sleep(0.004)  # ~6 s of work on two slots: the job outlives the 10 s cut
    return x * 3 + 1


@pytest.fixture
def partitioned_cluster(tmp_path, monkeypatch, tracker):
    """A coordinator on the host (all interfaces) and one 1-CPU agent per namespace."""
    with namespaces(2) as made:
        cluster = Cluster(tmp_path, notifier=PathNotifier(tmp_path))
        try:
            cluster.start_coordinator_at("tcp://0.0.0.0:0")
            for ns in made:
                cluster.start_agent_via(ns.exec_prefix, f"tcp://{ns.host_address}:{cluster.port}",
                                        cpus=1)
            for key, value in cluster.env().items():
                monkeypatch.setenv(key, value)
            tracker.sample(cluster)
            yield cluster, made
        finally:
            for ns in made:
                ns.restore()
            resume_and_reap(cluster, tracker)
            cluster.stop()
        assert_nothing_left(cluster, tracker)
    assert not leftovers(made), f"namespaces or links left behind: {leftovers(made)}"


def test_partitioned_agent_rejoins_without_duplicates(partitioned_cluster, tracker):
    cluster, (cut_ns, _) = partitioned_cluster
    baseline = Baseline.take(cluster, tracker)
    values = []
    cut_at = restored_at = None
    for value in remote_parallel_map(slowish, range(N_INPUTS), generator=True, spinner=False):
        values.append(value)
        now = time.monotonic()
        if cut_at is None and len(values) >= N_INPUTS // 10:
            cut_ns.cut()
            cut_at = now
        elif restored_at is None and cut_at and now - cut_at >= CUT_SECONDS:
            cut_ns.restore()
            restored_at = now
    if restored_at is None:  # the job ended during the cut: restore it now, as planned
        wait_for(lambda: time.monotonic() - cut_at >= CUT_SECONDS, 15, "the cut to last")
        cut_ns.restore()

    assert_exactly_once(values, N_INPUTS)
    assert [r for r in log_events(cluster, "coordinator", "node_lost")
            if r.get("agent") == "agent0"], "the coordinator never gave up on the cut-off agent"
    assert_rejoins_and_serves(cluster, 0, REJOIN_WITHIN_SECONDS)
    assert_settled(cluster, baseline, nodes=2)

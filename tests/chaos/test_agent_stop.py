"""An agent SIGSTOPped for 10 s, then SIGCONTed: its work is redone elsewhere, nothing is
delivered twice, and the agent comes back into the cluster under a new registration."""

from __future__ import annotations

import os
import signal
import time

import pytest

from burla import remote_parallel_map

from .invariants import (
    Baseline,
    assert_exactly_once,
    assert_rejoins_and_serves,
    assert_settled,
    log_events,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

N_INPUTS = 3_000
STOPPED_SECONDS = 10.0
# After SIGCONT the agent notices its coordinator went quiet (5 s) and registers again.
REREGISTER_WITHIN_SECONDS = 15.0


def slowish(x):
    import time

    time.sleep(0.004)  # ~6 s of work on two slots: the job outlives the 10 s stop
    return x * 3 + 1


def test_stopped_agent_returns_without_duplicates(chaos_cluster, tracker):
    cluster = chaos_cluster(agents=2, cpus=1)
    baseline = Baseline.take(cluster, tracker)
    frozen = cluster.agents[0]
    values = []
    stopped_at = resumed_at = None
    try:
        for value in remote_parallel_map(slowish, range(N_INPUTS), generator=True,
                                          spinner=False):
            values.append(value)
            now = time.monotonic()
            if stopped_at is None and len(values) >= N_INPUTS // 10:
                os.kill(frozen.pid, signal.SIGSTOP)
                stopped_at = now
            elif resumed_at is None and stopped_at and now - stopped_at >= STOPPED_SECONDS:
                os.kill(frozen.pid, signal.SIGCONT)
                resumed_at = now
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    if resumed_at is None:  # the job ended during the stop: resume it now, as planned
        wait_for(lambda: time.monotonic() - stopped_at >= STOPPED_SECONDS, 15, "the stop")
        os.kill(frozen.pid, signal.SIGCONT)

    assert_exactly_once(values, N_INPUTS)
    assert [r for r in log_events(cluster, "coordinator", "node_lost")
            if r.get("agent") == "agent0"], "the coordinator never gave up on the stopped agent"
    assert_rejoins_and_serves(cluster, 0, REREGISTER_WITHIN_SECONDS)
    assert_settled(cluster, baseline, nodes=2)

"""Executors SIGKILLed at random during a 20,000-input job: every result arrives exactly once."""

from __future__ import annotations

import random
import time

import pytest

from burla import remote_parallel_map

from .invariants import Baseline, assert_exactly_once, assert_settled, log_events, sigkill, wait_for

pytestmark = pytest.mark.timeout(90)

N_INPUTS = 20_000
# Kill one executor each time the results received pass one of these fractions of the job.
KILL_AT = (0.10, 0.25, 0.40, 0.55, 0.70)
# An executor this old has loaded the job and is running a chunk (all slots stay busy mid-job).
BUSY_AGE_SECONDS = 1.0


def tiny(x):
    import time

    time.sleep(0.0003)  # long enough for the job to outlive five kills on two CPUs
    return x * 3 + 1


def test_random_executor_kills_lose_and_duplicate_nothing(chaos_cluster, tracker):
    cluster = chaos_cluster(agents=1, cpus=2)
    agent = cluster.agents[0]
    baseline = Baseline.take(cluster, tracker)
    rng = random.Random(1234)
    kills = []
    values = []
    thresholds = [int(N_INPUTS * fraction) for fraction in KILL_AT]

    def busy_executor():
        now = time.time()
        grown = [e for e in cluster.executors(agent) if now - e.create_time() > BUSY_AGE_SECONDS]
        return sorted(grown, key=lambda e: e.pid)

    for value in remote_parallel_map(tiny, range(N_INPUTS), generator=True, spinner=False):
        values.append(value)
        if thresholds and len(values) >= thresholds[0]:
            thresholds.pop(0)
            victims = wait_for(busy_executor, 10, "an executor running the job")
            victim = rng.choice(victims)
            kills.append(victim.pid)
            sigkill(victim.pid)

    assert len(kills) == len(KILL_AT), f"the job ended before all kills: {len(kills)} done"
    assert_exactly_once(values, N_INPUTS)
    killed_busy = [r for r in log_events(cluster, "agent0", "executor_exited")
                   if r.get("busy") and "SIGKILL" in r.get("cause", "")]
    assert len(killed_busy) >= len(KILL_AT) - 1, (
        f"only {len(killed_busy)} of {len(kills)} kills hit an executor running a chunk; "
        f"the test did not exercise the retry path")
    assert_settled(cluster, baseline)

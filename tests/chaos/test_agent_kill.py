"""One of three agents SIGKILLed mid-job: its chunks are requeued on the others, nothing lost."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from burla import remote_parallel_map

from .invariants import (
    Baseline,
    assert_exactly_once,
    assert_settled,
    exited,
    job_progress,
    log_events,
    sigkill,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

N_INPUTS = 3_000


def slowish(x):
    import time

    time.sleep(0.002)  # ~2 s of work on three slots, so the kill lands mid-job
    return x * 3 + 1


def test_agent_killed_mid_job_loses_and_duplicates_nothing(chaos_cluster, tracker):
    cluster = chaos_cluster(agents=3, cpus=1)
    baseline = Baseline.take(cluster, tracker)
    victim = random.Random(7).choice(cluster.agents)
    victim_name = f"agent{cluster.agents.index(victim)}"
    tracker.sample(cluster)

    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(remote_parallel_map, slowish, range(N_INPUTS), spinner=False)
        wait_for(lambda: job_progress(cluster) >= N_INPUTS // 5 or job.done(), 30,
                 "a fifth of the job done")
        assert not job.done(), "the job ended before the agent could be killed"
        victim_executors = cluster.executors(victim)
        assert victim_executors, "the agent to kill runs no executor"
        tracker.sample(cluster)
        sigkill(victim)
        victim.wait()
        results = job.result(timeout=60)

    assert results == [x * 3 + 1 for x in range(N_INPUTS)], "results wrong or out of order"
    assert_exactly_once(results, N_INPUTS)
    lost = [r for r in log_events(cluster, "coordinator", "node_lost")
            if r.get("agent") == victim_name]
    assert lost, "the coordinator never declared the killed agent lost"
    # The dead agent's executors die with it (parent-death signal), and nothing else is left.
    wait_for(lambda: all(exited(e) for e in victim_executors), 5,
             "the killed agent's executors to exit")
    status = assert_settled(cluster, baseline, nodes=2)
    assert victim_name not in {n["agent_id"] for n in status["nodes"]}

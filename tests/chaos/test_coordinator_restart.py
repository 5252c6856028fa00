"""The coordinator SIGKILLed mid-job and restarted on the same endpoint and state dir: an
attached job (through its reconnecting client) and a detached job (from the store, its client
gone) both complete with every result exactly once."""

from __future__ import annotations

import os
import signal
import time

import pytest

from .clients import STORED, ClientProcess, attach_in_process
from .invariants import Baseline, assert_settled, sigkill, wait_for

pytestmark = pytest.mark.timeout(150)

N_INPUTS = 1_500
DELAY = 0.004  # one slot per job: ~6 s each, so the kill lands mid-job
# The agent registers again once it hears from the new coordinator (at worst after 5 s of
# silence), the client reconnects with backoff.
BACK_WITHIN_SECONDS = 15.0
WHOLE = {"count": N_INPUTS, "exact": True, "distinct": N_INPUTS}
# How long the agent stays unreachable after the restart: longer than the client takes to
# reconnect, so the new coordinator hears from the job's client before any agent.
AGENT_AWAY_SECONDS = 8.0


def test_coordinator_restart_loses_no_job(chaos_cluster, tracker):
    cluster = chaos_cluster(agents=1, cpus=2)
    baseline = Baseline.take(cluster, tracker)
    agent = cluster.agents[0]
    attached = ClientProcess(cluster, N_INPUTS, DELAY, detach=False)
    detached = ClientProcess(cluster, N_INPUTS, DELAY, detach=True)
    failures = []
    try:
        job_id = detached.wait_line(STORED, 30).group(1)
        detached.kill()

        def both_running() -> bool:
            jobs = cluster.status()["jobs"]
            return len(jobs) == 2 and all(j["done"] >= N_INPUTS // 10 for j in jobs)

        wait_for(both_running, 30, "both jobs a tenth done")
        sigkill(cluster.coordinator)
        cluster.coordinator.wait()
        cluster.restart_coordinator()

        try:
            summary = attached.summary(60)
            if summary != WHOLE:
                failures.append(f"the attached job's results are wrong: {summary}")
        except AssertionError as e:
            failures.append(f"the attached job failed: {e}")
        try:
            wait_for(lambda: agent.poll() is not None or cluster.status()["nodes"],
                     BACK_WITHIN_SECONDS, "the agent to register with the new coordinator")
            if agent.poll() is not None:
                failures.append(f"the agent exited ({agent.returncode}) instead of registering "
                                f"with the new coordinator")
            else:
                summary = attach_in_process(cluster, job_id, N_INPUTS, 40)
                if summary != WHOLE:
                    failures.append(f"the detached job's results are wrong: {summary}")
        except AssertionError as e:
            failures.append(f"the detached job could not be collected: {e}")
    finally:
        attached.kill()
        detached.kill()
    assert not failures, "\n".join(failures)
    assert_settled(cluster, baseline, nodes=1)


def test_coordinator_restart_before_agents_return_loses_no_job(chaos_cluster, tracker):
    """The restarted coordinator hears from the client before any agent has come back: the
    job waits for nodes instead of being refused (it was accepted before the restart)."""
    cluster = chaos_cluster(agents=1, cpus=2)
    baseline = Baseline.take(cluster, tracker)
    agent = cluster.agents[0]
    attached = ClientProcess(cluster, N_INPUTS, DELAY, detach=False)
    try:
        wait_for(lambda: any(j["done"] >= N_INPUTS // 10 for j in cluster.status()["jobs"]), 30,
                 "the job a tenth done")
        os.kill(agent.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        sigkill(cluster.coordinator)
        cluster.coordinator.wait()
        cluster.restart_coordinator()
        wait_for(lambda: time.monotonic() - stopped_at >= AGENT_AWAY_SECONDS,
                 AGENT_AWAY_SECONDS + 1, "the agent's time away")
        os.kill(agent.pid, signal.SIGCONT)
        summary = attached.summary(60)
    finally:
        os.kill(agent.pid, signal.SIGCONT)
        attached.kill()
    assert summary == WHOLE, summary
    assert_settled(cluster, baseline, nodes=1)

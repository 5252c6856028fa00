"""A detached job whose client is SIGKILLed once its inputs are stored: `burla.attach`
collects every result, exactly once, in input order."""

from __future__ import annotations

import pytest

import burla

from .clients import STORED, ClientProcess
from .invariants import Baseline, assert_settled, expected, wait_for

pytestmark = pytest.mark.timeout(90)

N_INPUTS = 2_000


def test_detached_job_outlives_its_killed_client(chaos_cluster, tracker):
    cluster = chaos_cluster(agents=1, cpus=2)
    baseline = Baseline.take(cluster, tracker)
    client = ClientProcess(cluster, N_INPUTS, 0.002, detach=True)
    try:
        job_id = client.wait_line(STORED, 30).group(1)
        client.kill()
    finally:
        client.kill()
    # Nobody is attached now: the job runs on, its results kept on the cluster.
    wait_for(lambda: any(j["job_id"] == job_id for j in cluster.status()["jobs"]), 10,
             "the detached job listed after its client died")
    results = burla.attach(job_id, generator=False, spinner=False)
    assert results == expected(N_INPUTS)
    assert_settled(cluster, baseline)

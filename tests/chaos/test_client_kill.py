"""A client SIGKILLed mid-job: its job is cancelled and the next job gets every slot in 10 s."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from burla import remote_parallel_map

from .invariants import Baseline, assert_settled, sigkill, wait_for

pytestmark = pytest.mark.timeout(90)

# The coordinator cancels a silent client's job after 5 s (DESIGN §6); this leaves room.
SLOTS_BACK_WITHIN_SECONDS = 10.0

CLIENT = """
import time
from burla import remote_parallel_map
def stuck(x):
    time.sleep(600)
remote_parallel_map(stuck, range(10), spinner=False)
"""


def interval(x):
    import time

    start = time.time()
    time.sleep(0.5)
    return (start, time.time())


def test_killed_client_frees_its_slots_for_the_next_job(chaos_cluster, tracker):
    cluster = chaos_cluster(agents=1, cpus=2)
    baseline = Baseline.take(cluster, tracker)
    client = subprocess.Popen([sys.executable, "-c", CLIENT], env={**os.environ, **cluster.env()},
                              stdin=subprocess.DEVNULL)
    try:
        def running() -> bool:
            jobs = cluster.status()["jobs"]
            return bool(jobs) and jobs[0]["slots"] == 2 and jobs[0]["uploaded"] == 10

        wait_for(running, 30, "the client's job to hold both slots with every input uploaded")
        sigkill(client)
        client.wait()
        killed_at = time.monotonic()
        spans = remote_parallel_map(interval, range(2), spinner=False)
        took = time.monotonic() - killed_at
    finally:
        sigkill(client)
        client.wait()

    assert took < SLOTS_BACK_WITHIN_SECONDS, f"the next job took {took:.1f}s after the kill"
    (start_a, end_a), (start_b, end_b) = sorted(spans)
    assert start_b < end_a, f"the next job ran on one slot only: {spans}"
    assert_settled(cluster, baseline)

"""A coordinator whose job store was corrupted while it was down starts anyway: the corrupt file
is kept aside, the log says so, new jobs run, and an attach to a job it held says it was lost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

import burla
from burla import remote_parallel_map

pytestmark = pytest.mark.timeout(90)

STORED = re.compile(r"burla\.attach\('([0-9a-f]+)'\)")

SLOW_DETACHED = """
import time
from burla import remote_parallel_map
def slow(x):
    time.sleep(0.5)
    return x
remote_parallel_map(slow, range(8), detach=True, spinner=False, max_parallelism=1)
"""


def identity(x):
    return x


def detach_slow_job(cluster) -> str:
    """Start a detached job that runs for a while, and leave it: its id."""
    env = {**os.environ, **cluster.env(), "PYTHONUNBUFFERED": "1"}
    starter = subprocess.Popen([sys.executable, "-c", SLOW_DETACHED], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert starter.stdout is not None
        return next(m.group(1) for line in starter.stdout if (m := STORED.search(line)))
    finally:
        starter.kill()
        starter.wait()


def wait_for_nodes(cluster, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not cluster.status()["nodes"]:
        assert time.monotonic() < end, "the agent did not re-register:\n" + cluster.logs()
        time.sleep(0.1)


def test_a_corrupt_store_is_kept_aside_and_the_coordinator_serves_on(make_cluster):
    cluster = make_cluster()
    job_id = detach_slow_job(cluster)
    assert cluster.coordinator is not None
    cluster.coordinator.terminate()
    cluster.coordinator.wait(timeout=10)
    store = cluster.state_dir / "jobs.sqlite3"
    with open(store, "r+b") as handle:  # the header, overwritten while it was down
        handle.write(b"\0garbage" * 64)
    corrupt = store.read_bytes()

    cluster.restart_coordinator()  # returns once it is ready: it started

    kept = list(cluster.state_dir.glob("jobs.sqlite3.corrupt-*"))
    assert [k.read_bytes() for k in kept if not k.name.endswith(("-wal", "-shm"))] == [corrupt]
    log = (cluster.root / "coordinator.log").read_text()
    assert "job_store_corrupt" in log and str(kept[0]) in log
    wait_for_nodes(cluster)
    assert remote_parallel_map(identity, range(3), spinner=False) == [0, 1, 2]
    assert remote_parallel_map(identity, range(3), detach=True, spinner=False) == [0, 1, 2]
    with pytest.raises(burla.JobNotFound, match="was lost: the cluster's job store was found "
                                                "corrupt") as lost:
        burla.attach(job_id, spinner=False)
    assert f"the corrupt file is kept at {kept[0]}" in str(lost.value)

"""`burla.attach` answers at once: the results while the job is held, else a typed error saying
it was collected (and when) or never was; a client that another attach displaces stops too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

import pytest

import burla
from burla import protocol, remote_parallel_map

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

FOLLOW = """
import sys
import burla
try:
    for value in burla.attach(sys.argv[1], generator=True, spinner=False):
        print("got", value, flush=True)
except burla.JobCollected as exc:
    print("JobCollected:", exc, flush=True)
    sys.exit(3)
"""


def identity(x):
    return x


def test_attach_to_a_collected_job_says_so_and_when(cluster, capsys):
    assert remote_parallel_map(identity, range(4), detach=True, spinner=False) == [0, 1, 2, 3]
    job_id = STORED.search(capsys.readouterr().out).group(1)
    with pytest.raises(burla.JobCollected, match=r"already collected at \d{4}-\d\d-\d\d \d\d:"):
        burla.attach(job_id, spinner=False)


def test_attach_to_an_unknown_id_says_there_is_no_such_job(cluster):
    unknown = uuid.uuid4().hex
    with pytest.raises(burla.JobNotFound, match=f"no job '{unknown}' of yours"):
        burla.attach(unknown, spinner=False)


@pytest.mark.parametrize("bad", ["x" * 100_000, "not-a-job", "", 123, None])
def test_attach_refuses_what_is_not_a_job_id_quoting_it_short(bad, monkeypatch):
    # No cluster is asked: one that would be cannot be reached.
    monkeypatch.setenv("BURLA_CLUSTER", "tcp://127.0.0.1:9")
    with pytest.raises(ValueError, match="is not a burla job id") as caught:
        burla.attach(bad, spinner=False)
    message = str(caught.value)
    assert len(message) < 200, message
    if bad == "x" * 100_000:
        assert "'xxxx" in message and "(100000 characters)" in message, message


@pytest.mark.parametrize("make", [
    lambda job_id: protocol.Attach(job_id),
    lambda job_id: protocol.Cancel(job_id, "why"),
    lambda job_id: protocol.JobLogsRequest(job_id),
    lambda job_id: protocol.InputsDone(job_id, 1),
], ids=["attach", "cancel", "logs", "inputs_done"])
def test_the_coordinator_refuses_a_huge_job_id_without_echoing_it(cluster, make):
    from burla.client.admin import cluster_address, request

    address = cluster_address()
    assert address is not None
    with pytest.raises(burla.JobNotFound, match="is not a burla job id") as caught:
        request(address, make("j" * 100_000))
    assert len(str(caught.value)) < 200, str(caught.value)


def test_the_coordinator_remembers_collected_jobs_across_a_restart(make_cluster, capsys):
    cluster = make_cluster()
    assert remote_parallel_map(identity, range(3), detach=True, spinner=False) == [0, 1, 2]
    job_id = STORED.search(capsys.readouterr().out).group(1)
    # The call returns once it holds the results; the coordinator records the collection
    # when the client's last Ack arrives, an instant later. Stop it only after that.
    deadline = time.monotonic() + 10
    while any(job["job_id"] == job_id for job in cluster.status()["jobs"]):
        assert time.monotonic() < deadline, "the coordinator never saw the job collected"
        time.sleep(0.02)
    assert cluster.coordinator is not None
    cluster.coordinator.terminate()
    cluster.coordinator.wait(timeout=10)
    cluster.restart_coordinator()
    with pytest.raises(burla.JobCollected, match="already collected"):
        burla.attach(job_id, spinner=False)


def test_a_follower_displaced_by_another_attach_stops_with_job_collected(cluster):
    env = {**os.environ, **cluster.env(), "PYTHONUNBUFFERED": "1"}
    starter = subprocess.Popen([sys.executable, "-c", SLOW_DETACHED], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    follower = None
    try:
        assert starter.stdout is not None
        job_id = next(m.group(1) for line in starter.stdout if (m := STORED.search(line)))
        starter.kill()  # the job runs on, detached
        follower = subprocess.Popen([sys.executable, "-c", FOLLOW, job_id], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert follower.stdout is not None
        first = follower.stdout.readline()
        assert first.startswith("got"), first + follower.stdout.read()
        # This process takes the job over and collects every result...
        assert burla.attach(job_id, spinner=False) == list(range(8))
        # ...and the follower is told at once, instead of waiting for ever.
        out, _ = follower.communicate(timeout=20)
        assert follower.returncode == 3, out
        assert "another process attached" in out
    finally:
        for process in (starter, follower):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

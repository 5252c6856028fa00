"""With the coordinator's state dir on a full disk (a small tmpfs), a detached job that does not
fit fails at once with `ClusterStorageError`, naming the state dir and its free space, and frees
its slots; attached jobs, which need no disk, run; `burla jobs cancel` and status answer; and
later jobs run. The store itself rolls back a write that SQLite refuses for want of room."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import burla
from burla import remote_parallel_map
from burla.coordinator.jobstore import JobStore
from burla.coordinator.storefile import StoreError

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]

STORED = re.compile(r"burla\.attach\('([0-9a-f]+)'\)")
FREE = r"has [\d.]+ (B|KiB|MiB) free"

SLOW_DETACHED = """
import time
from burla import remote_parallel_map
def slow(x):
    time.sleep(60)
    return x
remote_parallel_map(slow, range(2), detach=True, spinner=False, max_parallelism=1)
"""


def identity(x):
    return x


def slow_len(data):
    time.sleep(60)  # never done before the job fails
    return len(data)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a tmpfs of the given size (e.g. "4m"); unmounted after the test."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       check=True)
        mounts.append(path)
        return path

    yield mount
    for path in reversed(mounts):  # lazily, should a daemon still hold a file there
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until `disk` has no room left; the file, to delete for room again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (65536, 512):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * block):
                    pass
    finally:
        os.close(fd)
    assert shutil.disk_usage(disk).free < 65536
    return filler


def test_a_detached_job_that_does_not_fit_fails_at_once_and_frees_its_slots(
        small_disk, make_cluster):
    disk = small_disk("4m")
    cluster = make_cluster(coordinator_state=disk)
    inputs = [b"x" * 1_500_000] * 3  # one chunk each: the second does not fit beside the first
    with pytest.raises(burla.ClusterStorageError) as failed:
        remote_parallel_map(slow_len, inputs, detach=True, spinner=False, max_parallelism=1)
    message = str(failed.value)
    assert f"state dir {disk} is full" in message and re.search(FREE, message), message
    assert "without detach=True" in message
    job_id = re.search(r"job '([0-9a-f]+)' cannot run detached", message).group(1)
    status = cluster.status()
    assert status["jobs"] == [] and [n["used_cpus"] for n in status["nodes"]] == [0]
    with pytest.raises(burla.JobCanceled, match="cannot run detached"):
        burla.attach(job_id, spinner=False)
    # Its stored inputs are gone, so the disk has room again; an attached job needs none.
    assert remote_parallel_map(len, inputs, spinner=False) == [1_500_000] * 3
    assert remote_parallel_map(identity, range(3), detach=True, spinner=False) == [0, 1, 2]


def test_on_a_full_disk_attached_jobs_run_and_cancel_and_status_answer(
        small_disk, make_cluster):
    disk = small_disk("4m")
    cluster = make_cluster(coordinator_state=disk)
    env = {**os.environ, **cluster.env(), "PYTHONUNBUFFERED": "1"}
    starter = subprocess.Popen([sys.executable, "-c", SLOW_DETACHED], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert starter.stdout is not None
        running = next(m.group(1) for line in starter.stdout if (m := STORED.search(line)))
    finally:
        starter.kill()
        starter.wait()
    filler = fill(disk)

    with pytest.raises(burla.ClusterStorageError, match=f"state dir {disk} is full.*{FREE}"):
        remote_parallel_map(identity, range(3), detach=True, spinner=False)
    assert remote_parallel_map(identity, range(20), spinner=False) == list(range(20))
    cancel = subprocess.run([sys.executable, "-m", "burla", "jobs", "cancel", running], env=env,
                            capture_output=True, text=True, timeout=60)
    assert cancel.returncode == 0 and f"job {running} cancelled" in cancel.stdout, cancel
    assert running not in [j["job_id"] for j in cluster.status()["jobs"]]
    with pytest.raises(burla.JobCanceled, match="burla jobs cancel"):
        burla.attach(running, spinner=False)

    filler.unlink()  # room again: detached jobs run, and the end of the cancelled one is kept
    assert remote_parallel_map(identity, range(3), detach=True, spinner=False) == [0, 1, 2]
    assert cluster.coordinator is not None
    cluster.coordinator.terminate()
    cluster.coordinator.wait(timeout=10)
    cluster.restart_coordinator()
    with pytest.raises(burla.JobCanceled, match="burla jobs cancel"):
        burla.attach(running, spinner=False)


def test_a_write_sqlite_refuses_for_want_of_room_is_rolled_back(small_disk):
    disk = small_disk("1m")
    store = JobStore(disk / "jobs.sqlite3", reserve_bytes=0)  # nothing held back: fill it up
    store.add_job("det", "me", "hash", b"function", "f", {}, None, None)
    stored = 0
    with pytest.raises(StoreError, match=f"database or disk is full.*state dir {disk} {FREE}"):
        for chunk_id in range(100):
            store.add_chunk("det", chunk_id, chunk_id, 1, os.urandom(100_000))
            stored += 1
    assert 0 < stored < 10
    assert len(store.jobs()[0].chunks) == stored  # the refused one left nothing behind
    store.end_job("det", "me", "canceled", "no room")  # kept in memory if it does not fit
    assert store.ended("det") is not None
    assert store.retry_unsaved() and store.jobs() == []
    store.close()
    record = JobStore(disk / "jobs.sqlite3").ended("det")
    assert record is not None and record.detail == "no room"

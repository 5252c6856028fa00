"""A job store write that fails (SQLite's "database or disk is full") changes nothing: the store
rolls its transaction back, and the scheduler refuses or fails the job that needed it, frees its
slots and tells its client, leaving no half-changed job behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from burla import errors, protocol
from burla.client.results import error_for
from burla.coordinator.jobstore import JobStore
from burla.coordinator.storefile import StoreError

from .test_scheduler import CLIENT, NOW, WALL, hello, results, scheduler, sent, submit


class FullDisk:
    """A connection whose statements containing `failing` raise as SQLite does on a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.failing: str | None = None

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.failing is not None and self.failing in sql:
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def __enter__(self) -> sqlite3.Connection:
        return self.db.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self.db.__exit__(*exc)


def full_disk_store(path: Path) -> tuple[JobStore, FullDisk]:
    store = JobStore(path, reserve_bytes=0)
    disk = FullDisk(store.db)
    store.db = disk  # type: ignore[assignment]
    return store, disk


def rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"select count(*) from {table}").fetchone()[0])


def untouched(s) -> None:
    """No job is left on the cluster, and every slot is free again."""
    assert s.jobs == {} and s.queued == []
    assert all(n.used_cpus == 0 for n in s.nodes.values())


def test_a_transaction_that_fails_part_way_stores_none_of_it(tmp_path):
    store, disk = full_disk_store(tmp_path / "j.sqlite3")
    disk.failing = "into jobs"  # the function's row goes in first, then this fails
    with pytest.raises(StoreError, match=f"could not write its job store .*database or disk is "
                                         f"full.*state dir {tmp_path} has .* free"):
        store.add_job("det", "me", "hash", b"function", "f", {}, None, None)
    disk.failing = None
    assert rows(tmp_path / "j.sqlite3", "functions") == 0
    assert not store.db.in_transaction  # and the store goes on
    store.add_job("det", "me", "hash", b"function", "f", {}, None, None)
    assert rows(tmp_path / "j.sqlite3", "jobs") == 1


def test_a_detached_submit_the_store_cannot_take_is_refused_and_leaves_nothing(tmp_path):
    store, disk = full_disk_store(tmp_path / "j.sqlite3")
    s = scheduler(store)
    s.add_node(b"agent-a", hello("a"), NOW)
    disk.failing = "insert"
    out = s.submit(CLIENT, "me", submit("det", detach=True), NOW)
    refused = sent(out, protocol.Refuse, CLIENT)
    assert [r.kind for r in refused] == ["storage"] and not sent(out, protocol.Assign)
    assert "cannot run detached" in refused[0].message and str(tmp_path) in refused[0].message
    assert "without detach=True" in refused[0].message
    assert isinstance(error_for(refused[0].kind, refused[0].message), errors.ClusterStorageError)
    untouched(s)


def detached_running(store: JobStore):
    """A scheduler with a one-CPU node running a detached job's first chunk."""
    s = scheduler(store)
    s.add_node(b"agent-a", hello("a", cpus=1), NOW)
    s.submit(CLIENT, "me", submit("det", detach=True), NOW)
    job = s.jobs["det"]
    chunk = sent(s.add_inputs(job, protocol.InputChunk("det", 0, 2, b"ab")), protocol.Chunk)[0]
    return s, job, chunk


def assert_failed_and_freed(s, out, store: JobStore) -> None:
    failed = sent(out, protocol.JobFailed, CLIENT)
    assert [f.kind for f in failed] == ["storage"], out
    assert "cannot run detached" in failed[0].message
    assert [r.job_id for r in sent(out, protocol.Release, b"agent-a")] == ["det"]
    untouched(s)
    # A later attach is told why, even while the store cannot take the record yet.
    refused = sent(s.attach(b"client-2", "me", "det", NOW, WALL), protocol.Refuse)
    assert refused[0].kind == "canceled" and "cannot run detached" in refused[0].message


def test_a_chunk_the_store_cannot_take_fails_its_job_and_frees_the_slots(tmp_path):
    store, disk = full_disk_store(tmp_path / "j.sqlite3")
    s, job, _ = detached_running(store)
    disk.failing = "insert"  # every write that adds data
    out = s.add_inputs(job, protocol.InputChunk("det", 2, 2, b"cd"))
    assert not sent(out, protocol.UploadCredit)  # never acknowledged as stored
    assert_failed_and_freed(s, out, store)
    # Another job takes the slot at once.
    disk.failing = None
    out = s.submit(b"client-2", "me", submit("next"), NOW)
    assert sent(out, protocol.Accept)[0].parallelism == 1


def test_inputs_done_the_store_cannot_take_fails_the_job_without_saying_stored(tmp_path):
    store, disk = full_disk_store(tmp_path / "j.sqlite3")
    s, job, _ = detached_running(store)
    disk.failing = "update jobs set total"
    out = s.inputs_done(job, protocol.InputsDone("det", 2))
    assert not sent(out, protocol.Stored)
    assert_failed_and_freed(s, out, store)


def test_results_the_store_cannot_take_fail_the_job_and_are_not_delivered(tmp_path):
    store, disk = full_disk_store(tmp_path / "j.sqlite3")
    s, job, chunk = detached_running(store)
    s.inputs_done(job, protocol.InputsDone("det", 2))
    disk.failing = "insert into results"
    out = s.results(s.nodes["a"], results("det", chunk.chunk_id, 0, 2))
    assert not sent(out, protocol.Results)
    assert_failed_and_freed(s, out, store)


def test_an_end_the_store_cannot_take_is_answered_from_memory_then_written(tmp_path):
    path = tmp_path / "j.sqlite3"
    store, disk = full_disk_store(path)
    s, job, _ = detached_running(store)
    disk.failing = "into ended"
    out = s.cancel("det", "me", "cancelled with `burla jobs cancel`")
    assert sent(out, protocol.JobFailed, CLIENT)[0].kind == "canceled"
    untouched(s)
    assert store.unsaved and rows(path, "ended") == 0 and rows(path, "chunks") == 1
    assert s.store.ended("det") is not None
    disk.failing = None
    s.expire(NOW + 1, {})  # each tick writes what waited
    assert not store.unsaved and rows(path, "ended") == 1 and rows(path, "chunks") == 0
    store.close()
    reopened = JobStore(path)
    record = reopened.ended("det")
    assert record is not None and record.outcome == "canceled"


def test_a_chunk_whose_deletion_failed_is_not_run_again_after_a_restart(tmp_path):
    path = tmp_path / "j.sqlite3"
    store, disk = full_disk_store(path)
    s, job, chunk = detached_running(store)
    disk.failing = "delete from chunks"
    s.results(s.nodes["a"], results("det", chunk.chunk_id, 0, 2))
    assert rows(path, "chunks") == 1  # left behind, but its results say it ran
    restored = scheduler(JobStore(path))
    restored.restore(NOW)
    assert not restored.jobs["det"].pending and restored.jobs["det"].done == 2


def test_a_restored_job_whose_uploader_never_returns_is_given_up(tmp_path):
    path = tmp_path / "j.sqlite3"
    store, _ = full_disk_store(path)
    detached_running(store)  # inputs never all stored: no InputsDone
    store.close()
    s = scheduler(JobStore(path))
    s.restore(NOW)
    s.expire(NOW + 60, {})  # the client may still come back to upload the rest
    assert "det" in s.jobs
    s.expire(NOW + 700, {})
    untouched(s)
    refused = sent(s.attach(CLIENT, "me", "det", NOW, WALL), protocol.Refuse)[0]
    assert refused.kind == "canceled" and "never all stored" in refused.message

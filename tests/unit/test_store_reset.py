"""A corrupt job store (header or pages overwritten while the coordinator was down) is moved
aside and kept, the coordinator starts with an empty store, and an attach to a job it held is
told why it is gone, and where the old file is."""

from __future__ import annotations

import os
import sqlite3

import pytest

from burla import protocol
from burla.coordinator import storefile
from burla.coordinator.jobstore import JobStore

from .test_scheduler import CLIENT, NOW, WALL, hello, scheduler, sent, submit


def stored_job(path) -> None:
    """A store holding one detached job with a few pages of inputs, closed."""
    s = scheduler(JobStore(path))
    s.add_node(b"agent-a", hello("a"), NOW)
    s.submit(CLIENT, "me", submit("old", detach=True), NOW)
    for i in range(6):
        s.add_inputs(s.jobs["old"], protocol.InputChunk("old", i, 1, os.urandom(5000)))
    s.store.close()


def overwrite(path, offset: int) -> bytes:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(os.urandom(4096))
    return path.read_bytes()


@pytest.mark.parametrize("offset", [0, 3 * 4096], ids=["header", "pages"])
def test_a_corrupt_store_is_kept_aside_and_the_coordinator_starts_empty(tmp_path, offset):
    path = tmp_path / "jobs.sqlite3"
    stored_job(path)
    corrupt = overwrite(path, offset)
    store = JobStore(path)
    assert store.reset is not None
    kept = tmp_path / os.path.basename(store.reset.kept)
    assert kept.name.startswith("jobs.sqlite3.corrupt-") and kept.read_bytes() == corrupt
    assert store.jobs() == []  # a new, empty store in its place...
    store.add_job("new", "me", "h", b"f", "f", {}, None, None)  # ...that works
    assert [j.job_id for j in store.jobs()] == ["new"]


def test_attach_to_a_job_the_corrupt_store_held_says_it_was_lost_and_where_the_file_is(
        tmp_path):
    path = tmp_path / "jobs.sqlite3"
    stored_job(path)
    overwrite(path, 0)
    s = scheduler(JobStore(path))
    s.restore(NOW)
    assert s.store.reset is not None
    refused = sent(s.attach(CLIENT, "me", "old", NOW, s.store.reset.at + 90), protocol.Refuse)
    assert refused[0].kind == "unknown_job"
    message = refused[0].message
    assert "it was lost: the cluster's job store was found corrupt" in message
    assert "(file is not a database)" in message and "(90 s ago)" in message
    assert f"the corrupt file is kept at {s.store.reset.kept}" in message
    s.store.close()
    # The reset is remembered across restarts, and the good new store is not moved again.
    again = JobStore(path)
    assert again.reset == s.store.reset
    assert len(list(tmp_path.glob("jobs.sqlite3.corrupt-*"))) == 1


def test_a_sound_store_is_not_reset_and_unknown_ids_get_the_plain_answer(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    stored_job(path)
    s = scheduler(JobStore(path))
    s.restore(NOW)
    assert s.store.reset is None and "old" in s.jobs
    refused = sent(s.attach(CLIENT, "me", "never", NOW, WALL), protocol.Refuse)[0]
    assert "corrupt" not in refused.message and "no job 'never' of yours" in refused.message


def test_only_corruption_counts_as_corrupt():
    assert storefile.is_corrupt(sqlite3.DatabaseError("file is not a database"))
    assert storefile.is_corrupt(storefile.CorruptStore("Page 7: btreeInitPage() returns 11"))
    assert not storefile.is_corrupt(sqlite3.OperationalError("database is locked"))
    assert not storefile.is_corrupt(sqlite3.OperationalError("database or disk is full"))
    assert not storefile.is_corrupt(OSError("no such file"))


def test_a_store_that_cannot_be_opened_for_another_reason_is_not_moved(tmp_path):
    (tmp_path / "jobs.sqlite3").mkdir()  # not a file at all: an error to report, not corrupt
    with pytest.raises(sqlite3.OperationalError):
        JobStore(tmp_path / "jobs.sqlite3")
    assert not list(tmp_path.glob("*.corrupt-*"))

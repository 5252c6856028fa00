"""A detached job that is over is remembered: a later attach is told at once how and when it
ended, even after a coordinator restart, and a client displaced by another attach is told too."""

from __future__ import annotations

import time

from burla import protocol
from burla.coordinator import jobstore
from burla.coordinator.jobstore import JobStore

from .test_scheduler import CLIENT, NOW, WALL, hello, results, scheduler, sent, submit


def collected_job(store: JobStore):
    """A scheduler whose one detached job ran and was collected by its client."""
    s = scheduler(store)
    s.add_node(b"agent-a", hello("a", cpus=1), NOW)
    s.submit(CLIENT, "me", submit("det", detach=True), NOW)
    job = s.jobs["det"]
    chunk = sent(s.add_inputs(job, protocol.InputChunk("det", 0, 2, b"ab")), protocol.Chunk)[0]
    s.inputs_done(job, protocol.InputsDone("det", 2))
    delivered = sent(s.results(s.nodes["a"], results("det", chunk.chunk_id, 0, 2)),
                     protocol.Results, CLIENT)
    s.ack(job, protocol.Ack("det", delivered[-1].seq))
    assert "det" not in s.jobs  # collected and forgotten
    return s


def test_attach_after_collection_says_it_was_collected_and_when(tmp_path):
    s = collected_job(JobStore(tmp_path / "j.sqlite3"))
    ended = s.store.ended("det")
    assert ended is not None and ended.outcome == "collected"
    later = ended.ended_at + 300
    refused = sent(s.attach(b"client-2", "me", "det", NOW, later), protocol.Refuse)
    assert [r.kind for r in refused] == ["collected"]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ended.ended_at))
    assert f"already collected at {stamp} (5 min ago)" in refused[0].message


def test_the_record_outlives_a_coordinator_restart(tmp_path):
    path = tmp_path / "j.sqlite3"
    collected_job(JobStore(path)).store.close()
    s = scheduler(JobStore(path))
    s.restore(NOW)
    assert sent(s.attach(b"client-2", "me", "det", NOW, WALL), protocol.Refuse)[0].kind \
        == "collected"


def test_another_owner_and_an_unknown_id_get_no_such_job(tmp_path):
    s = collected_job(JobStore(tmp_path / "j.sqlite3"))
    for owner, job_id in (("intruder", "det"), ("me", "never-was")):
        refused = sent(s.attach(b"client-2", owner, job_id, NOW, WALL), protocol.Refuse)
        assert refused[0].kind == "unknown_job"
        assert f"no job {job_id!r} of yours" in refused[0].message
        assert "collected" not in refused[0].message  # nothing leaks about another's job


def test_attach_to_a_cancelled_job_says_why(tmp_path):
    s = scheduler(JobStore(tmp_path / "j.sqlite3"))
    s.add_node(b"agent-a", hello("a"), NOW)
    s.submit(CLIENT, "me", submit("det", detach=True), NOW)
    s.cancel("det", "me", "cancelled with `burla jobs cancel`")
    refused = sent(s.attach(b"client-2", "me", "det", NOW, WALL), protocol.Refuse)[0]
    assert refused.kind == "canceled" and "burla jobs cancel" in refused.message


def test_the_record_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(jobstore, "MAX_ENDED_JOBS", 3)
    store = JobStore(tmp_path / "j.sqlite3")
    for i in range(5):
        store.end_job(f"job{i}", "me", "collected")
    assert [store.ended(f"job{i}") is not None for i in range(5)] == [False, False, True, True,
                                                                      True]


def test_a_second_attach_tells_the_first_client_it_was_taken_over(tmp_path):
    s = scheduler(JobStore(tmp_path / "j.sqlite3"))
    s.add_node(b"agent-a", hello("a", cpus=1), NOW)
    s.submit(CLIENT, "me", submit("det", detach=True), NOW)
    job = s.jobs["det"]
    s.add_inputs(job, protocol.InputChunk("det", 0, 2, b"ab"))
    s.inputs_done(job, protocol.InputsDone("det", 2))
    out = s.attach(b"client-2", "me", "det", NOW, WALL)
    told = sent(out, protocol.JobFailed, CLIENT)
    assert [m.kind for m in told] == ["collected"]
    assert "another process attached" in told[0].message
    assert job.client == b"client-2" and sent(out, protocol.Accept, b"client-2")
    # The same client coming back on its own connection is not told anything.
    assert not sent(s.attach(b"client-2", "me", "det", NOW, WALL), protocol.JobFailed)

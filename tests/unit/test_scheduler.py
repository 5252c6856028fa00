"""The coordinator's scheduler driven by plain events: no sockets, no clock, no sleeps."""

from __future__ import annotations

import pytest

from burla import protocol
from burla.coordinator import delivery
from burla.coordinator.jobstore import JobStore
from burla.coordinator.scheduler import MAX_PREFETCH, Scheduler

CLIENT = b"client-1"
NOW = 100.0
WALL = 1_700_000_000.0  # Unix time, for what a refusal says of when


def hello(agent_id: str, cpus: int = 2, **info) -> protocol.Hello:
    return protocol.Hello("agent", protocol.PROTOCOL_VERSION, "x", "t", "s",
                          {"agent_id": agent_id, "cpus": cpus, "ram_gb": 8, "gpus": [],
                           "image": "", "python_version": "3.11", **info})


def submit(job_id: str = "job", max_parallelism: int | None = None, parent: str | None = None,
           func_cpu: int = 1, detach: bool = False) -> protocol.Submit:
    return protocol.Submit(job_id, "hash", "f", func_cpu, 0, None, None, max_parallelism, False,
                           detach, -1, "3.11", parent, b"function")


def sent(out, kind, peer=None):
    return [m for p, m in out if isinstance(m, kind) and (peer is None or p == peer)]


def results(job, chunk, first, count, attempt=0, done=True):
    return protocol.Results(job, chunk, attempt, first, count, [], done, 0, 0, b"r" * count)


def scheduler(store: JobStore | None = None) -> Scheduler:
    """A scheduler whose attempts start at 0, so tests can name them."""
    s = Scheduler(b"secret", store)
    s.epoch = 0
    return s


@pytest.fixture
def two_nodes() -> Scheduler:
    s = scheduler()
    s.add_node(b"agent-a", hello("a"), NOW)
    s.add_node(b"agent-b", hello("b"), NOW)
    return s


def test_max_parallelism_caps_slots_across_nodes(two_nodes):
    out = two_nodes.submit(CLIENT, "me", submit(max_parallelism=3), NOW)
    assigns = sent(out, protocol.Assign)
    assert sum(a.slots for a in assigns) == 3
    assert sent(out, protocol.Accept)[0].parallelism == 3
    assert assigns[0].function == b"function"  # the first assign carries the function


def test_chunks_go_only_against_credit(two_nodes):
    two_nodes.submit(CLIENT, "me", submit(max_parallelism=1), NOW)
    job = two_nodes.jobs["job"]
    # The one slot assigned can take one chunk at once; the rest wait for the agent's credit.
    dispatched = [sent(two_nodes.add_inputs(job, protocol.InputChunk("job", i, 1, b"x")),
                       protocol.Chunk) for i in range(4)]
    assert [len(d) for d in dispatched] == [1, 0, 0, 0]
    node = two_nodes.nodes[next(iter(job.allocations))]
    out = two_nodes.credit(node, protocol.Credit("job", 2))
    chunks = sent(out, protocol.Chunk, node.peer)
    assert [c.first_index for c in chunks] == [1, 2]
    assert sum(u.nbytes for u in sent(out, protocol.UploadCredit, CLIENT)) == 2
    # A finished chunk returns one credit, which the fourth chunk uses.
    out = two_nodes.results(node, results("job", 0, 0, 1))
    assert [c.first_index for c in sent(out, protocol.Chunk)] == [3]


def test_an_assign_carries_the_agents_prefetch_as_credit():
    s = scheduler()
    s.add_node(b"agent-a", hello("a", cpus=2, prefetch=2), NOW)
    s.submit(CLIENT, "me", submit(), NOW)
    job = s.jobs["job"]
    dispatched = [sent(s.add_inputs(job, protocol.InputChunk("job", i, 1, b"x")), protocol.Chunk)
                  for i in range(7)]
    # 2 slots x (1 running + 2 ahead): six chunks go with no Credit from the agent.
    assert [len(d) for d in dispatched] == [1] * 6 + [0]


def test_an_agent_cannot_claim_an_unbounded_prefetch():
    s = scheduler()
    s.add_node(b"agent-a", hello("a", prefetch=10**9), NOW)
    assert s.nodes["a"].prefetch == MAX_PREFETCH


def test_upload_window_comes_back_only_while_the_client_has_inputs_to_send(two_nodes):
    announced = protocol.Submit("job", "hash", "f", 1, 0, None, None, 1, False, False, 3, "3.11",
                                None, b"function")
    two_nodes.submit(CLIENT, "me", announced, NOW)
    job = two_nodes.jobs["job"]
    out = two_nodes.add_inputs(job, protocol.InputChunk("job", 0, 2, b"xx"))
    assert sent(out, protocol.Chunk) and sent(out, protocol.UploadCredit, CLIENT)
    out = two_nodes.add_inputs(job, protocol.InputChunk("job", 2, 1, b"x"))  # 3 of 3 are in
    node = two_nodes.nodes[next(iter(job.allocations))]
    out += two_nodes.credit(node, protocol.Credit("job", 1))
    assert [c.first_index for c in sent(out, protocol.Chunk)] == [2]
    assert not sent(out, protocol.UploadCredit)


def test_lost_node_requeues_and_fences_late_results(two_nodes):
    two_nodes.submit(CLIENT, "me", submit(max_parallelism=1), NOW)
    job = two_nodes.jobs["job"]
    assert sent(two_nodes.add_inputs(job, protocol.InputChunk("job", 0, 4, b"xxxx")),
                protocol.Chunk)  # the assigned slot takes it at once
    first = two_nodes.nodes[next(iter(job.allocations))]
    # Two of four results arrive, then the node goes silent.
    out = two_nodes.results(first, results("job", 0, 0, 2, done=False))
    assert sent(out, protocol.Results, CLIENT)[0].count == 2
    for node in two_nodes.nodes.values():
        node.last_seen = NOW + 10 if node is not first else NOW
    out = two_nodes.expire(NOW + 10, {CLIENT: NOW + 10})
    assert first.agent_id not in two_nodes.nodes
    other = next(iter(two_nodes.nodes.values()))
    assert sent(out, protocol.Assign, other.peer)
    retry = sent(out, protocol.Chunk, other.peer)[0]
    assert (retry.attempt, retry.skip) == (1, 2)
    assert not sent(out, protocol.UploadCredit)  # a retry was paid for already
    # The new attempt resends an overlapping result: it counts once; the batch goes whole to
    # the client, whose ledger drops the index it already holds.
    out = two_nodes.results(other, results("job", 0, 1, 3, attempt=1))
    delivered = sent(out, protocol.Results, CLIENT)[0]
    assert (delivered.first_index, delivered.count) == (1, 3)
    assert job.done == 4 and job.duplicates == 1


def test_stale_attempt_results_are_dropped(two_nodes):
    two_nodes.submit(CLIENT, "me", submit(max_parallelism=1), NOW)
    job = two_nodes.jobs["job"]
    two_nodes.add_inputs(job, protocol.InputChunk("job", 0, 1, b"x"))
    node = two_nodes.nodes[next(iter(job.allocations))]
    two_nodes.credit(node, protocol.Credit("job", 1))
    assert not two_nodes.results(node, results("job", 0, 0, 1, attempt=5))
    assert job.done == 0 and job.duplicates == 1


def test_result_window_holds_back_until_ack(two_nodes, monkeypatch):
    monkeypatch.setattr(delivery, "RESULT_WINDOW_BYTES", 2)
    two_nodes.submit(CLIENT, "me", submit(max_parallelism=1), NOW)
    job = two_nodes.jobs["job"]
    two_nodes.add_inputs(job, protocol.InputChunk("job", 0, 3, b"xxx"))
    node = two_nodes.nodes[next(iter(job.allocations))]
    two_nodes.credit(node, protocol.Credit("job", 1))
    out = two_nodes.results(node, results("job", 0, 0, 2, done=False))
    assert sent(out, protocol.Results, CLIENT)
    out = two_nodes.results(node, results("job", 0, 2, 1))
    assert not sent(out, protocol.Results, CLIENT)  # window full: held in the backlog
    out = two_nodes.ack(job, protocol.Ack("job", 1))
    assert sent(out, protocol.Results, CLIENT)[0].first_index == 2


def test_finished_inputs_release_slots_to_a_waiting_job():
    s = scheduler()
    s.add_node(b"agent-a", hello("a", cpus=1), NOW)
    s.submit(CLIENT, "me", submit("one"), NOW)
    out = s.submit(b"client-2", "me", submit("two"), NOW)
    assert sent(out, protocol.Accept)[0].parallelism == 0  # queued: no free CPU
    one = s.jobs["one"]
    s.add_inputs(one, protocol.InputChunk("one", 0, 1, b"x"))
    s.inputs_done(one, protocol.InputsDone("one", 1))
    node = s.nodes["a"]
    s.credit(node, protocol.Credit("one", 1))
    out = s.results(node, results("one", 0, 0, 1))
    assert sent(out, protocol.Release)[0].job_id == "one"
    assert sent(out, protocol.Assign)[0].job_id == "two"


def test_progress_is_sent_only_when_it_says_something_new():
    s = scheduler()
    s.add_node(b"agent-a", hello("a", cpus=1), NOW)
    out = s.submit(CLIENT, "me", submit("one"), NOW)
    assert sent(out, protocol.Accept)[0].parallelism == 1
    assert not sent(out, protocol.Progress)  # Accept already carries the slots
    s.submit(b"client-2", "me", submit("two"), NOW)  # queued behind "one"
    one = s.jobs["one"]
    s.add_inputs(one, protocol.InputChunk("one", 0, 1, b"x"))
    s.inputs_done(one, protocol.InputsDone("one", 1))
    out = s.results(s.nodes["a"], results("one", 0, 0, 1))
    assert sent(out, protocol.Release)[0].job_id == "one"
    assert not sent(out, protocol.Progress, CLIENT)  # finished: its results said it all
    assert [m.running for m in sent(out, protocol.Progress, b"client-2")] == [1]


def test_nested_job_borrows_a_slot_when_all_are_taken():
    s = scheduler()
    s.add_node(b"agent-a", hello("a", cpus=1), NOW)
    s.submit(CLIENT, "me", submit("parent"), NOW)
    out = s.submit(b"client-2", "me", submit("child", parent="parent"), NOW)
    assert sent(out, protocol.Accept)[0].parallelism == 1


def test_silent_client_cancels_attached_job(two_nodes):
    two_nodes.submit(CLIENT, "me", submit(), NOW)
    out = two_nodes.expire(NOW + 6, {CLIENT: NOW})
    assert "job" not in two_nodes.jobs
    assert all(r.kill for r in sent(out, protocol.Release))
    assert all(n.used_cpus == 0 for n in two_nodes.nodes.values())


def test_submit_is_idempotent(two_nodes):
    two_nodes.submit(CLIENT, "me", submit(max_parallelism=2), NOW)
    out = two_nodes.submit(CLIENT, "me", submit(max_parallelism=2), NOW)
    assert sent(out, protocol.Accept)[0].parallelism == 2
    assert not sent(out, protocol.Assign)


def test_unknown_function_hash_is_asked_for(two_nodes):
    msg = submit()
    msg = protocol.Submit(*[getattr(msg, f) for f in msg._header], b"")
    assert sent(two_nodes.submit(CLIENT, "me", msg, NOW), protocol.NeedFunction)


def test_incompatible_python_is_refused_with_both_versions(two_nodes):
    msg = submit()
    fields = {name: getattr(msg, name) for name in msg._header}
    fields["python_version"] = "3.9"
    out = two_nodes.submit(CLIENT, "me", protocol.Submit(**fields, function=b"f"), NOW)
    refusal = sent(out, protocol.Refuse)[0]
    assert refusal.kind == "no_compatible_nodes:python"
    assert "3.9" in refusal.message and "3.11" in refusal.message


def test_function_crosses_to_each_node_once():
    s = scheduler()
    s.add_node(b"agent-a", hello("a", cpus=1), NOW)
    first = sent(s.submit(CLIENT, "me", submit("one"), NOW), protocol.Assign)[0]
    s.cancel("one", None, "done")
    again = submit("two")
    fields = {name: getattr(again, name) for name in again._header}
    out = s.submit(b"client-2", "me", protocol.Submit(**fields, function=b""), NOW)
    second = sent(out, protocol.Assign)[0]
    assert first.function == b"function" and second.function == b""


def run_detached_until_half_done(store: JobStore) -> Scheduler:
    s = scheduler(store)
    s.add_node(b"agent-a", hello("a", cpus=1), NOW)
    s.submit(CLIENT, "me", submit("det", detach=True), NOW)
    job = s.jobs["det"]
    out = s.add_inputs(job, protocol.InputChunk("det", 0, 2, b"ab"))
    out += s.add_inputs(job, protocol.InputChunk("det", 2, 2, b"cd"))
    # A detached job's input is durable at once, so its upload window comes back at once.
    assert sum(u.nbytes for u in sent(out, protocol.UploadCredit)) == 4
    assert sent(s.inputs_done(job, protocol.InputsDone("det", 4)), protocol.Stored)
    node = s.nodes["a"]
    chunk = sent(out, protocol.Chunk)[0]  # the one slot took the first chunk at once
    assert chunk.data == b"ab"  # read back from the store
    s.results(node, results("det", chunk.chunk_id, 0, 1, done=False))
    return s


def test_detached_job_survives_a_coordinator_restart(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    run_detached_until_half_done(JobStore(path))
    # A new coordinator on the same store: the job is back, with input 0 done.
    s = scheduler(JobStore(path))
    s.restore(NOW)
    job = s.jobs["det"]
    assert (job.done, job.inputs_done, job.total) == (1, True, 4)
    out = s.add_node(b"agent-b", hello("b", cpus=1), NOW)
    node = s.nodes["b"]
    chunks = sent(out + s.credit(node, protocol.Credit("det", 2)), protocol.Chunk)
    assert [(c.first_index, c.skip, c.data) for c in chunks] == [(0, 1, b"ab"), (2, 0, b"cd")]
    s.results(node, results("det", chunks[0].chunk_id, 1, 1))
    s.results(node, results("det", chunks[1].chunk_id, 2, 2))
    assert job.finished and job.client == b""
    # Attaching replays every stored result, once each, then forgets the job once acked.
    out = s.attach(b"client-9", "me", "det", NOW, WALL)
    accept = sent(out, protocol.Accept)[0]
    assert accept.total == 4
    replayed = sent(out, protocol.Results, b"client-9")
    assert sorted(i for r in replayed for i in range(r.first_index, r.first_index + r.count)) \
        == [0, 1, 2, 3]
    s.ack(job, protocol.Ack("det", replayed[-1].seq))
    assert "det" not in s.jobs and not list(s.store.jobs())


def test_attach_to_someone_elses_or_unknown_job_is_refused(tmp_path):
    s = run_detached_until_half_done(JobStore(tmp_path / "j.sqlite3"))
    refused = sent(s.attach(b"c", "intruder", "det", NOW, WALL), protocol.Refuse)
    assert refused[0].kind == "unknown_job"
    assert sent(s.attach(b"c", "me", "nope", NOW, WALL), protocol.Refuse)


def test_detached_client_leaving_after_upload_keeps_job(tmp_path):
    s = run_detached_until_half_done(JobStore(tmp_path / "j.sqlite3"))
    s.expire(NOW + 6, {CLIENT: NOW})
    assert "det" in s.jobs and s.jobs["det"].client == b""


def test_detached_client_leaving_before_upload_ends_cancels(tmp_path):
    s = scheduler(JobStore(tmp_path / "j.sqlite3"))
    s.add_node(b"agent-a", hello("a"), NOW)
    s.submit(CLIENT, "me", submit("det", detach=True), NOW)
    s.expire(NOW + 6, {CLIENT: NOW})
    assert "det" not in s.jobs and not list(s.store.jobs())


def test_resubmitted_chunk_is_not_run_twice(two_nodes):
    two_nodes.submit(CLIENT, "me", submit(max_parallelism=1), NOW)
    job = two_nodes.jobs["job"]
    two_nodes.add_inputs(job, protocol.InputChunk("job", 0, 1, b"x"))
    out = two_nodes.add_inputs(job, protocol.InputChunk("job", 0, 1, b"x"))
    assert sent(out, protocol.UploadCredit)[0].nbytes == 1
    assert len(job.pending) + len(job.inflight) == 1


def test_results_sent_to_an_earlier_coordinator_run_never_match():
    # Chunk ids start over in a restarted coordinator; its attempts start at a random epoch.
    s = Scheduler(b"secret")
    s.add_node(b"agent-a", hello("a", cpus=1), NOW)
    s.submit(CLIENT, "me", submit(), NOW)
    job = s.jobs["job"]
    chunk = sent(s.add_inputs(job, protocol.InputChunk("job", 0, 2, b"xy")), protocol.Chunk)[0]
    assert chunk.attempt == s.epoch != 0
    assert not s.results(s.nodes["a"], results("job", chunk.chunk_id, 0, 2, attempt=0))
    assert job.done == 0 and chunk.chunk_id in job.inflight


def test_chunk_done_counts_only_from_a_batch_reaching_the_chunks_end(two_nodes):
    two_nodes.submit(CLIENT, "me", submit(max_parallelism=1), NOW)
    job = two_nodes.jobs["job"]
    two_nodes.add_inputs(job, protocol.InputChunk("job", 0, 4, b"xxxx"))
    node = two_nodes.nodes[next(iter(job.allocations))]
    two_nodes.results(node, results("job", 0, 0, 1, done=True))  # says done, stops short
    assert 0 in job.inflight and job.done == 1


def test_function_cache_is_bounded_but_keeps_live_jobs_functions(monkeypatch):
    from burla.coordinator import functions

    monkeypatch.setattr(functions, "FUNCTION_CACHE_BYTES", 10)
    s = scheduler()
    s.add_node(b"agent-a", hello("a", cpus=4), NOW)
    for n in range(3):
        msg = submit(f"job{n}")
        fields = {name: getattr(msg, name) for name in msg._header}
        fields["function_hash"] = f"h{n}"
        s.submit(CLIENT, "me", protocol.Submit(**fields, function=b"x" * 8), NOW)
        if n < 2:
            s.cancel(f"job{n}", None, "done")
    assert list(s.functions) == ["h2"]  # the live job's function stays, old ones went


def _submit_with(s: Scheduler, job_id: str, function_hash: str, size: int) -> list:
    msg = submit(job_id, max_parallelism=1)  # one slot each: several run side by side
    fields = {name: getattr(msg, name) for name in msg._header}
    fields["function_hash"] = function_hash
    return s.submit(CLIENT, "me", protocol.Submit(**fields, function=b"x" * size), NOW)


def test_an_agent_is_told_to_forget_old_functions_but_never_a_live_jobs(monkeypatch):
    from burla.coordinator import functions

    monkeypatch.setattr(functions, "AGENT_FUNCTION_BYTES", 10)
    s = scheduler()
    s.add_node(b"agent-a", hello("a", cpus=4), NOW)
    out = _submit_with(s, "job0", "h0", 6)
    assert not sent(out, protocol.Forget)
    out = _submit_with(s, "job1", "h1", 6)  # over budget, but job0 still runs with h0
    assert not sent(out, protocol.Forget)
    s.cancel("job0", None, "done")
    s.cancel("job1", None, "done")
    out = _submit_with(s, "job2", "h2", 6)
    forgets = [m.function_hash for m in sent(out, protocol.Forget, b"agent-a")]
    assert forgets == ["h0", "h1"]
    # Forgotten before the Assign that brings the new bytes.
    kinds = [type(m) for p, m in out if p == b"agent-a"]
    assert kinds.index(protocol.Assign) > kinds.index(protocol.Forget)
    assert sent(out, protocol.Assign)[0].function == b"x" * 6
    s.cancel("job2", None, "done")
    out = _submit_with(s, "job3", "h0", 6)  # a forgotten function travels again
    assert sent(out, protocol.Assign)[0].function == b"x" * 6
    assert [m.function_hash for m in sent(out, protocol.Forget)] == ["h2"]

"""The agent's side of executor hygiene, on plain events: a job's end is passed on to the
executors that ran it, and a retiring executor is replaced without a crash being counted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from burla import protocol
from burla.agent.cgroups import NoneBackend
from burla.agent.config import AgentConfig
from burla.agent.executors import DYING, Executor
from burla.agent.service import Agent, AgentJob

pytestmark = pytest.mark.timeout(10)
SHAPE = (1, 0, None)


class Sent:
    """Stands in for a channel: records what the agent sends, and to whom."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes | None, protocol.Message]] = []

    def send(self, msg: protocol.Message, peer: bytes | None = None) -> bool:
        self.messages.append((peer, msg))
        return True


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Agent]:
    config = AgentConfig("tcp://127.0.0.1:1", "token", tmp_path, cpus=2, warm_executors=0,
                         cgroups="none")
    made = Agent(config)
    made.downstream, made.upstream = Sent(), Sent()  # type: ignore[assignment]
    backend = NoneBackend("tests")
    spawned = iter(range(100))

    def spawn(shape: Any, owner: str = "") -> Executor:  # a fork that is instantly ready
        executor_id = f"fresh-{next(spawned)}"
        executor = Executor(executor_id, shape, backend.create(executor_id, made.policy.limits(
            shape, None)[0]), owner=owner, ready=True)
        made.pool.executors[executor_id] = executor
        return executor

    monkeypatch.setattr(made.pool, "spawn", spawn)
    made.delayed = []  # type: ignore[attr-defined]
    monkeypatch.setattr(made, "later", lambda _delay, callback, *args:
                        made.delayed.append((callback, args)))  # type: ignore[attr-defined]
    yield made
    made.ctx.destroy(linger=0)


def run_delayed(agent: Agent) -> None:
    """What the event loop would run RELEASE_PASS_ON_SECONDS later."""
    delayed, agent.delayed = agent.delayed, []  # type: ignore[attr-defined]
    for callback, args in delayed:
        callback(*args)


def add_executor(agent: Agent, name: str, job: AgentJob | None) -> Executor:
    executor = Executor(name, SHAPE, NoneBackend("tests").create(name, agent.policy.limits(
        SHAPE, None)[0]), owner="me", ready=True)
    if job is not None:
        executor.job_id = executor.loaded_job = job.job_id
        executor.loaded_hash = job.function_hash
    agent.pool.executors[name] = executor
    return executor


def add_job(agent: Agent, job_id: str) -> AgentJob:
    job = AgentJob(job_id, "hash", b"function", 1, SHAPE, "me", {}, parallelism=1)
    agent.jobs[job_id] = job
    return job


def chunk(job_id: str) -> protocol.Chunk:
    return protocol.Chunk(job_id, 7, 0, 0, 3, 0, False, b"inputs")


def test_a_released_job_is_passed_on_to_the_idle_executors_that_ran_it(agent: Agent) -> None:
    job = add_job(agent, "job-a")
    ran = add_executor(agent, "ran", job)
    attached = add_executor(agent, "attached", job)
    attached.loaded_job = ""  # attached, never fed: it ran nothing of the job
    agent.on_release(protocol.Release("job-a", False))
    assert ran.job_id == attached.job_id == ""
    assert agent.downstream.messages == []  # type: ignore[attr-defined]
    run_delayed(agent)
    assert agent.downstream.messages == [(b"ran", protocol.Release("job-a", False))]  # type: ignore[attr-defined]


def test_no_release_is_passed_on_to_an_executor_the_next_job_took_first(agent: Agent) -> None:
    job = add_job(agent, "job-a")
    ran = add_executor(agent, "ran", job)
    agent.on_release(protocol.Release("job-a", False))
    ran.job_id = ran.loaded_job = "job-b"  # the next job's Load went first: it cleans up then
    run_delayed(agent)
    assert agent.downstream.messages == []  # type: ignore[attr-defined]


def test_a_job_assigned_again_after_its_release_was_passed_on_is_loaded_again(
        agent: Agent) -> None:
    # An agent that rejoins releases its jobs; the coordinator then may assign the same job to
    # it again. The executor that ran it was told the job ended, so it needs the Load again.
    job = add_job(agent, "job-a")
    ran = add_executor(agent, "ran", job)
    agent.on_release(protocol.Release("job-a", False))
    run_delayed(agent)
    agent.downstream.messages.clear()  # type: ignore[attr-defined]
    agent.on_assign(protocol.Assign("job-a", "hash", 1, 1, 0, None, "me", {}, b"function"))
    agent.on_chunk(chunk("job-a"))
    sent = [(peer, type(msg).__name__) for peer, msg in agent.downstream.messages]  # type: ignore[attr-defined]
    assert sent == [(b"ran", "Load"), (b"ran", "Chunk")]
    assert ran.job_id == "job-a" and ran.chunk == chunk("job-a")


def test_a_busy_executor_gets_the_release_once_its_last_chunk_is_done(agent: Agent) -> None:
    job = add_job(agent, "job-a")
    busy = add_executor(agent, "busy", job)
    busy.chunk = chunk("job-a")
    agent.on_release(protocol.Release("job-a", False))
    assert agent.downstream.messages == []  # type: ignore[attr-defined]
    agent.on_results(busy, protocol.Results("job-a", 7, 0, 0, 3, [], True, 0, 0, b"[]"))
    assert busy.job_id == ""
    run_delayed(agent)
    assert agent.downstream.messages == [(b"busy", protocol.Release("job-a", False))]  # type: ignore[attr-defined]


def test_an_executor_retiring_with_a_chunk_gives_it_back_uncounted(agent: Agent) -> None:
    job = add_job(agent, "job-b")
    changed = add_executor(agent, "changed", job)
    sent = chunk("job-b")
    changed.chunk = sent  # sent to it before its Retire arrived; it will not run it
    agent.on_executor_message(b"changed", protocol.Retire("changed builtins.len"))
    assert changed.killed and changed.job_id == DYING and changed.chunk is None
    fresh = [e for e in agent.pool.executors.values() if e.executor_id.startswith("fresh")]
    assert len(fresh) == 1 and fresh[0].job_id == "job-b"
    # The fresh executor took the chunk at once, untouched, and no crash was counted.
    assert fresh[0].chunk == sent and not job.queue and job.crashes == {}


def test_an_idle_executor_retiring_is_killed_and_not_replaced_for_a_job(agent: Agent) -> None:
    idle = add_executor(agent, "idle", None)
    agent.on_executor_message(b"idle", protocol.Retire("changed the working directory"))
    assert idle.killed and idle.job_id == DYING
    assert list(agent.pool.executors) == ["idle"]  # keep_warm refills once its exit is seen


def test_more_slots_for_a_job_here_keep_its_queue_and_executors(agent: Agent) -> None:
    agent.registered.set()
    assign = protocol.Assign("job-a", "hash", 1, 1, 0, None, "me", {}, b"function")
    agent.on_coordinator_message(b"", assign)
    first = agent.jobs["job-a"]
    busy = next(e for e in agent.pool.executors.values() if e.job_id == "job-a")
    for _ in range(3):
        agent.on_coordinator_message(b"", chunk("job-a"))
    assert busy.chunk is not None and len(first.queue) == 2
    agent.on_coordinator_message(b"", protocol.Assign("job-a", "hash", 1, 1, 0, None, "me", {},
                                                      b""))
    assert agent.jobs["job-a"] is first and first.slots == first.parallelism == 2
    serving = [e for e in agent.pool.executors.values() if e.job_id == "job-a"]
    assert len(serving) == 2 and all(e.chunk is not None for e in serving)
    assert len(first.queue) == 1  # the new executor took one queued chunk, none was lost


def test_what_comes_between_registrations_is_dropped(agent: Agent) -> None:
    # The agent gave up on its registration and said Hello again: the coordinator's messages
    # for the old registration arrive before the Welcome for the new one, and are dropped.
    assert not agent.registered.is_set()
    agent.on_coordinator_message(b"", protocol.Assign("job-a", "hash", 1, 1, 0, None, "me", {},
                                                      b"function"))
    agent.on_coordinator_message(b"", protocol.Welcome("c", protocol.PROTOCOL_VERSION, "0",
                                                       {"answers": "an-older-session"}))
    assert agent.jobs == {} and not agent.registered.is_set()
    agent.on_coordinator_message(b"", protocol.Welcome("c", protocol.PROTOCOL_VERSION, "0",
                                                       {"answers": agent.session}))
    assert agent.registered.is_set()
    agent.on_coordinator_message(b"", protocol.Assign("job-a", "hash", 1, 1, 0, None, "me", {},
                                                      b"function"))
    assert list(agent.jobs) == ["job-a"]

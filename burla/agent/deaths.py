"""What the agent does when an executor dies mid-chunk: say what it printed and where it
crashed, judge the death, and retry the rest of the chunk or fail the input that was running.
A mixin of `Agent` (burla/agent/service.py); the rules themselves are pure, in
`agent/blame.py` and `agent/failures.py`.
"""

from __future__ import annotations

import pickle
import time
from typing import TYPE_CHECKING

import structlog

from burla import protocol
from burla.agent.blame import blame, settle
from burla.agent.executors import Executor, describe_exit
from burla.agent.failures import Death, judge

if TYPE_CHECKING:
    from burla.agent.config import AgentConfig
    from burla.agent.executors import ExecutorPool
    from burla.agent.limits import LimitPolicy
    from burla.agent.service import AgentJob

log = structlog.get_logger("burla.agent")

# Out-of-memory deaths of one job this close together were calls running side by side.
OOM_TOGETHER_SECONDS = 2.0


class Deaths:
    config: AgentConfig
    pool: ExecutorPool
    policy: LimitPolicy

    def send_up(self, msg: protocol.Message) -> None:
        raise NotImplementedError

    def feed_idle(self, job: AgentJob) -> None:
        raise NotImplementedError

    def after_death(self, job: AgentJob, executor: Executor, chunk: protocol.Chunk,
                    blamed: bool) -> None:
        """Retry the rest of the chunk, or fail the input that killed its executor first.

        `blamed`: the executor died before taking the chunk (starting, loading the function).
        """
        done = executor.reported
        culprit = blame(chunk, done, blamed)
        index, certain = culprit.index, culprit.certain
        if executor.last_words or executor.last_words_lost:  # what it printed before it died
            running = index if certain else -1  # not surely this input's: said as the job's
            self.send_up(protocol.Logs.pack(job.job_id, [
                [running if i == -1 else i, s, t] for i, s, t in executor.last_words
            ], executor.last_words_lost))
        if executor.crash_report:  # where in the user's code it crashed, as that call's stderr
            entry = [index, 2, executor.crash_report]
            if not certain:  # not surely this input's: said as the job's, naming the candidates
                last = chunk.first_index + chunk.count - 1
                entry = [-1, 2, f"[burla] an executor crashed running one of inputs "
                                f"{index}..{last}:\n{executor.crash_report}"]
            self.send_up(protocol.Logs.pack(job.job_id, [entry], 0))
        others = sum(1 for e in self.pool.executors.values() if e.job_id == job.job_id)
        if executor.oom_killed:
            now = time.monotonic()
            if (now - job.last_oom_at < OOM_TOGETHER_SECONDS
                    and executor.requested_at < job.last_oom_at):
                # Killed together with a sibling (its death was handled first): this call did
                # not run alone, so it is retried with fewer at once, not failed.
                others = max(others, 1)
            job.last_oom_at = now
        cause = describe_exit(executor)
        if blamed:
            cause += " before it could run any input (starting, or loading the function)"
        verdict = settle(judge(Death(
            index, cause, executor.oom_killed, job.shape[1],
            job.crashes.get(index, 0), others, self.config.agent_id,
            self.policy.memory_budget_bytes,
        )), certain)
        if verdict.crashed:
            job.crashes[index] = job.crashes.get(index, 0) + 1
        if verdict.lower_parallelism:
            job.parallelism = others
            log.warning("parallelism_lowered", job=job.job_id, index=index,
                        parallelism=job.parallelism, reason="out of memory")
        if verdict.fail is not None:
            log.warning("input_failed", job=job.job_id, index=index, error=str(verdict.fail))
            blob = pickle.dumps([verdict.fail])
            done_now = done + 1 == chunk.count
            self.send_up(protocol.Results(job.job_id, chunk.chunk_id, chunk.attempt, index, 1,
                                          [index], done_now, 0, 0, blob))
            done += 1
            if done_now:
                return
        # Reporting each input from now on, so a next death is blamed on the input running.
        retry = protocol.Chunk(job.job_id, chunk.chunk_id, chunk.attempt, chunk.first_index,
                               chunk.count, done, True, chunk.data)
        job.queue.appendleft(retry)
        self.feed_idle(job)

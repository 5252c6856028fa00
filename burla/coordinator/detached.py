"""The scheduler's handling of detached jobs: attach, restore, and a store that cannot take them.

A mixin of `Scheduler` (pure state, like it: events in, messages out). A detached job lives in
the job store; when a write for it fails (a full disk), the job fails with the store's words and
frees its slots, and nothing else is held up. A restored job whose inputs were never all stored
is given up once its client has had long enough to come back and upload them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog

from burla import protocol
from burla.coordinator import ended
from burla.coordinator.functions import FunctionCache
from burla.coordinator.jobstore import JobStore
from burla.coordinator.state import Job
from burla.coordinator.storefile import StoreError

log = structlog.get_logger("burla.coordinator")

Out = list[tuple[bytes, protocol.Message]]

# How long a restored detached job waits for the client that was still uploading its inputs
# (clients retry for BURLA_RECONNECT_TIMEOUT, 60 s by default) before it is given up.
ORPHAN_UPLOAD_SECONDS = 600.0


class DetachedJobs:
    store: JobStore
    jobs: dict[str, Job]
    functions: FunctionCache
    queued: list[str]
    epoch: int

    if TYPE_CHECKING:  # the Scheduler's
        def job_token(self, job_id: str) -> str: ...
        def reattach(self, job: Job, peer: bytes, owner: str, now: float) -> Out: ...
        def end_job(self, job: Job, *, kill: bool, canceled: str = "") -> Out: ...
        def cancel(self, job_id: str, owner: str | None, why: str) -> Out: ...

    def attach(self, peer: bytes, owner: str, job_id: str, now: float, wall: float) -> Out:
        """A client collects a detached job; `wall` (Unix time) dates a refusal's words."""
        job = self.jobs.get(job_id)
        if job is None or job.owner != owner:  # collected, cancelled, lost, or never here
            record = self.store.ended(job_id)
            return [(peer, ended.attach_refusal(record, owner, job_id, wall, self.store.reset))]
        if not job.inputs_done:
            return [(peer, protocol.Refuse(
                "uploading", f"job {job_id!r} is still receiving its inputs from the process "
                f"that started it; attach once they are all stored", job_id))]
        return self.reattach(job, peer, owner, now)

    def replay(self, job: Job) -> Iterator[protocol.Results]:
        for stored in self.store.results(job.job_id):
            yield protocol.Results(job.job_id, -1, 0, stored.first_index, stored.count,
                                   stored.errors, False, 0, 0, stored.data)

    def restore(self, now: float) -> None:
        """Take back the detached jobs a previous coordinator left in the store."""
        for stored in self.store.jobs():
            if stored.canceled:
                self.store.end_job(stored.job_id, stored.owner, "canceled", stored.canceled)
                continue
            function = self.store.function(stored.function_hash)
            if function is not None:
                self.functions.put(stored.function_hash, function)
            self.jobs[stored.job_id] = Job.restored(stored, self.job_token(stored.job_id),
                                                    self.epoch, now)
            self.queued.append(stored.job_id)
            log.info("job_restored", job=stored.job_id, chunks=len(stored.chunks),
                     done=stored.done)

    def store_failed(self, job: Job, error: StoreError) -> Out:
        """A detached job whose data the store could not take: it fails, and its slots free."""
        log.error("job_store_write_failed", job=job.job_id, error=str(error))
        why = cannot_detach(job.job_id, error)
        out: Out = [(job.client, protocol.JobFailed(job.job_id, "storage", why))] \
            if job.client else []
        return out + self.end_job(job, kill=True, canceled=why)

    def expire_detached(self, now: float) -> Out:
        """Write the ends the store could not take before; give up restored jobs whose
        uploading client never came back."""
        self.store.retry_unsaved()
        out: Out = []
        for job in list(self.jobs.values()):
            orphaned = job.detach and not job.inputs_done and not job.client
            if orphaned and now - job.client_seen > ORPHAN_UPLOAD_SECONDS:
                out += self.cancel(job.job_id, None, "its inputs were never all stored: the "
                                   "coordinator restarted while they were uploaded, and the "
                                   "process uploading them did not come back")
        return out


def cannot_detach(job_id: str, error: StoreError) -> str:
    """Why a job is refused or failed for want of room in the store, and what to do."""
    return (f"job {job_id!r} cannot run detached: {error}. Free space in {error.state_dir}, or "
            f"run the job without detach=True (an attached job keeps nothing on the cluster's "
            f"disk).")

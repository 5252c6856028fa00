"""The scheduler's side of grow=True: accepting jobs that growth can serve, and failing those it
cannot. A mixin of `Scheduler`, pure like it: events in, messages out, the time passed in.

Growth itself (what to boot and delete) is `coordinator/growth.py`; the async side that asks
it and carries out its instructions is `coordinator/grower.py`. This module only sees growth
through `could_grow`, a pure function of a call's shape and the time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from burla import protocol
from burla.coordinator import placement
from burla.coordinator.capacity import Shape
from burla.coordinator.demand import JobView
from burla.coordinator.state import Job, Node, Request

log = structlog.get_logger("burla.coordinator")

Out = list[tuple[bytes, protocol.Message]]
# Whether growth could boot a node for calls of this shape now, and what or why not.
CouldGrow = Callable[[Shape, float], tuple[bool, str]]

NO_NODES = ("the cluster has no nodes. Start an agent for it on a machine (`burla agent "
            "--coordinator ENDPOINT --token-file FILE`), or use the embedded cluster "
            "(`burla local up`, with BURLA_CLUSTER unset).")
# What a job growth gave up on is told to do, after what growth tried.
GAVE_UP_ADVICE = ("Fix that and run the job again, or raise the coordinator's caps "
                  "(--max-nodes, --max-cpus, --max-gpus) if they are what stopped it.")


class GrowingJobs:
    nodes: dict[str, Node]
    jobs: dict[str, Job]
    could_grow: CouldGrow | None  # None: the coordinator has no provider, grow boots nothing
    draining: set[str]  # nodes being deleted: no new work goes there

    if TYPE_CHECKING:  # the Scheduler's
        def allocate(self, job: Job, *, report: bool = True, limit: int | None = None) -> Out:
            ...
        def end_job(self, job: Job, *, kill: bool, canceled: str = "") -> Out: ...
        def dispatch(self, job: Job) -> Out: ...

    def refusal(self, msg: protocol.Submit, request: Request, now: float) -> protocol.Refuse | None:
        """Why the job cannot be accepted (NoNodes, NoCompatibleNodes), or None. A grow=True
        job that no node fits yet is accepted, and queued, when growth can boot a node for it.
        The advice to pass grow=True is given only where growth could help."""
        if self.nodes:
            problem = placement.incompatibility(request, self.nodes.values())
            if problem is None:
                return None
            kind, text = f"no_compatible_nodes:{problem[0]}", problem[1]
        else:
            kind, text = "no_nodes", NO_NODES
        if self.could_grow is None:
            return protocol.Refuse(kind, text, msg.job_id)
        helps, why = self.could_grow(Shape.of(request), now)
        if helps and msg.grow:
            log.info("job_waits_for_growth", job=msg.job_id, why=why)
            return None
        if helps:
            text += f" Or pass grow=True: this cluster can boot nodes for it ({why})."
        elif msg.grow:
            text += f" grow=True cannot help here: {why}."
        return protocol.Refuse(kind, text, msg.job_id)

    def allocate_joined(self) -> Out:
        """A node joined: running jobs that still want slots get them, oldest first (queued
        jobs, with no slots yet, were served first)."""
        out: Out = []
        for job in list(self.jobs.values()):
            if not job.slots or job.finished:
                continue
            wanted = JobView.of(job, job.grow).wanted
            if wanted > 0:
                out += self.allocate(job, limit=wanted)
        return out

    def growth_said(self, job_id: str, status: str, awaiting: bool = False) -> Out:
        """What growth says of a job: its words for the client's spinner (a Progress, when
        they change), and whether nodes boot for it (`awaiting`: its agents then get no chunks
        ahead, so the nodes find work when they join; once over, the prefetch goes out)."""
        job = self.jobs.get(job_id)
        if job is None:
            return []
        out: Out = []
        if job.awaiting_nodes != awaiting:
            job.awaiting_nodes = awaiting
            if not awaiting:
                out += self.dispatch(job)
        if job.growth_status == status:
            return out
        job.growth_status = status
        if job.client and not job.finished:
            out.append((job.client, protocol.Progress(job.job_id, job.slots, status)))
        return out

    def give_up(self, job_id: str, reason: str) -> Out:
        """No node can run the job and growth could not boot one: it fails with what was tried
        (NoCompatibleNodes, reason "grow"), and a later attach is told the same."""
        job = self.jobs.get(job_id)
        if job is None:
            return []
        why = f"{reason}. {GAVE_UP_ADVICE}"
        log.warning("job_growth_gave_up", job=job_id, why=reason)
        out: Out = [(job.client, protocol.JobFailed(job_id, "no_compatible_nodes:grow", why))] \
            if job.client else []
        return out + self.end_job(job, kill=True, canceled=why)

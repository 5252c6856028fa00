"""The coordinator's decisions as pure, synchronous state: events in, messages out.

Every handler takes a decoded message (and the time, passed in) and returns `(peer, message)`
pairs for the service to send. It allocates slots, dispatches chunks only against agent credit,
relays results exactly once per index, and paces both the upload and the result stream. No
sockets, no clock, no unpickling of user data.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from typing import Any

import structlog

from burla import protocol
from burla.config import PEER_TIMEOUT_SECONDS
from burla.coordinator import placement
from burla.coordinator.state import ChunkState, Job, Node, Request

log = structlog.get_logger("burla.coordinator")

Out = list[tuple[bytes, protocol.Message]]

# Input bytes a client may have uploaded but not yet dispatched (its upload window).
UPLOAD_WINDOW_BYTES = 64 * 1024 * 1024
# Result bytes sent to a client but not yet acknowledged.
RESULT_WINDOW_BYTES = 32 * 1024 * 1024
# Result bytes held for a slow client before dispatch of new chunks pauses.
MAX_BACKLOG_BYTES = 64 * 1024 * 1024


class Scheduler:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.nodes: dict[str, Node] = {}
        self.peers: dict[bytes, str] = {}  # agent routing id -> agent_id
        self.jobs: dict[str, Job] = {}
        self.functions: dict[str, Any] = {}
        self.queued: list[str] = []  # jobs waiting for slots, oldest first

    # --- nodes --------------------------------------------------------------------------------

    def add_node(self, peer: bytes, hello: protocol.Hello, now: float) -> Out:
        info = hello.info
        out: Out = []
        old = self.nodes.get(info["agent_id"])
        if old is not None:
            out += self.lose_node(old.agent_id, "re-registered with a new session")
        self.nodes[info["agent_id"]] = Node(
            info["agent_id"], peer, hello.session, int(info["cpus"]), int(info["ram_gb"]),
            list(info.get("gpus", [])), str(info.get("image", "")),
            str(info["python_version"]), now,
        )
        self.peers[peer] = info["agent_id"]
        log.info("node_added", agent=info["agent_id"], cpus=info["cpus"])
        return out + self.allocate_queued()

    def lose_node(self, agent_id: str, why: str) -> Out:
        """Forget a node; its in-flight chunks go back to the front of their queues."""
        node = self.nodes.pop(agent_id, None)
        if node is None:
            return []
        self.peers.pop(node.peer, None)
        log.warning("node_lost", agent=agent_id, why=why)
        out: Out = []
        for job in list(self.jobs.values()):
            requeued = [c for c in job.inflight.values() if c.node == agent_id]
            for chunk in sorted(requeued, key=lambda c: c.first_index, reverse=True):
                del job.inflight[chunk.chunk_id]
                chunk.attempt += 1  # fences out any late result of the lost attempt
                chunk.node = ""
                job.pending.appendleft(chunk)
            job.allocations.pop(agent_id, None)
            job.credits.pop(agent_id, None)
            if requeued or job.pending:
                out += self.allocate(job)
        return out + self.dispatch_all()

    def node_by_peer(self, peer: bytes) -> Node | None:
        agent_id = self.peers.get(peer)
        return self.nodes.get(agent_id) if agent_id is not None else None

    # --- jobs ---------------------------------------------------------------------------------

    def job_token(self, job_id: str) -> str:
        return hmac.new(self.secret, job_id.encode(), hashlib.sha256).hexdigest()

    def owner_of_job_token(self, token: str) -> str | None:
        for job in self.jobs.values():
            if hmac.compare_digest(job.token, token):
                return job.owner
        return None

    def submit(self, peer: bytes, owner: str, msg: protocol.Submit, now: float) -> Out:
        job = self.jobs.get(msg.job_id)
        if job is not None:  # a retried submit: answer as before
            return [(peer, protocol.Accept(job.job_id, job.slots, UPLOAD_WINDOW_BYTES))]
        if msg.function:
            self.functions[msg.function_hash] = msg.function
        elif msg.function_hash not in self.functions:
            return [(peer, protocol.NeedFunction(msg.job_id))]
        if not self.nodes:
            return [(peer, protocol.Refuse(
                "no_nodes",
                "the cluster has no nodes. Start one with `burla local up`, or pass grow=True.",
                msg.job_id))]
        request = Request(msg.func_cpu, msg.func_ram, msg.func_gpu, msg.image, msg.python_version)
        problem = placement.incompatibility(request, self.nodes.values())
        if problem is not None:
            kind, text = problem
            return [(peer, protocol.Refuse(f"no_compatible_nodes:{kind}", text, msg.job_id))]
        job = Job(
            msg.job_id, owner, peer, msg.function_hash, msg.function_name, request,
            msg.max_parallelism, msg.detach, msg.parent_job, self.job_token(msg.job_id), now, now,
        )
        self.jobs[job.job_id] = job
        out = self.allocate(job)
        log.info("job_submitted", job=job.job_id, owner=owner, slots=job.slots,
                 function=msg.function_name)
        return [(peer, protocol.Accept(job.job_id, job.slots, UPLOAD_WINDOW_BYTES))] + out

    def allocate(self, job: Job) -> Out:
        """Give `job` free slots up to its cap; nested jobs borrow one slot when none are free."""
        cap = job.max_parallelism or 1 << 30
        wanted = cap - job.slots
        out: Out = []
        if wanted <= 0 or job.finished:
            return out
        nodes = placement.eligible(job.request, self.nodes.values())
        for node in nodes:
            take = min(wanted, job.request.slots_on(node, free_only=True))
            if take > 0:
                out += self.assign(job, node, take)
                wanted -= take
            if wanted <= 0:
                break
        if job.slots == 0 and job.parent_job and nodes:
            out += self.assign(job, nodes[0], 1)  # its parent's call waits on it, idle
        if job.slots == 0 and job.job_id not in self.queued:
            self.queued.append(job.job_id)
        elif job.slots and job.job_id in self.queued:
            self.queued.remove(job.job_id)
        if out:
            out.append((job.client, protocol.Progress(job.job_id, job.slots)))
        return out + self.dispatch(job)

    def assign(self, job: Job, node: Node, slots: int) -> Out:
        request = job.request
        node.used_cpus += slots * request.func_cpu
        node.used_ram_gb += slots * request.func_ram
        node.used_gpus += slots if request.func_gpu else 0
        job.allocations[node.agent_id] = job.allocations.get(node.agent_id, 0) + slots
        job.credits.setdefault(node.agent_id, 0)
        function = b"" if job.function_hash in node.functions else self.functions[job.function_hash]
        node.functions.add(job.function_hash)
        env = {"BURLA_API_KEY": job.token, "BURLA_PARENT_JOB": job.job_id}
        return [(node.peer, protocol.Assign(
            job.job_id, job.function_hash, slots, request.func_cpu, request.func_ram,
            request.func_gpu, job.owner, env, function))]

    def release(self, job: Job, agent_id: str, *, kill: bool) -> Out:
        slots = job.allocations.pop(agent_id, 0)
        job.credits.pop(agent_id, None)
        node = self.nodes.get(agent_id)
        if node is None:
            return []
        request = job.request
        node.used_cpus -= slots * request.func_cpu
        node.used_ram_gb -= slots * request.func_ram
        node.used_gpus -= slots if request.func_gpu else 0
        return [(node.peer, protocol.Release(job.job_id, kill))]

    def allocate_queued(self) -> Out:
        out: Out = []
        for job_id in list(self.queued):
            job = self.jobs.get(job_id)
            if job is None:
                self.queued.remove(job_id)
            else:
                out += self.allocate(job)
        return out

    def end_job(self, job: Job, *, kill: bool) -> Out:
        out: Out = []
        for agent_id in list(job.allocations):
            out += self.release(job, agent_id, kill=kill)
        self.jobs.pop(job.job_id, None)
        if job.job_id in self.queued:
            self.queued.remove(job.job_id)
        return out + self.allocate_queued()

    def cancel(self, job_id: str, owner: str | None, why: str) -> Out:
        job = self.jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            return []
        log.info("job_canceled", job=job_id, why=why)
        out = [(job.client, protocol.JobFailed(job_id, "canceled", why))]
        return out + self.end_job(job, kill=True)

    # --- uploads ------------------------------------------------------------------------------

    def add_inputs(self, job: Job, msg: protocol.InputChunk) -> Out:
        if msg.first_index != job.uploaded:
            log.warning("input_gap", job=job.job_id, expected=job.uploaded, got=msg.first_index)
            return []  # a duplicate of a chunk we already hold (a retried upload)
        job.pending.append(ChunkState(job.next_chunk_id, msg.first_index, msg.count, msg.data))
        job.next_chunk_id += 1
        job.uploaded += msg.count
        return self.allocate(job) if job.slots == 0 else self.dispatch(job)

    def inputs_done(self, job: Job, msg: protocol.InputsDone) -> Out:
        job.total = msg.total
        return self.complete_or_release(job)

    # --- dispatch and results -------------------------------------------------------------------

    def credit(self, node: Node, msg: protocol.Credit) -> Out:
        job = self.jobs.get(msg.job_id)
        if job is None or node.agent_id not in job.allocations:
            return []
        job.credits[node.agent_id] += msg.chunks
        return self.dispatch(job)

    def dispatch(self, job: Job) -> Out:
        out: Out = []
        if job.backlog_bytes >= MAX_BACKLOG_BYTES:
            return out  # the client is behind; let it catch up before more work runs
        for agent_id, credit in job.credits.items():
            node = self.nodes[agent_id]
            while credit > 0 and job.pending:
                chunk = job.pending.popleft()
                chunk.node = agent_id
                job.inflight[chunk.chunk_id] = chunk
                credit -= 1
                out.append((node.peer, protocol.Chunk(
                    job.job_id, chunk.chunk_id, chunk.attempt, chunk.first_index, chunk.count,
                    chunk.reported, chunk.data)))
                if chunk.attempt == 0:  # retries were paid for on their first dispatch
                    out.append((job.client, protocol.UploadCredit(job.job_id, chunk.nbytes)))
            job.credits[agent_id] = credit
        return out

    def dispatch_all(self) -> Out:
        return [sent for job in list(self.jobs.values()) for sent in self.dispatch(job)]

    def results(self, node: Node, msg: protocol.Results) -> Out:
        job = self.jobs.get(msg.job_id)
        chunk = job.inflight.get(msg.chunk_id) if job else None
        stale = chunk is None or chunk.attempt != msg.attempt or chunk.node != node.agent_id
        if job is None or chunk is None or stale:
            if job is not None:
                job.duplicates += msg.count
            return []
        expected = chunk.first_index + chunk.reported
        overlap = expected - msg.first_index
        out: Out = []
        if overlap < 0 or overlap > msg.count:
            log.error("results_gap", job=job.job_id, chunk=chunk.chunk_id,
                      expected=expected, got=msg.first_index)
            return out
        fresh = msg.count - overlap
        job.duplicates += overlap
        if fresh:
            out += self.deliver(job, _trim(msg, overlap))
            chunk.reported += fresh
            job.done += fresh
        if msg.chunk_done:
            del job.inflight[chunk.chunk_id]
            if node.agent_id in job.credits:
                job.credits[node.agent_id] += 1
            out += self.dispatch(job)
        return out + self.complete_or_release(job)

    def deliver(self, job: Job, msg: protocol.Results) -> Out:
        size = sum(msg.sizes)
        if job.unacked_bytes >= RESULT_WINDOW_BYTES or job.backlog:
            job.backlog.append(msg)
            job.backlog_bytes += size
            return []
        return [self.send_result(job, msg, size)]

    def send_result(self, job: Job, msg: protocol.Results, size: int) -> tuple[bytes, Any]:
        job.seq += 1
        job.unacked.append((job.seq, size))
        job.unacked_bytes += size
        return (job.client, protocol.Results(
            job.job_id, msg.chunk_id, 0, msg.first_index, msg.count, msg.errors, msg.sizes,
            msg.chunk_done, job.seq, msg.data))

    def ack(self, job: Job, msg: protocol.Ack) -> Out:
        while job.unacked and job.unacked[0][0] <= msg.seq:
            job.unacked_bytes -= job.unacked.popleft()[1]
        out: Out = []
        was_behind = job.backlog_bytes >= MAX_BACKLOG_BYTES
        while job.backlog and job.unacked_bytes < RESULT_WINDOW_BYTES:
            held = job.backlog.popleft()
            size = sum(held.sizes)
            job.backlog_bytes -= size
            out.append(self.send_result(job, held, size))
        if was_behind:
            out += self.dispatch(job)
        if job.finished and not job.backlog and not job.unacked:
            out += self.end_job(job, kill=False)
        return out

    def complete_or_release(self, job: Job) -> Out:
        """Free the slots of nodes with nothing left to do for a job whose inputs are all in."""
        if not job.uploaded_all or job.pending:
            return []
        busy = {chunk.node for chunk in job.inflight.values()}
        out: Out = []
        for agent_id in [a for a in job.allocations if a not in busy]:
            out += self.release(job, agent_id, kill=False)
        if out:
            out.append((job.client, protocol.Progress(job.job_id, job.slots)))
            out += self.allocate_queued()
        return out

    # --- time -----------------------------------------------------------------------------------

    def expire(self, now: float, client_seen: dict[bytes, float]) -> Out:
        """Declare silent agents dead and cancel the attached jobs of silent clients."""
        out: Out = []
        for node in list(self.nodes.values()):
            if now - node.last_seen > PEER_TIMEOUT_SECONDS:
                out += self.lose_node(node.agent_id, f"silent for {now - node.last_seen:.1f}s")
        for job in list(self.jobs.values()):
            seen = client_seen.get(job.client, job.client_seen)
            if not job.detach and now - seen > PEER_TIMEOUT_SECONDS:
                out += self.cancel(job.job_id, None, "the client went silent")
        return out

    def jobs_of(self, client: bytes) -> Iterator[Job]:
        return (job for job in self.jobs.values() if job.client == client)


def _trim(msg: protocol.Results, skip: int) -> protocol.Results:
    """`msg` without its first `skip` results (already delivered by an earlier attempt)."""
    if skip == 0:
        return msg
    data = msg.data.buffer if hasattr(msg.data, "buffer") else memoryview(msg.data)
    first = msg.first_index + skip
    return protocol.Results(
        msg.job_id, msg.chunk_id, msg.attempt, first, msg.count - skip,
        [i for i in msg.errors if i >= first], msg.sizes[skip:], msg.chunk_done, msg.seq,
        data[sum(msg.sizes[:skip]):],
    )

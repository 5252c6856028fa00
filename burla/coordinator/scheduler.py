"""The coordinator's decisions as synchronous state: events in, messages out.

Every handler takes a decoded message (and the time, passed in) and returns `(peer, message)`
pairs for the service to send. It allocates slots, dispatches chunks only against agent credit,
relays results exactly once per index, paces upload and results, and keeps detached jobs in the
job store. No sockets, no clock, no unpickling of user data.

A handler that writes to the store writes first: a write that fails (`StoreError`, a full disk)
has changed nothing, and the handler then refuses the job, or fails it and frees its slots, with
the store's words, instead of leaving it half changed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import structlog

from burla import protocol
from burla.config import PEER_TIMEOUT_SECONDS
from burla.coordinator import ended, placement
from burla.coordinator.delivery import ResultStream
from burla.coordinator.detached import DetachedJobs, Out, cannot_detach
from burla.coordinator.functions import FunctionCache, nbytes
from burla.coordinator.growing import CouldGrow, GrowingJobs
from burla.coordinator.jobstore import JobStore
from burla.coordinator.state import ChunkState, Job, Node, Request
from burla.coordinator.storefile import StoreError

log = structlog.get_logger("burla.coordinator")

# Input bytes a client may have uploaded but not yet dispatched (its upload window).
UPLOAD_WINDOW_BYTES = 64 * 1024 * 1024
# Result bytes held for a slow client before dispatch of new chunks pauses.
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
# Most chunks per slot an agent may ask to hold ahead: its Hello is trusted only this far.
MAX_PREFETCH = 16


class Scheduler(DetachedJobs, GrowingJobs):
    """Nodes, jobs and slots; detached jobs' own handling is the `DetachedJobs` mixin's, and
    grow=True jobs' the `GrowingJobs` mixin's. `could_grow` is growth's pure answer to whether
    it could boot a node for a shape (None: no provider, grow=True boots nothing)."""

    def __init__(self, secret: bytes, store: JobStore | None = None,
                 could_grow: CouldGrow | None = None) -> None:
        self.secret = secret
        self.could_grow = could_grow
        self.draining: set[str] = set()  # nodes growth is deleting: no new work goes there
        self.store = store or JobStore(":memory:")
        self.nodes: dict[str, Node] = {}
        self.peers: dict[bytes, str] = {}  # agent routing id -> agent_id
        self.jobs: dict[str, Job] = {}
        self.functions = FunctionCache()
        self.queued: list[str] = []  # jobs waiting for slots, oldest first
        # Attempts of this coordinator run start here, so a late result sent to an earlier
        # run (whose chunk ids and attempts started over) never matches one of ours.
        self.epoch = secrets.randbelow(1 << 30) + 1

    # --- nodes --------------------------------------------------------------------------------

    def add_node(self, peer: bytes, hello: protocol.Hello, now: float) -> Out:
        info = hello.info
        out: Out = []
        if info["agent_id"] in self.nodes:
            out += self.lose_node(info["agent_id"], "re-registered with a new session")
        self.nodes[info["agent_id"]] = Node(
            info["agent_id"], peer, hello.session, int(info["cpus"]), int(info["ram_gb"]),
            list(info.get("gpus", [])), str(info.get("image", "")),
            str(info["python_version"]), now,
            prefetch=max(0, min(int(info.get("prefetch", 0)), MAX_PREFETCH)),
        )
        self.peers[peer] = info["agent_id"]
        log.info("node_added", agent=info["agent_id"], cpus=info["cpus"])
        return out + self.allocate_queued() + self.allocate_joined()

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
            job.ready.pop(agent_id, None)
            job.running.pop(agent_id, None)
            if job.pending:
                out += self.allocate(job)
        return out + self.dispatch_all()

    def node_by_peer(self, peer: bytes) -> Node | None:
        agent_id = self.peers.get(peer)
        return self.nodes.get(agent_id) if agent_id is not None else None

    # --- jobs ---------------------------------------------------------------------------------

    def live_functions(self, agent_id: str | None = None) -> set[str]:
        """Function hashes of the jobs on the cluster (of those with slots on `agent_id`)."""
        return {j.function_hash for j in self.jobs.values()
                if agent_id is None or agent_id in j.allocations}

    def job_token(self, job_id: str) -> str:
        return hmac.new(self.secret, job_id.encode(), hashlib.sha256).hexdigest()

    def owner_of_job_token(self, token: str) -> str | None:
        for job in self.jobs.values():
            if hmac.compare_digest(job.token.encode(), token.encode()):
                return job.owner
        return None

    def submit(self, peer: bytes, owner: str, msg: protocol.Submit, now: float) -> Out:
        job = self.jobs.get(msg.job_id)
        if job is not None:  # a retried submit, or a client back after a lost connection
            return self.reattach(job, peer, owner, now)
        if msg.function:
            self.functions.put(msg.function_hash, msg.function)
        elif msg.function_hash not in self.functions:
            return [(peer, protocol.NeedFunction(msg.job_id))]
        self.functions.touch(msg.function_hash, self.live_functions)
        request = Request(msg.func_cpu, msg.func_ram, msg.func_gpu, msg.image, msg.python_version)
        refusal = self.refusal(msg, request, now)
        if refusal is not None:
            return [(peer, refusal)]
        job = Job(
            msg.job_id, owner, msg.function_hash, msg.function_name, request,
            msg.max_parallelism, msg.detach, msg.parent_job, self.job_token(msg.job_id), now, now,
            ResultStream(msg.job_id, peer), announced=msg.n_inputs, grow=msg.grow,
        )
        if job.detach:
            try:
                self.store.add_job(job.job_id, owner, job.function_hash,
                                   self.functions[job.function_hash], job.function_name,
                                   vars(request), job.max_parallelism, job.parent_job)
            except StoreError as exc:
                log.error("job_store_write_failed", job=job.job_id, error=str(exc))
                return [(peer, protocol.Refuse("storage", cannot_detach(job.job_id, exc),
                                               job.job_id))]
        self.jobs[job.job_id] = job
        out = self.allocate(job, report=False)  # the Accept below carries the slots
        log.info("job_submitted", job=job.job_id, owner=owner, slots=job.slots,
                 function=msg.function_name, detach=job.detach)
        return [(peer, protocol.Accept(job.job_id, job.slots, UPLOAD_WINDOW_BYTES, -1))] + out

    def reattach(self, job: Job, peer: bytes, owner: str, now: float) -> Out:
        if job.owner != owner:
            return [(peer, protocol.Refuse("unauthorized", "that job belongs to another owner",
                                           job.job_id))]
        job.client_seen = now
        total = job.total if job.total is not None and job.inputs_done else -1
        out: Out = [(peer, protocol.Accept(job.job_id, job.slots, UPLOAD_WINDOW_BYTES, total))]
        if job.client and job.client != peer:  # the one following it until now stops
            out.insert(0, (job.client, ended.taken_over(job.job_id)))
        if job.detach and job.inputs_done:
            out.append((peer, protocol.Stored(job.job_id, job.total or 0)))
        replay = self.replay(job) if job.detach else None
        out += job.stream.reattach(peer, replay)
        return out + self.ack_settled(job)

    def allocate(self, job: Job, *, report: bool = True, limit: int | None = None) -> Out:
        """Give `job` free slots up to its cap (and `limit` more); nested jobs borrow one slot
        when none are free. `report`: tell its client the new slot count with a Progress."""
        cap = job.max_parallelism or 1 << 30
        wanted = cap - job.slots if limit is None else min(cap - job.slots, limit)
        out: Out = []
        if wanted <= 0 or job.finished:
            return out
        nodes = placement.eligible(job.request, self.nodes.values(), self.draining)
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
        if out and job.client and report:
            out.append((job.client, protocol.Progress(job.job_id, job.slots, job.growth_status)))
        return out + self.dispatch(job)

    def assign(self, job: Job, node: Node, slots: int) -> Out:
        request = job.request
        node.used_cpus += slots * request.func_cpu
        node.used_ram_gb += slots * request.func_ram
        node.used_gpus += slots if request.func_gpu else 0
        job.allocations[node.agent_id] = job.allocations.get(node.agent_id, 0) + slots
        # Each new slot can take one chunk at once plus the agent's prefetch (from its Hello):
        # the chunks follow the Assign at once, with no Credit round trip to the agent.
        job.credits[node.agent_id] = job.credits.get(node.agent_id, 0) + slots * (1 + node.prefetch)
        job.ready[node.agent_id] = None
        function = b""
        if job.function_hash not in node.functions:
            function = self.functions[job.function_hash]
            node.functions.add(job.function_hash, nbytes(function))
        # Forgotten before the new bytes arrive, so the agent does not hold both at once.
        forgotten = node.functions.touch(job.function_hash,
                                         lambda: self.live_functions(node.agent_id))
        out: Out = [(node.peer, protocol.Forget(old)) for old in forgotten]
        env = {"BURLA_API_KEY": job.token, "BURLA_PARENT_JOB": job.job_id}
        return out + [(node.peer, protocol.Assign(
            job.job_id, job.function_hash, slots, request.func_cpu, request.func_ram,
            request.func_gpu, job.owner, env, function))]

    def release(self, job: Job, agent_id: str, *, kill: bool) -> Out:
        slots = job.allocations.pop(agent_id, 0)
        job.credits.pop(agent_id, None)
        job.ready.pop(agent_id, None)
        job.running.pop(agent_id, None)
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

    def end_job(self, job: Job, *, kill: bool, canceled: str = "") -> Out:
        """Forget the job and free its slots: collected, or `canceled` for that reason."""
        out: Out = []
        for agent_id in list(job.allocations):
            out += self.release(job, agent_id, kill=kill)
        self.jobs.pop(job.job_id, None)
        if job.job_id in self.queued:
            self.queued.remove(job.job_id)
        if job.detach:  # a later attach is told how it ended
            outcome = "canceled" if canceled else "collected"
            self.store.end_job(job.job_id, job.owner, outcome, canceled)
        return out + self.allocate_queued()

    def cancel(self, job_id: str, owner: str | None, why: str) -> Out:
        job = self.jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            return []
        log.info("job_canceled", job=job_id, why=why)
        out: Out = [(job.client, protocol.JobFailed(job_id, "canceled", why))] if job.client else []
        return out + self.end_job(job, kill=True, canceled=why)

    # --- uploads ------------------------------------------------------------------------------

    def add_inputs(self, job: Job, msg: protocol.InputChunk) -> Out:
        if msg.first_index in job.seen_chunks:  # sent again after a reconnect: we have it
            size = ChunkState(0, 0, 0, msg.data).nbytes
            return [(job.client, protocol.UploadCredit(job.job_id, size))]
        chunk = ChunkState(job.next_chunk_id, msg.first_index, msg.count, msg.data,
                           attempt=self.epoch)
        if job.detach:  # durable before acknowledged; memory holds only what is in flight
            try:
                self.store.add_chunk(job.job_id, chunk.chunk_id, chunk.first_index, chunk.count,
                                     chunk.data)
            except StoreError as exc:
                return self.store_failed(job, exc)
        job.next_chunk_id += 1
        job.seen_chunks.add(msg.first_index)
        job.uploaded += msg.count
        out: Out = []
        if job.detach:
            out.append((job.client, protocol.UploadCredit(job.job_id, chunk.nbytes)))
            chunk.data = None
            chunk.credited = True
        job.pending.append(chunk)
        return out + (self.allocate(job) if job.slots == 0 else self.dispatch(job))

    def inputs_done(self, job: Job, msg: protocol.InputsDone) -> Out:
        if job.detach:
            try:
                self.store.inputs_done(job.job_id, msg.total)
            except StoreError as exc:
                return self.store_failed(job, exc)
        job.total = msg.total
        job.inputs_done = True
        out: Out = []
        if job.detach:
            out.append((job.client, protocol.Stored(job.job_id, msg.total)))
        return out + self.complete_or_release(job)

    # --- dispatch and results -------------------------------------------------------------------

    def credit(self, node: Node, msg: protocol.Credit) -> Out:
        job = self.jobs.get(msg.job_id)
        if job is None or node.agent_id not in job.allocations:
            return []
        job.credits[node.agent_id] += msg.chunks
        if job.credits[node.agent_id] > 0:
            job.ready[node.agent_id] = None
        return self.dispatch(job)

    def dispatch(self, job: Job) -> Out:
        """Send pending chunks against credit, one per agent in turn (work spreads before any
        agent's prefetch fills); costs O(chunks sent), not O(agents)."""
        out: Out = []
        if job.stream.backlog_bytes >= MAX_BACKLOG_BYTES:
            return out  # the client is behind; let it catch up before more work runs
        held: list[str] = []  # agents that keep their credit while nodes boot for the job
        while job.pending and job.ready:
            agent_id = next(iter(job.ready))
            del job.ready[agent_id]
            if job.awaiting_nodes and job.running.get(agent_id, 0) >= job.allocations[agent_id]:
                held.append(agent_id)  # no prefetch: the nodes booting for it get that work
                continue
            job.credits[agent_id] -= 1
            if job.credits[agent_id] > 0:
                job.ready[agent_id] = None  # back of the line
            chunk = job.pending.popleft()
            chunk.node = agent_id
            job.inflight[chunk.chunk_id] = chunk
            job.running[agent_id] = job.running.get(agent_id, 0) + 1
            data = chunk.data
            if data is None:
                data = self.store.chunk_data(job.job_id, chunk.chunk_id)
            elif not chunk.credited:  # paid back once, on its first dispatch
                chunk.credited = True
                if not job.uploads_over:  # the client needs window only for more inputs
                    out.append((job.client, protocol.UploadCredit(job.job_id, chunk.nbytes)))
            out.append((self.nodes[agent_id].peer, protocol.Chunk(
                job.job_id, chunk.chunk_id, chunk.attempt, chunk.first_index, chunk.count,
                chunk.reported, False, data)))
        job.ready.update(dict.fromkeys(held))
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
            # Sent whole even when it overlaps an earlier attempt's: the client's ledger drops
            # indexes it holds, so the coordinator never unpickles or splits user data.
            if job.detach:
                try:
                    self.store.add_results(job.job_id, msg.first_index, msg.count, msg.errors,
                                           msg.data)
                except StoreError as exc:
                    return self.store_failed(job, exc)
            out += job.stream.deliver(msg)
            chunk.reported += fresh
            job.done += fresh
        if msg.chunk_done and msg.first_index + msg.count == chunk.first_index + chunk.count:
            del job.inflight[chunk.chunk_id]
            if job.detach:  # if this fails, its stored results say it ran (`store.jobs`)
                try:
                    self.store.delete_chunk(job.job_id, chunk.chunk_id)
                except StoreError as exc:
                    log.warning("job_store_write_failed", job=job.job_id, error=str(exc))
            agent_id = node.agent_id
            job.running[agent_id] = job.running.get(agent_id, 1) - 1
            if agent_id in job.credits:
                job.credits[agent_id] += 1
                job.ready[agent_id] = None
            out += self.dispatch(job)
            if job.inputs_done and not job.pending and not job.running.get(agent_id):
                out += self.release_idle(job, [agent_id])
        return out + self.ack_settled(job)

    def ack(self, job: Job, msg: protocol.Ack) -> Out:
        was_behind = job.stream.backlog_bytes >= MAX_BACKLOG_BYTES
        out = job.stream.ack(msg.seq)
        if was_behind:
            out += self.dispatch(job)
        return out + self.ack_settled(job)

    def ack_settled(self, job: Job) -> Out:
        """A finished job whose client holds every result is over: forget it."""
        if job.finished and job.client and job.stream.settled and job.job_id in self.jobs:
            return self.end_job(job, kill=False)
        return []

    def complete_or_release(self, job: Job) -> Out:
        """Free the slots of nodes with nothing left to do for a job whose inputs are all in."""
        if not job.inputs_done or job.pending:
            return []
        return self.release_idle(job, [a for a in job.allocations if not job.running.get(a)])

    def release_idle(self, job: Job, agent_ids: list[str]) -> Out:
        out: Out = []
        for agent_id in agent_ids:
            if agent_id in job.allocations:
                out += self.release(job, agent_id, kill=False)
        if out:
            if job.client and not job.finished:  # a finished job's last results say enough
                out.append((job.client, protocol.Progress(job.job_id, job.slots,
                                                          job.growth_status)))
            out += self.allocate_queued()
        return out

    # --- time -----------------------------------------------------------------------------------

    def expire(self, now: float, client_seen: dict[bytes, float]) -> Out:
        """Declare silent agents dead; cancel attached jobs of silent clients."""
        out = self.expire_detached(now)
        for node in list(self.nodes.values()):
            if now - node.last_seen > PEER_TIMEOUT_SECONDS:
                out += self.lose_node(node.agent_id, f"silent for {now - node.last_seen:.1f}s")
        for job in list(self.jobs.values()):
            if not job.client:
                continue
            seen = max(client_seen.get(job.client, 0.0), job.client_seen)
            if now - seen <= PEER_TIMEOUT_SECONDS:
                continue
            if job.detach and job.inputs_done:
                log.info("client_left_detached_job", job=job.job_id)
                job.stream.detach()
            else:
                out += self.cancel(job.job_id, None, "the client went silent")
        return out

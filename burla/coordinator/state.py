"""The coordinator's records of nodes, jobs and chunks: plain data, no behaviour, no I/O."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from burla.coordinator.delivery import ResultStream
from burla.coordinator.functions import SizedLru, agent_functions
from burla.coordinator.jobstore import StoredJob


@dataclass
class Node:
    """One registered agent and the share of it that jobs hold."""

    agent_id: str
    peer: bytes
    session: str
    cpus: int
    ram_gb: int
    gpus: list[str]
    image: str
    python_version: str
    last_seen: float
    used_cpus: int = 0
    used_ram_gb: int = 0
    used_gpus: int = 0
    # The function hashes this agent holds, as the coordinator told it to keep them.
    functions: SizedLru = field(default_factory=agent_functions)
    prefetch: int = 0  # chunks per slot the agent takes ahead of the running one (its Hello)

    def describe(self) -> str:
        gpus = f", {len(self.gpus)}x {self.gpus[0]}" if self.gpus else ""
        image = f", image {self.image}" if self.image else ""
        return (f"{self.agent_id} ({self.cpus} CPUs, {self.ram_gb} GB{gpus}{image}, "
                f"Python {self.python_version})")


@dataclass
class Request:
    """What each call of a job needs from a node."""

    func_cpu: int
    func_ram: int  # GB, 0 = dynamic
    func_gpu: str | None
    image: str | None
    python_version: str

    def slots_on(self, node: Node, *, free_only: bool) -> int:
        cpus = node.cpus - (node.used_cpus if free_only else 0)
        slots = cpus // self.func_cpu
        if self.func_ram:
            ram = node.ram_gb - (node.used_ram_gb if free_only else 0)
            slots = min(slots, ram // self.func_ram)
        if self.func_gpu:
            gpus = node.gpus.count(self.func_gpu) - (node.used_gpus if free_only else 0)
            slots = min(slots, gpus)
        return max(0, slots)


@dataclass
class ChunkState:
    """Consecutive inputs that travel and retry together."""

    chunk_id: int
    first_index: int
    count: int
    data: Any  # the pickled inputs as received (bytes or zmq.Frame); None when in the store
    attempt: int = 0
    reported: int = 0  # leading inputs whose results have been accepted
    node: str = ""  # agent running it, "" while queued
    credited: bool = False  # its bytes went back to the client's upload window

    nbytes: int = 0

    def __post_init__(self) -> None:
        if self.data is not None and not self.nbytes:
            buffer = self.data.buffer if hasattr(self.data, "buffer") else self.data
            self.nbytes = len(buffer)


@dataclass
class Job:
    job_id: str
    owner: str
    function_hash: str
    function_name: str
    request: Request
    max_parallelism: int | None
    detach: bool
    parent_job: str | None
    token: str  # lets calls of this job submit nested jobs as the same owner
    submitted_at: float
    client_seen: float
    stream: ResultStream
    total: int | None = None  # known once every input is uploaded
    inputs_done: bool = False  # the client said no more chunks will come
    uploaded: int = 0
    announced: int = -1  # the input count its Submit gave (-1: an iterator of unknown length)
    done: int = 0
    next_chunk_id: int = 0
    seen_chunks: set[int] = field(default_factory=set)  # first indexes received
    pending: deque[ChunkState] = field(default_factory=deque)
    inflight: dict[int, ChunkState] = field(default_factory=dict)
    allocations: dict[str, int] = field(default_factory=dict)  # agent_id -> slots
    credits: dict[str, int] = field(default_factory=dict)  # agent_id -> chunks it can take
    ready: dict[str, None] = field(default_factory=dict)  # agents with credit, round-robin order
    running: dict[str, int] = field(default_factory=dict)  # agent_id -> chunks in flight there
    duplicates: int = 0
    grow: bool = False  # growth may boot nodes for it (its Submit's grow=True)
    growth_status: str = ""  # what growth last said of it, as its client was told
    # Nodes are booting for it: its agents get no chunks ahead (prefetch), so that the work
    # left is there for those nodes when they join.
    awaiting_nodes: bool = False

    @property
    def client(self) -> bytes:
        """The connected client's routing id, b"" while none is connected."""
        return self.stream.client

    @property
    def slots(self) -> int:
        return sum(self.allocations.values())

    @classmethod
    def restored(cls, stored: StoredJob, token: str, attempt: int, now: float) -> Job:
        """A detached job as a previous coordinator left it in the store: its unfinished
        chunks pending (their data stays in the store), as attempt `attempt`."""
        job = cls(
            stored.job_id, stored.owner, stored.function_hash, stored.function_name,
            Request(**stored.request), stored.max_parallelism, True, stored.parent_job,
            token, now, now, ResultStream(stored.job_id, b""),
            total=stored.total, inputs_done=stored.inputs_done, done=stored.done,
        )
        for chunk_id, first, count, reported in stored.chunks:
            job.pending.append(ChunkState(chunk_id, first, count, None, attempt=attempt,
                                          reported=reported, credited=True))
            job.seen_chunks.add(first)
            job.next_chunk_id = max(job.next_chunk_id, chunk_id + 1)
        job.uploaded = job.total or 0
        return job

    @property
    def uploads_over(self) -> bool:
        """The client has sent every input (it needs no more upload window)."""
        return self.inputs_done or self.uploaded == self.announced

    @property
    def finished(self) -> bool:
        """Every input is in and every chunk has run to its end."""
        return self.inputs_done and not self.pending and not self.inflight

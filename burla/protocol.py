"""Every message burla's roles exchange. No role builds frames by hand: `encode` and `decode`
(from `burla.frames`, re-exported here) turn these messages into frames and back. This module
must not import any role.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from burla.frames import Blob, Message, message
from burla.frames import ProtocolError as ProtocolError
from burla.frames import decode as decode
from burla.frames import encode as encode
from burla.frames import message_types as message_types

# Bumped on any incompatible change to a message; travels in every Hello.
PROTOCOL_VERSION = 6


# --- handshake and control, all roles -------------------------------------------------------


@message("hello")
@dataclasses.dataclass(frozen=True, slots=True)
class Hello(Message):
    """First message on every connection. `role` is client, agent or executor."""

    role: str
    protocol_version: int
    burla_version: str
    token: str
    session: str
    info: dict[str, Any]


@message("welcome")
@dataclasses.dataclass(frozen=True, slots=True)
class Welcome(Message):
    """The coordinator (or agent) accepted a Hello; `info` describes the answering side."""

    session: str
    protocol_version: int
    burla_version: str
    info: dict[str, Any]


@message("refuse")
@dataclasses.dataclass(frozen=True, slots=True)
class Refuse(Message):
    """A typed refusal. `kind` names the burla error the client raises (see client.errors)."""

    kind: str
    message: str
    job_id: str


@message("ping")
@dataclasses.dataclass(frozen=True, slots=True)
class Ping(Message):
    """Heartbeat; any message counts, this one is sent only on an otherwise idle link."""


@message("shutdown")
@dataclasses.dataclass(frozen=True, slots=True)
class Shutdown(Message):
    """Stop cleanly: coordinator to agents, agent to executors, CLI to a daemon."""

    reason: str


@message("status_request")
@dataclasses.dataclass(frozen=True, slots=True)
class StatusRequest(Message):
    """Ask the coordinator for nodes, slots and jobs (the CLI's `burla status`)."""


@message("status_reply")
@dataclasses.dataclass(frozen=True, slots=True)
class StatusReply(Message):
    info: dict[str, Any]


# --- client <-> coordinator -------------------------------------------------------------------


@message("submit")
@dataclasses.dataclass(frozen=True, slots=True)
class Submit(Message):
    """Start a job. `function` is empty when the client believes the coordinator has the hash.

    `func_ram` is GB per call, 0 meaning "dynamic". `n_inputs` is -1 when unknown.
    """

    job_id: str
    function_hash: str
    function_name: str
    func_cpu: int
    func_ram: int
    func_gpu: str | None
    image: str | None
    max_parallelism: int | None
    grow: bool
    detach: bool
    n_inputs: int
    python_version: str
    parent_job: str | None
    function: Blob


@message("need_function")
@dataclasses.dataclass(frozen=True, slots=True)
class NeedFunction(Message):
    """The coordinator lacks the submitted function hash: resend Submit with the bytes."""

    job_id: str


@message("accept")
@dataclasses.dataclass(frozen=True, slots=True)
class Accept(Message):
    """Job accepted with `parallelism` slots granted; `upload_window` bytes may be sent now.

    `total` is the input count when the coordinator knows it (an attach), else -1.
    """

    job_id: str
    parallelism: int
    upload_window: int
    total: int


@message("input_chunk")
@dataclasses.dataclass(frozen=True, slots=True)
class InputChunk(Message):
    """Inputs `first_index .. first_index+count-1`, as one pickled list."""

    job_id: str
    first_index: int
    count: int
    data: Blob


@message("inputs_done")
@dataclasses.dataclass(frozen=True, slots=True)
class InputsDone(Message):
    """Every input has been sent; `total` is the job's input count."""

    job_id: str
    total: int


@message("upload_credit")
@dataclasses.dataclass(frozen=True, slots=True)
class UploadCredit(Message):
    """The coordinator frees `nbytes` more of the client's upload window."""

    job_id: str
    nbytes: int


@message("results")
@dataclasses.dataclass(frozen=True, slots=True)
class Results(Message):
    """Results for inputs `first_index .. first_index+count-1`, consecutive and in order.

    `data` is one pickle of the list of `count` values; `errors` lists the absolute indexes
    whose value is an exception. `chunk_done` means the chunk is finished and its credit
    returns. `seq` numbers the batches sent to a client, for Ack. `compute_ns` is the time the
    executor spent on these inputs, so the client can size chunks by work.
    """

    job_id: str
    chunk_id: int
    attempt: int
    first_index: int
    count: int
    errors: list[int]
    chunk_done: bool
    seq: int
    compute_ns: int
    data: Blob


@message("logs")
@dataclasses.dataclass(frozen=True, slots=True)
class Logs(Message):
    """Captured output: `data` is the msgpack of `count` entries [input index, stream (1 or 2),
    text], packed once by the executor and read only by the client (and the job store)."""

    job_id: str
    count: int
    dropped: int
    data: Blob

    @staticmethod
    def pack(job_id: str, entries: list[list[Any]], dropped: int) -> Logs:
        return Logs(job_id, len(entries), dropped, msgpack.packb(entries))

    def entries(self) -> list[list[Any]]:
        """The entries, or one line saying why they could not be read."""
        raw = self.data.bytes if hasattr(self.data, "bytes") else self.data
        try:
            entries = msgpack.unpackb(raw, raw=False, use_list=True)
            if isinstance(entries, list) and all(
                isinstance(e, list) and len(e) == 3 and isinstance(e[2], str) for e in entries
            ):
                return entries
        except Exception:  # msgpack raises several unrelated types on garbage
            pass
        return [[-1, 2, f"[burla] {self.count} output entries arrived unreadable\n"]]


@message("ack")
@dataclasses.dataclass(frozen=True, slots=True)
class Ack(Message):
    """The client holds every Results batch up to and including `seq`."""

    job_id: str
    seq: int


@message("attach")
@dataclasses.dataclass(frozen=True, slots=True)
class Attach(Message):
    """Collect a (detached) job from this connection: its stored results, then live ones."""

    job_id: str


@message("stored")
@dataclasses.dataclass(frozen=True, slots=True)
class Stored(Message):
    """Every input of a detached job is in the coordinator's store; the client may leave."""

    job_id: str
    total: int


@message("job_logs_request")
@dataclasses.dataclass(frozen=True, slots=True)
class JobLogsRequest(Message):
    """Ask for the stored output lines of a detached job (answered with StatusReply)."""

    job_id: str


@message("cancel")
@dataclasses.dataclass(frozen=True, slots=True)
class Cancel(Message):
    job_id: str
    reason: str


@message("progress")
@dataclasses.dataclass(frozen=True, slots=True)
class Progress(Message):
    """Calls of the job running right now, and what growth is doing for it (for the spinner):
    `status` is e.g. "booting 3× n2-standard-8: us-central1-a exhausted, trying us-central1-b",
    or "" when there is nothing to say."""

    job_id: str
    running: int
    status: str


@message("job_failed")
@dataclasses.dataclass(frozen=True, slots=True)
class JobFailed(Message):
    """The job ended without all results; `kind` names the burla error to raise."""

    job_id: str
    kind: str
    message: str


# --- coordinator <-> agent --------------------------------------------------------------------


@message("assign")
@dataclasses.dataclass(frozen=True, slots=True)
class Assign(Message):
    """Run `slots` executors for a job on this agent; `function` empty if the agent has it."""

    job_id: str
    function_hash: str
    slots: int
    func_cpu: int
    func_ram: int
    func_gpu: str | None
    owner: str
    env: dict[str, str]
    function: Blob


@message("credit")
@dataclasses.dataclass(frozen=True, slots=True)
class Credit(Message):
    """The agent can take `chunks` more chunks of the job."""

    job_id: str
    chunks: int


@message("chunk")
@dataclasses.dataclass(frozen=True, slots=True)
class Chunk(Message):
    """Run inputs `first_index .. first_index+count-1`, skipping the first `skip` (a retry).

    `report_each` (the retry of a chunk whose executor died): send each input's result alone
    and wait for `ResultsNoted` before the next input, so a crash is blamed on the input running.
    """

    job_id: str
    chunk_id: int
    attempt: int
    first_index: int
    count: int
    skip: int
    report_each: bool
    data: Blob


@message("forget")
@dataclasses.dataclass(frozen=True, slots=True)
class Forget(Message):
    """Drop the pickled function `function_hash` (the agent's share of them is full); an Assign
    that needs it again carries its bytes."""

    function_hash: str


@message("release")
@dataclasses.dataclass(frozen=True, slots=True)
class Release(Message):
    """The job is over on this agent; `kill` stops its running calls (cancel). The agent sends
    it on (never with `kill`) to each executor that ran the job, once it is idle."""

    job_id: str
    kill: bool


# --- agent <-> executor -----------------------------------------------------------------------


@message("results_noted")
@dataclasses.dataclass(frozen=True, slots=True)
class ResultsNoted(Message):
    """The agent holds the first `reported` results of chunk `chunk_id` (a `report_each` chunk:
    its executor starts the next input only then)."""

    chunk_id: int
    reported: int


@message("load")
@dataclasses.dataclass(frozen=True, slots=True)
class Load(Message):
    """Executor: run chunks of `job_id` with this function (and environment) from now on."""

    job_id: str
    function_hash: str
    env: dict[str, str]
    function: Blob


@message("retire")
@dataclasses.dataclass(frozen=True, slots=True)
class Retire(Message):
    """Executor -> agent, when a job ended there: it changed what the next job relies on, or
    left processes that would not die (`reason` says what). The executor runs no more chunks;
    the agent gives back any it was sent and replaces it with a fresh fork."""

    reason: str

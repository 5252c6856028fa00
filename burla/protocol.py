"""Every message burla's roles exchange, and the one encode/decode of their frames.

No role builds frames by hand. A message is a frozen dataclass; its header fields travel as one
msgpack frame `[op, field, field, ...]`, and its blob fields (user data: pickled functions,
input chunks, results) travel as their own frames, untouched, so relays never copy or unpickle
them. This module must not import any role.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, Union

import msgpack

# Bumped on any incompatible change to a message; travels in every Hello.
PROTOCOL_VERSION = 4

# A blob travels as its own frame: bytes when built locally, a zmq.Frame/memoryview when relayed.
Blob = Union[bytes, memoryview, Any]

_MESSAGES: dict[str, type[Message]] = {}
_NONE = type(None)


class ProtocolError(Exception):
    """A frame list that is not a valid message: unknown op, wrong arity, or wrong field type."""


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    op: ClassVar[str] = ""
    # (header field names, their allowed python types, blob field names); filled by @message.
    _header: ClassVar[tuple[str, ...]] = ()
    _types: ClassVar[tuple[tuple[type, ...], ...]] = ()
    _blobs: ClassVar[tuple[str, ...]] = ()


M = TypeVar("M", bound=type[Message])


def _allowed_types(annotation: str) -> tuple[type, ...]:
    """Python types msgpack yields for a field annotated as `annotation`."""
    allowed: list[type] = []
    for part in annotation.replace(" ", "").split("|"):
        base = part.split("[", 1)[0]
        allowed.extend(
            {
                "int": (int,),
                "float": (int, float),
                "str": (str,),
                "bool": (bool,),
                "None": (_NONE,),
                "list": (list,),
                "dict": (dict,),
            }[base]
        )
    return tuple(allowed)


def message(op: str) -> Callable[[M], M]:
    """Register a message dataclass under `op`; fields annotated `Blob` travel as own frames."""

    def register(cls: M) -> M:
        header, types, blobs = [], [], []
        for field in dataclasses.fields(cls):
            annotation = str(field.type)
            if annotation == "Blob":
                blobs.append(field.name)
            else:
                header.append(field.name)
                types.append(_allowed_types(annotation))
        cls.op = op
        cls._header = tuple(header)
        cls._types = tuple(types)
        cls._blobs = tuple(blobs)
        if op in _MESSAGES:
            raise RuntimeError(f"duplicate message op {op!r}")
        _MESSAGES[op] = cls
        return cls

    return register


def encode(msg: Message) -> list[Any]:
    """Frames for `msg`: one msgpack header, then one frame per blob field."""
    header = [msg.op]
    header.extend(getattr(msg, name) for name in msg._header)
    frames: list[Any] = [msgpack.packb(header, use_bin_type=True)]
    frames.extend(getattr(msg, name) for name in msg._blobs)
    return frames


def decode(frames: list[Any]) -> Message:
    """The message carried by `frames` (header first); raises ProtocolError when malformed."""
    if not frames:
        raise ProtocolError("empty message")
    first = frames[0]
    raw = first.bytes if hasattr(first, "bytes") else first
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"header is not msgpack: {exc}") from None
    if not isinstance(header, list) or not header or not isinstance(header[0], str):
        raise ProtocolError("header is not [op, ...]")
    cls = _MESSAGES.get(header[0])
    if cls is None:
        raise ProtocolError(f"unknown op {header[0]!r}")
    values = header[1:]
    blobs = frames[1:]
    if len(values) != len(cls._header) or len(blobs) != len(cls._blobs):
        raise ProtocolError(
            f"{cls.op}: expected {len(cls._header)} fields and {len(cls._blobs)} blobs, "
            f"got {len(values)} and {len(blobs)}"
        )
    for name, value, allowed in zip(cls._header, values, cls._types):
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ProtocolError(f"{cls.op}.{name}: {type(value).__name__} is not allowed")
    return cls(*values, *blobs)


def message_types() -> dict[str, type[Message]]:
    """Every registered message class by op (for tests and dispatch tables)."""
    return dict(_MESSAGES)


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
    """Calls of the job running right now (for the spinner)."""

    job_id: str
    running: int


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
    """Run inputs `first_index .. first_index+count-1`, skipping the first `skip` (a retry)."""

    job_id: str
    chunk_id: int
    attempt: int
    first_index: int
    count: int
    skip: int
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
    """The job is over on this agent; `kill` stops its running calls (cancel)."""

    job_id: str
    kill: bool


# --- agent <-> executor -----------------------------------------------------------------------


@message("load")
@dataclasses.dataclass(frozen=True, slots=True)
class Load(Message):
    """Executor: run chunks of `job_id` with this function (and environment) from now on."""

    job_id: str
    function_hash: str
    env: dict[str, str]
    function: Blob

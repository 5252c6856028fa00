"""How a message travels: one msgpack header frame, then each blob as its own frame.

A message is a frozen dataclass registered with `@message(op)`; its header fields travel as one
msgpack frame `[op, field, field, ...]`, and its blob fields (user data: pickled functions,
input chunks, results) travel as their own frames, untouched, so relays never copy or unpickle
them. `decode` checks every field's type, so a malformed frame list is a ProtocolError, never a
crash. This module knows no particular message (they are in `burla.protocol`) and no role.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, Union

import msgpack

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

"""Every message survives encode/decode; malformed frames are refused with ProtocolError."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from burla import protocol

SAMPLES: dict[str, object] = {
    "str": "text", "int": 7, "bool": True, "float": 1.5, "Blob": b"\x00blob",
    "dict[str, Any]": {"k": [1, 2]}, "dict[str, str]": {"a": "b"},
    "str | None": None, "int | None": 3, "list[int]": [1, 2, 3],
    "list[list[Any]]": [[1, 1, "line\n"]],
}


def sample(cls: type[protocol.Message]) -> protocol.Message:
    values = [SAMPLES[str(field.type)] for field in dataclasses.fields(cls)]
    return cls(*values)


@pytest.mark.parametrize("op", sorted(protocol.message_types()))
def test_every_message_round_trips(op):
    msg = sample(protocol.message_types()[op])
    frames = protocol.encode(msg)
    assert len(frames) == 1 + len(msg._blobs)
    assert protocol.decode(frames) == msg


def test_blobs_travel_as_their_own_frames_untouched():
    data = bytes(range(256)) * 10
    frames = protocol.encode(protocol.InputChunk("job", 0, 3, data))
    assert frames[1] is data


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"\xc1"],
        [msgpack.packb("not a list")],
        [msgpack.packb(["no_such_op"])],
        [msgpack.packb(["ping", "extra"])],
        [msgpack.packb(["credit", "job"])],
        [msgpack.packb(["credit", "job", "3"])],
        [msgpack.packb(["credit", "job", True])],
        [msgpack.packb(["input_chunk", "job", 0, 1])],
    ],
)
def test_malformed_frames_raise_protocol_error(frames):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(frames)


def test_ops_are_unique_and_messages_frozen():
    types = protocol.message_types()
    assert len(set(types)) == len(types)
    msg = protocol.Credit("job", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.chunks = 2  # type: ignore[misc]


def test_logs_carry_entries_packed_once_and_garbage_reads_as_one_line() -> None:
    entries = [[3, 1, "a line\n"], [4, 2, "to stderr\n"]]
    sent = protocol.Logs.pack("job", entries, 5)
    got = protocol.decode([bytes(f) for f in protocol.encode(sent)])
    assert isinstance(got, protocol.Logs)
    assert (got.count, got.dropped, got.entries()) == (2, 5, entries)
    garbage = protocol.Logs("job", 7, 0, b"\xc1not msgpack")
    assert garbage.entries() == [[-1, 2, "[burla] 7 output entries arrived unreadable\n"]]
    wrong_shape = protocol.Logs("job", 1, 0, protocol.msgpack.packb([[1, 2]]))
    assert "unreadable" in wrong_shape.entries()[0][2]

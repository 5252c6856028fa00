"""Bad wire messages for the fuzz test: random values, and malformed, mistyped or absurd
messages of every op, built from the protocol's own field lists so they follow its changes."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from burla import protocol

Frames = list[bytes]


def weird_value(rng: random.Random, depth: int = 0) -> Any:
    """A msgpack-able value of any type: huge or negative numbers, odd floats, nested junk."""
    choices: list[Callable[[], Any]] = [
        lambda: rng.choice([0, -1, 1, 2**31, -(2**31), 2**63 - 1, -(2**63), 2**64 - 1]),
        lambda: rng.randint(-(10**6), 10**6),
        lambda: rng.choice([math.nan, math.inf, -math.inf, -0.0, 1e308]),
        lambda: rng.choice(["", "x" * rng.randint(1, 3000), "\udcff".encode(
            "utf-8", "surrogatepass").decode("latin-1"), "agent0", "hello"]),
        lambda: rng.randbytes(rng.randint(0, 64)),
        lambda: None,
        lambda: rng.choice([True, False]),
    ]
    if depth < 3:
        choices += [
            lambda: [weird_value(rng, depth + 1) for _ in range(rng.randint(0, 5))],
            lambda: {weird_value(rng, 3) if rng.random() < 0.5 else "k": weird_value(
                rng, depth + 1) for _ in range(rng.randint(0, 4))},
        ]
    return rng.choice(choices)()


def _packb(value: Any) -> bytes:
    try:
        return bytes(msgpack.packb(value, use_bin_type=True))
    except (TypeError, ValueError, OverflowError):  # unhashable keys and the like
        return bytes(msgpack.packb(repr(value), use_bin_type=True))


class Garbage:
    """Endless bad messages of every kind, from one seeded generator."""

    def __init__(self, rng: random.Random, valid: list[protocol.Message]) -> None:
        self.rng = rng
        self.valid = valid  # well-formed messages to truncate, mistype and send unasked
        self.types = list(protocol.message_types().values())
        self.kinds = [self.random_bytes, self.truncated, self.wrong_arity, self.unknown_op,
                      self.wrong_types, self.valid_op, self.not_a_list]

    def __iter__(self) -> Iterator[Frames]:
        while True:
            yield self.rng.choice(self.kinds)()

    def random_bytes(self) -> Frames:
        return [self.rng.randbytes(self.rng.randint(0, 200))
                for _ in range(self.rng.randint(1, 4))]

    def truncated(self) -> Frames:
        frames = [bytes(f) for f in protocol.encode(self.rng.choice(self.valid))]
        header = frames[0]
        frames[0] = header[: self.rng.randint(0, max(0, len(header) - 1))]
        return frames[: self.rng.randint(1, len(frames))]

    def wrong_arity(self) -> Frames:
        cls = self.rng.choice(self.types)
        arity = len(cls._header) + self.rng.choice([-3, -2, -1, 1, 2, 5])
        header = [cls.op, *(weird_value(self.rng) for _ in range(max(0, arity)))]
        blobs = [self.rng.randbytes(8) for _ in range(self.rng.randint(0, 3))]
        return [_packb(header), *blobs]

    def unknown_op(self) -> Frames:
        op = self.rng.choice(["", "HELLO", "helo", "submit ", "x" * 500, "\x00", "ack2"])
        return [_packb([op, *(weird_value(self.rng) for _ in range(self.rng.randint(0, 6)))])]

    def wrong_types(self) -> Frames:
        """The right op and arity, every field of a random type."""
        cls = self.rng.choice(self.types)
        header = [cls.op, *(weird_value(self.rng) for _ in cls._header)]
        return [_packb(header), *(self.rng.randbytes(16) for _ in cls._blobs)]

    def valid_op(self) -> Frames:
        return [bytes(f) for f in protocol.encode(self.rng.choice(self.valid))]

    def not_a_list(self) -> Frames:
        return [_packb(weird_value(self.rng)), *self.random_bytes()[:1]]


JOB = "f" * 32


def absurd(name: str, allowed: tuple[type, ...], rng: random.Random) -> Any:
    """A value of an allowed type for field `name` that makes no sense for any real job."""
    if name == "job_id":
        return rng.choice([JOB, "", "j" * 5000])
    if name == "token":
        return rng.choice(["wrong-token", "", "t\u00f6k\u00e9n"])  # non-ASCII, too
    if name == "role":
        return rng.choice(["client", "agent", "executor", "root"])
    if name == "protocol_version":
        return rng.choice([protocol.PROTOCOL_VERSION, protocol.PROTOCOL_VERSION + 7, -1])
    if type(None) in allowed and rng.random() < 0.2:
        return None
    if bool in allowed and int not in allowed:
        return rng.random() < 0.5
    if int in allowed:
        return rng.choice([-1, 0, -(2**63), 2**63 - 1, 2**62, 7])
    if str in allowed:
        return rng.choice(["", "x" * 1000, "agent0", "A100_40G", "3.11"])
    if list in allowed:
        return rng.choice([[], [-1, 2**62], [[-1, 9, "x"], ["a"], []]])
    if dict in allowed:
        return rng.choice([{}, {"agent_id": "agent0", "cpus": 2**62}, {"PATH": "/nope"}])
    return None


def make(cls: type[protocol.Message], rng: random.Random, **chosen: Any) -> protocol.Message:
    """A well-typed `cls`: the `chosen` fields as given (those it has), the rest absurd."""
    values: dict[str, Any] = {}
    for name, allowed in zip(cls._header, cls._types):
        values[name] = chosen[name] if name in chosen else absurd(name, allowed, rng)
    for name in cls._blobs:
        values[name] = chosen.get(name, rng.randbytes(rng.choice([0, 64, 4096])))
    return cls(**values)


def valid_messages(rng: random.Random, token: str) -> list[protocol.Message]:
    """Well-formed messages of every op (built from the protocol's own field list, so the
    test follows its changes), with values that make no sense for any real job."""
    messages = [make(cls, rng) for cls in protocol.message_types().values() for _ in range(3)]
    hello = protocol.Hello
    return messages + [
        make(hello, rng, role="client", protocol_version=protocol.PROTOCOL_VERSION,
             token="wrong-token"),
        make(hello, rng, role="agent", protocol_version=protocol.PROTOCOL_VERSION,
             token="wrong-token", info={"agent_id": "agent0", "cpus": 2**62}),
        make(hello, rng, role="client", protocol_version=protocol.PROTOCOL_VERSION + 7,
             token=token),
        make(hello, rng, role="client", protocol_version=protocol.PROTOCOL_VERSION,
             token="t\u00f6k\u00e9n"),
    ]

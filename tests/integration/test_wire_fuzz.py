"""Garbage on the wire: random, truncated, oversized and wrongly-typed frames, valid ops from
peers that never said Hello, absurd values from one that did, and raw bytes that are not even
ZMTP, sent to the coordinator's TCP port and to an agent's executor socket. Both daemons stay
up, serve the next real job, and neither memory nor log grows out of bounds."""

from __future__ import annotations

import contextlib
import math
import random
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pytest
import zmq

from burla import __version__, protocol, remote_parallel_map
from burla.transport import MAX_MESSAGE_BYTES

pytestmark = pytest.mark.timeout(120)

SEED = 20_240_601
# Messages per target; most carry one to three frames, so the total is well over 100,000.
COORDINATOR_MESSAGES = 60_000
AGENT_MESSAGES = 30_000
# Fuzzing DEALERs per target, each under its own random identity.
PEERS = 6
# Raw TCP connections that speak no ZMTP, and ZMTP ones that declare a frame over MAXMSGSIZE.
RAW_CONNECTIONS = 200
OVERSIZED_CONNECTIONS = 4
# Bounds after the storm (the daemons' resident memory, their log files).
MAX_RSS_GROWTH_BYTES = 50 * 2**20
# Bad frames are counted and logged sparingly (DESIGN §3), so a storm is worth a few lines.
MAX_LOG_GROWTH_BYTES = 2**20
# How long a closing fuzzer may take to hand its last queued messages over.
DELIVER_MS = 5_000
# Longest wait for a send queue to have room again before that message is skipped.
SEND_WAIT_MS = 200

Frames = list[bytes]


def triple(x):
    return x * 3 + 1


# --- garbage makers ---------------------------------------------------------------------------


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


def valid_messages(rng: random.Random, token: str) -> list[protocol.Message]:
    """Well-formed messages of every op, with values that make no sense for any real job."""
    job = "f" * 32
    blob = rng.randbytes(64)
    big = 2**62
    return [
        protocol.Hello("client", protocol.PROTOCOL_VERSION, __version__, "wrong-token", "s", {}),
        protocol.Hello("agent", protocol.PROTOCOL_VERSION, __version__, "wrong-token", "s",
                       {"agent_id": "agent0", "cpus": big}),
        protocol.Hello("client", protocol.PROTOCOL_VERSION + 7, "9.9", token, "s", {}),
        protocol.Hello("client", protocol.PROTOCOL_VERSION, __version__, "t\u00f6k\u00e9n", "s",
                       {}),
        protocol.Hello("executor", protocol.PROTOCOL_VERSION, "", "", "x1-0", {"pid": -1}),
        protocol.Welcome("s", protocol.PROTOCOL_VERSION, __version__, {}),
        protocol.Refuse("unknown_peer", "send Hello first", ""),
        protocol.Ping(),
        protocol.Shutdown("fuzz"),
        protocol.StatusRequest(),
        protocol.Submit(job, "h" * 32, "f", -1, -1, "A100", "img", -5, True, True, -7, "3.11",
                        None, blob),
        protocol.Submit(job, "h", "f", big, big, None, None, 0, False, False, big, "2.7", job,
                        b""),
        protocol.NeedFunction(job),
        protocol.Accept(job, -1, -(2**63), -2),
        protocol.InputChunk(job, -5, big, blob),
        protocol.InputsDone(job, -1),
        protocol.UploadCredit(job, -big),
        protocol.Results(job, -1, -1, -10, 3, [-1, big], [1, 2, 2**40], True, -1, blob),
        protocol.Logs(job, [[-1, 9, "x"], ["a"], []], -3),
        protocol.Ack(job, -(2**63)),
        protocol.Ack(job, 2**63 - 1),
        protocol.Cancel(job, "fuzz"),
        protocol.Progress(job, -1),
        protocol.JobFailed(job, "canceled", "fuzz"),
        protocol.Assign(job, "h", big, 0, -1, None, "root", {"PATH": "/nope"}, blob),
        protocol.Credit(job, big),
        protocol.Chunk(job, 0, 0, -1, big, -3, blob),
        protocol.Release(job, True),
        protocol.Load(job, "h", {}, blob),
    ] + [_valid_extra(cls, job) for cls in protocol.message_types().values()
         if cls.op in {"attach", "stored", "job_logs_request"}]


def _valid_extra(cls: type[protocol.Message], job: str) -> protocol.Message:
    """Messages added to the protocol since this test was written: zero/empty fields."""
    values: list[Any] = []
    for name in cls._header:
        values.append(job if name == "job_id" else -1 if name in {"total", "seq"} else "")
    try:
        return cls(*values, *(b"" for _ in cls._blobs))
    except TypeError:
        return protocol.Ping()


# --- senders ----------------------------------------------------------------------------------


def identity(rng: random.Random) -> bytes:
    """A random routing id (ZeroMQ reserves a leading zero byte), sometimes with a role's
    prefix so the daemons' prefix checks see it, never a real peer's."""
    prefix = rng.choice([b"", b"agent-", b"client-", b"x"])
    return prefix + bytes([rng.randint(1, 255)]) + rng.randbytes(rng.randint(0, 24))


def storm(ctx: zmq.Context[Any], endpoint: str, messages: int, garbage: Garbage,
          rng: random.Random) -> tuple[int, int]:
    """Send `messages` from PEERS dealers without blocking; (messages, frames) handed to ZeroMQ.

    Replies are read and thrown away as they come, never waited for.
    """
    peers = []
    for _ in range(PEERS):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, identity(rng))
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.connect(endpoint)
        peers.append(sock)
    sent = frames_sent = 0
    try:
        for count, frames in zip(range(messages), garbage):
            sock = peers[count % PEERS]
            if _send(sock, frames):
                sent += 1
                frames_sent += len(frames)
            if count % 256 == 0:
                for peer in peers:
                    _drain(peer)
        _flush(peers)
    finally:
        for sock in peers:
            sock.close(linger=DELIVER_MS)
    return sent, frames_sent


def _send(sock: zmq.Socket[Any], frames: Frames) -> bool:
    for _ in range(2):
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            _drain(sock)
            sock.poll(SEND_WAIT_MS, zmq.POLLOUT)
    return False


def _drain(sock: zmq.Socket[Any]) -> None:
    with contextlib.suppress(zmq.Again):
        for _ in range(10_000):
            sock.recv_multipart(flags=zmq.NOBLOCK)


def _flush(peers: list[zmq.Socket[Any]]) -> None:
    """Linger until each dealer's queue went out (bounded), so the daemons see every message."""
    deadline = time.monotonic() + 20
    for sock in peers:
        while time.monotonic() < deadline and not (sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT):
            _drain(sock)
            sock.poll(50, zmq.POLLOUT)
        _drain(sock)


def zmtp_greeting_and_ready(rng: random.Random) -> bytes:
    """A correct ZMTP 3.0 NULL handshake from a DEALER, as raw bytes."""
    greeting = (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00")
                + b"\x00" + b"\x00" * 31)

    def prop(name: bytes, value: bytes) -> bytes:
        return bytes([len(name)]) + name + len(value).to_bytes(4, "big") + value

    body = b"\x05READY" + prop(b"Socket-Type", b"DEALER") + prop(b"Identity", identity(rng))
    return greeting + b"\x04" + bytes([len(body)]) + body


def raw_tcp(port: int, rng: random.Random) -> int:
    """Connections that send bytes that are not ZMTP, then ones that declare a frame bigger
    than MAXMSGSIZE after a good handshake (and send a little of it); bytes sent."""
    sent = 0
    for n in range(RAW_CONNECTIONS + OVERSIZED_CONNECTIONS):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            if n < RAW_CONNECTIONS:
                payload = rng.randbytes(rng.randint(1, 4096))
                if n % 4 == 0:  # a good greeting, then garbage where frames should be
                    payload = zmtp_greeting_and_ready(rng) + payload
            else:
                declared = MAX_MESSAGE_BYTES + rng.randint(1, 2**33)
                payload = (zmtp_greeting_and_ready(rng) + b"\x02" + declared.to_bytes(8, "big")
                           + rng.randbytes(256 * 1024))
            with contextlib.suppress(OSError):  # the peer may hang up on us first: good
                conn.sendall(payload)
                sent += len(payload)
    return sent


def agent_endpoint(pid: int) -> str:
    """The agent's executor ROUTER, from the abstract unix sockets the kernel lists."""
    names = re.findall(rf"@(burla-agent-{pid}-[0-9a-f]+)", Path("/proc/net/unix").read_text())
    assert names, f"agent {pid} listens on no @burla-agent-{pid}-... socket"
    return f"ipc://@{names[0]}"


def authenticated_storm(ctx: zmq.Context[Any], endpoint: str, token: str,
                        rng: random.Random, messages: int) -> int:
    """A client that said a good Hello, then sends well-typed messages with absurd values
    (no Shutdown: that one is the owner's right)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"client-fuzz-" + rng.randbytes(6).hex().encode())
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.connect(endpoint)
    hello = protocol.Hello("client", protocol.PROTOCOL_VERSION, __version__, token, "fuzz", {})
    sent = 0
    try:
        _send(sock, [bytes(f) for f in protocol.encode(hello)])
        valid = [m for m in valid_messages(rng, token) if not isinstance(
            m, (protocol.Shutdown, protocol.Hello))]
        for count in range(messages):
            msg = rng.choice(valid)
            if isinstance(msg, protocol.Submit) and rng.random() < 0.5:
                msg = protocol.Submit(*(getattr(msg, f) for f in ("job_id", "function_hash")),
                                      msg.function_name, rng.choice([1, 2]), 0, None, None,
                                      rng.choice([None, 1]), False, rng.random() < 0.5,
                                      rng.randint(-3, 3), "3.11", None, rng.randbytes(32))
            sent += _send(sock, [bytes(f) for f in protocol.encode(msg)])
            if count % 256 == 0:
                _drain(sock)
        _flush([sock])
    finally:
        sock.close(linger=DELIVER_MS)
    return sent


# --- the test ---------------------------------------------------------------------------------


def test_garbage_frames_break_neither_coordinator_nor_agent(make_cluster):
    cluster = make_cluster(agents=1, cpus=2)
    coordinator = psutil.Process(cluster.coordinator.pid)
    agent = psutil.Process(cluster.agents[0].pid)
    assert remote_parallel_map(triple, range(200), spinner=False) == [triple(x) for x in range(200)]
    rss_before = {"coordinator": coordinator.memory_info().rss, "agent": agent.memory_info().rss}
    logs_before = {p.name: p.stat().st_size for p in cluster.root.glob("*.log")}
    rng = random.Random(SEED)
    garbage = Garbage(rng, valid_messages(rng, cluster.token))
    ctx: zmq.Context[Any] = zmq.Context()
    started = time.monotonic()
    try:
        sent_c, frames_c = storm(ctx, cluster.endpoint, COORDINATOR_MESSAGES, garbage, rng)
        raw_bytes = raw_tcp(cluster.port, rng)
        sent_a, frames_a = storm(ctx, agent_endpoint(agent.pid), AGENT_MESSAGES, garbage, rng)
        sent_auth = authenticated_storm(ctx, cluster.endpoint, cluster.token, rng, 2_000)
    finally:
        ctx.term()
    took = time.monotonic() - started
    assert frames_c + frames_a + sent_auth >= 100_000, (frames_c, frames_a, sent_auth)
    assert sent_c >= COORDINATOR_MESSAGES * 0.9 and sent_a >= AGENT_MESSAGES * 0.9, \
        f"the daemons stopped taking messages: {sent_c}, {sent_a} sent"

    assert coordinator.is_running() and cluster.coordinator.poll() is None, cluster.logs()[-3000:]
    assert agent.is_running() and cluster.agents[0].poll() is None, cluster.logs()[-3000:]
    # The next real job runs, on the same agent, with every result right.
    assert remote_parallel_map(triple, range(2_000), spinner=False) == \
        [triple(x) for x in range(2_000)]
    status = cluster.status()
    assert [n["agent_id"] for n in status["nodes"]] == ["agent0"], status

    # The authenticated fuzzer's jobs are cancelled when it goes silent; nothing stays held.
    def settled() -> bool:
        status = cluster.status()
        return not status["jobs"] and all(n["used_cpus"] == 0 for n in status["nodes"])

    deadline = time.monotonic() + 20
    while not settled():
        assert time.monotonic() < deadline, f"the cluster kept jobs or slots: {cluster.status()}"
        time.sleep(0.2)

    rss_after = {"coordinator": coordinator.memory_info().rss, "agent": agent.memory_info().rss}
    growth = {k: rss_after[k] - rss_before[k] for k in rss_after}
    logs_after = {p.name: p.stat().st_size for p in cluster.root.glob("*.log")}
    log_growth = {k: logs_after[k] - logs_before.get(k, 0) for k in logs_after}
    report = (f"{sent_c} messages ({frames_c} frames) to the coordinator, {sent_a} ({frames_a} "
              f"frames) to the agent, {sent_auth} authenticated, {raw_bytes} raw TCP bytes in "
              f"{took:.1f}s; resident memory grew by {growth} bytes, logs by {log_growth} bytes")
    print(f"fuzz: {report}")
    assert all(g < MAX_RSS_GROWTH_BYTES for g in growth.values()), report
    assert all(g < MAX_LOG_GROWTH_BYTES for g in log_growth.values()), report

"""Garbage on the wire: random, truncated, oversized and wrongly-typed frames, valid ops from
peers that never said Hello, absurd values from one that did, and raw bytes that are not even
ZMTP, sent to the coordinator's TCP port and to an agent's executor socket. Both daemons stay
up, serve the next real job, and neither memory nor log grows out of bounds."""

from __future__ import annotations

import contextlib
import random
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from burla import __version__, protocol, remote_parallel_map
from burla.transport import MAX_MESSAGE_BYTES
from tests.integration.wire_garbage import JOB, Frames, Garbage, make, valid_messages

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
# Messages sent between two checks that the daemon has caught up.
ROUND = 5_000
# Longest wait for a daemon to catch up with a round.
CATCH_UP_SECONDS = 20.0
# Longest wait for a send queue to have room again before that message is skipped.
SEND_WAIT_MS = 200



def triple(x):
    return x * 3 + 1


# --- senders ----------------------------------------------------------------------------------


def identity(rng: random.Random) -> bytes:
    """A random routing id (ZeroMQ reserves a leading zero byte), sometimes with a role's
    prefix so the daemons' prefix checks see it, never a real peer's."""
    prefix = rng.choice([b"", b"agent-", b"client-", b"x"])
    return prefix + bytes([rng.randint(1, 255)]) + rng.randbytes(rng.randint(0, 24))


def storm(ctx: zmq.Context[Any], endpoint: str, messages: int, garbage: Garbage,
          rng: random.Random, caught_up: Callable[[list[zmq.Socket[Any]], int], None],
          ) -> tuple[int, int]:
    """Send `messages` from PEERS dealers without blocking; (messages, frames) handed to ZeroMQ.

    Replies are read and thrown away as they come, never waited for. Every ROUND messages,
    `caught_up` returns once the daemon has handled what was sent, so what is measured after
    the storm is what garbage leaves behind, not how deep a burst queued.
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
            if count % ROUND == ROUND - 1:
                caught_up(peers, count // ROUND)
        _flush(peers)
        caught_up(peers, messages // ROUND + 1)
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


def coordinator_caught_up(peers: list[zmq.Socket[Any]], round_: int) -> None:
    """Each peer sends a Hello of a wrong version naming the round; the coordinator's refusal
    quotes it. A peer's messages are handled in order, so once each refusal is back, everything
    sent before it has been handled."""
    waiting = {}
    for number, sock in enumerate(peers):
        marker = f"round-{round_}-{number}"
        hello = protocol.Hello("client", protocol.PROTOCOL_VERSION + 7, marker, "", "", {})
        sock.send_multipart([bytes(f) for f in protocol.encode(hello)])  # blocks: it must go
        waiting[sock] = marker
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while waiting:
        assert time.monotonic() < deadline, \
            f"the coordinator did not catch up with round {round_} in {CATCH_UP_SECONDS:.0f}s"
        for sock, marker in list(waiting.items()):
            while sock.poll(0):
                frames = sock.recv_multipart()
                with contextlib.suppress(protocol.ProtocolError):
                    answer = protocol.decode(frames)
                    if isinstance(answer, protocol.Refuse) and marker in answer.message:
                        del waiting[sock]
                        break
        time.sleep(0.01)


def idle_caught_up(pid: int) -> Callable[[list[zmq.Socket[Any]], int], None]:
    """For a daemon that answers nothing: wait until it stops spending CPU."""
    process = psutil.Process(pid)

    def caught_up(peers: list[zmq.Socket[Any]], round_: int) -> None:
        deadline = time.monotonic() + CATCH_UP_SECONDS
        before = sum(process.cpu_times()[:2])
        while True:
            time.sleep(0.1)
            now = sum(process.cpu_times()[:2])
            if now - before < 0.005:
                return
            assert time.monotonic() < deadline, \
                f"the agent stayed busy for {CATCH_UP_SECONDS:.0f}s after round {round_}"
            before = now

    return caught_up


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
                # One a node could take, so the absurd uploads that follow reach a live job.
                msg = make(protocol.Submit, rng, job_id=JOB, func_cpu=rng.choice([1, 2]),
                           func_ram=0, func_gpu=None, image=None, grow=False,
                           max_parallelism=rng.choice([None, 1]), detach=rng.random() < 0.5,
                           n_inputs=rng.randint(-3, 3), python_version="3.11", parent_job=None)
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
        sent_c, frames_c = storm(ctx, cluster.endpoint, COORDINATOR_MESSAGES, garbage, rng,
                                 coordinator_caught_up)
        raw_bytes = raw_tcp(cluster.port, rng)
        sent_a, frames_a = storm(ctx, agent_endpoint(agent.pid), AGENT_MESSAGES, garbage, rng,
                                 idle_caught_up(agent.pid))
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


@pytest.mark.parametrize(
    ("hello", "kind"),
    [
        ({"role": "client", "token": "wrong-token"}, "unauthorized"),
        ({"role": "client", "token": "t\u00f6k\u00e9n"}, "unauthorized"),  # non-ASCII
        ({"role": "agent", "token": "wrong-token"}, "unauthorized"),
        ({"role": "agent", "token": "\u00e9"}, "unauthorized"),
        ({"role": "client", "protocol_version": protocol.PROTOCOL_VERSION + 7}, "version"),
        (None, "unknown_peer"),  # no Hello at all: a Submit straight away
    ],
)
def test_each_bad_first_message_gets_a_typed_refusal(cluster, hello, kind):
    """A peer that is not let in hears why at once, whatever its token holds; it is never
    left waiting for an answer that does not come."""
    rng = random.Random(7)
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"client-" + rng.randbytes(8).hex().encode())
    sock.connect(cluster.endpoint)
    try:
        if hello is None:
            first = make(protocol.Submit, rng)
        else:
            first = make(protocol.Hello, rng, **{
                "token": cluster.token, "protocol_version": protocol.PROTOCOL_VERSION,
                "burla_version": __version__, "info": {}, **hello})
        sock.send_multipart([bytes(f) for f in protocol.encode(first)], flags=zmq.NOBLOCK)
        assert sock.poll(5_000), f"no answer in 5 s to {first.op} {hello}"
        answer = protocol.decode(sock.recv_multipart())
    finally:
        sock.close(linger=0)
        ctx.term()
    assert isinstance(answer, protocol.Refuse) and answer.kind == kind, answer

"""ZeroMQ sockets configured once, and plain-thread send/receive of protocol messages.

Clients and executors use only this module (it imports no logging, so they start fast); the
daemons' event-loop side is `burla.channel`. It knows nothing of what the messages mean.
"""

from __future__ import annotations

from typing import Any

import zmq

from burla import protocol
from burla.protocol import Message

# Largest message accepted: a 200 MB input (config.MAX_INPUT_BYTES) or a 256 MiB result batch
# (config.MAX_RESULT_BYTES) plus its envelope, with headroom. A peer sending more is disconnected
# by ZeroMQ and the message is lost, so senders check sizes against these limits first.
MAX_MESSAGE_BYTES = 320 * 1024 * 1024
# Messages queued per peer before a send fails; credit flow keeps real traffic far below this.
HIGH_WATER_MARK = 100_000


class TransportError(Exception):
    """A message could not be handed to ZeroMQ; the peer is gone or flooded. Callers decide."""


def router_socket(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    """A bound ROUTER that refuses to drop silently and lets a reconnecting peer take its id."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    _common_options(sock)
    sock.bind(endpoint)
    return sock


def dealer_socket(ctx: zmq.Context[Any], endpoint: str, identity: bytes) -> zmq.Socket[Any]:
    """A DEALER connected to `endpoint` under `identity`."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    _common_options(sock)
    sock.connect(endpoint)
    return sock


def _common_options(sock: zmq.Socket[Any]) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    if sock.type != zmq.ROUTER:
        sock.setsockopt(zmq.IMMEDIATE, 0)


def bound_endpoint(sock: zmq.Socket[Any]) -> str:
    """The endpoint a socket really bound (resolves port 0)."""
    value = sock.getsockopt(zmq.LAST_ENDPOINT)
    return value.decode() if isinstance(value, bytes) else str(value)


def send_sync(sock: zmq.Socket[Any], msg: Message, peer: bytes | None = None) -> None:
    """Send from a plain (non-asyncio) thread; raises TransportError instead of blocking."""
    frames = protocol.encode(msg)
    if peer is not None:
        frames.insert(0, peer)
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
    except zmq.ZMQError as exc:
        raise TransportError(f"cannot send {msg.op}: {exc}") from exc


def recv_sync(sock: zmq.Socket[Any], routed: bool = False) -> tuple[bytes, Message]:
    """Receive one message in a plain thread (call after a poll); raises ProtocolError."""
    frames = sock.recv_multipart(copy=False)
    peer = frames.pop(0).bytes if routed else b""
    return peer, protocol.decode(frames)

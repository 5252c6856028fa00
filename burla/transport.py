"""ZeroMQ sockets configured once, and the channel that moves protocol messages over them.

Daemons use `Channel`: it drains a batch of messages per wake-up of the event loop and hands each
decoded message to one synchronous handler; sends never block. Malformed frames are dropped,
counted and logged here, so no role's loop can be killed by one. This module knows nothing of
what the messages mean.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import zmq

from burla import protocol
from burla.protocol import Message

log = structlog.get_logger("burla.transport")

# Largest message accepted: a 200 MB input plus its envelope, with headroom.
MAX_MESSAGE_BYTES = 320 * 1024 * 1024
# Messages queued per peer before a send fails; credit flow keeps real traffic far below this.
HIGH_WATER_MARK = 100_000
# Messages handled per event-loop wake-up before yielding to other work.
RECV_BATCH = 512

Handler = Callable[[bytes, Message], None]


class TransportError(Exception):
    """A message could not be handed to ZeroMQ; the peer is gone or flooded. Callers decide."""


@dataclass
class ChannelStats:
    received: int = 0
    sent: int = 0
    malformed: int = 0
    handler_errors: int = 0
    unroutable: int = 0


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


class Channel:
    """One socket on the event loop: batched receive into `handler`, non-blocking send."""

    def __init__(
        self,
        sock: zmq.Socket[Any],
        handler: Handler,
        *,
        routed: bool,
        name: str,
    ) -> None:
        self.sock = sock
        self.handler = handler
        self.routed = routed
        self.name = name
        self.stats = ChannelStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.FD, self._drain)
        self._schedule_drain()

    def close(self) -> None:
        if self._loop is not None and not self.sock.closed:
            self._loop.remove_reader(self.sock.FD)
        self.sock.close(linger=0)

    def send(self, msg: Message, peer: bytes | None = None) -> bool:
        """Queue `msg` (to `peer` on a ROUTER). False if the peer is unknown or flooded."""
        frames = protocol.encode(msg)
        if peer is not None:
            frames.insert(0, peer)
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            self.stats.unroutable += 1
            if exc.errno not in (errno.EHOSTUNREACH, zmq.EAGAIN):
                log.warning("send_failed", channel=self.name, op=msg.op, error=str(exc))
            return False
        finally:
            # ZMQ's FD is edge-triggered: a send can swallow the edge of a pending receive.
            self._schedule_drain()
        self.stats.sent += 1
        return True

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self.sock.closed:
            return
        for _ in range(RECV_BATCH):
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.warning("recv_failed", channel=self.name, error=str(exc))
                return
            self._dispatch(frames)
        self._schedule_drain()  # more may be waiting; let other callbacks run first

    def _dispatch(self, frames: list[Any]) -> None:
        peer = b""
        if self.routed:
            peer = frames.pop(0).bytes
        try:
            msg = protocol.decode(frames)
        except protocol.ProtocolError as exc:
            self.stats.malformed += 1
            if self.stats.malformed <= 10 or self.stats.malformed % 10_000 == 0:
                log.warning(
                    "malformed_message", channel=self.name, error=str(exc),
                    total=self.stats.malformed,
                )
            return
        self.stats.received += 1
        try:
            self.handler(peer, msg)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("handler_failed", channel=self.name, op=msg.op)

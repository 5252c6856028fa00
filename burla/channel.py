"""Daemons' sockets on the event loop: batched receive into one handler, non-blocking send.

`Channel` drains a batch of messages per wake-up of the event loop and hands each decoded
message to one synchronous handler; sends never block. Malformed frames are dropped, counted
and logged here, so no role's loop can be killed by one. A message that cannot be sent (over
the message limit, or refused by ZeroMQ) is logged and, through the `replace_unsent` the daemon
gives, replaced by one that tells its job. It knows nothing of what the messages mean.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import zmq

from burla import protocol, transport
from burla.protocol import Message

log = structlog.get_logger("burla.channel")

# Messages handled per event-loop wake-up before yielding to other work.
RECV_BATCH = 512

Handler = Callable[[bytes, Message], None]
# (message, why it could not be sent, whether it was too big) -> what to send instead, if any.
Replacer = Callable[[Message, str, bool], "Message | None"]


@dataclass
class ChannelStats:
    received: int = 0
    sent: int = 0
    malformed: int = 0
    handler_errors: int = 0
    unroutable: int = 0  # to a peer not connected: it is resent on reconnect, or declared dead
    unsent: int = 0  # over the size limit, or refused for another reason: replaced if it can be


class Channel:
    """One socket on the event loop: batched receive into `handler`, non-blocking send."""

    def __init__(
        self,
        sock: zmq.Socket[Any],
        handler: Handler,
        *,
        routed: bool,
        name: str,
        replace_unsent: Replacer | None = None,
    ) -> None:
        self.sock = sock
        self.handler = handler
        self.routed = routed
        self.name = name
        self.replace_unsent = replace_unsent
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
        """Queue `msg` (to `peer` on a ROUTER). False if it could not be: the peer is not
        connected, or the message was too big or refused (then it is replaced, if it can be)."""
        failure = self._put(msg, peer)
        if failure is None:
            self.stats.sent += 1
            return True
        reason, too_big = failure
        if not reason:
            self.stats.unroutable += 1
            return False
        self.stats.unsent += 1
        replacement = self.replace_unsent(msg, reason, too_big) if self.replace_unsent else None
        replaced = replacement is not None and self._put(replacement, peer) is None
        if self.stats.unsent <= 10 or self.stats.unsent % 10_000 == 0:
            log.warning("message_unsent", channel=self.name, op=msg.op, reason=reason,
                        job=getattr(msg, "job_id", None), replaced=replaced,
                        total=self.stats.unsent)
        return False

    def _put(self, msg: Message, peer: bytes | None) -> tuple[str, bool] | None:
        """Hand `msg` to ZeroMQ; None when done, else (why not, whether it was too big), with
        an empty reason for a peer that is not connected."""
        frames = protocol.encode(msg)
        if len(frames) > 1:  # only blobs can be big; ZeroMQ would drop the link to the peer
            size = sum(map(len, frames))
            if size > transport.MAX_MESSAGE_BYTES:
                return (f"the message is {size:,} bytes, over the limit of "
                        f"{transport.MAX_MESSAGE_BYTES:,} bytes", True)
        if peer is not None:
            frames.insert(0, peer)
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            return ("" if exc.errno == errno.EHOSTUNREACH else f"ZeroMQ refused it: {exc}", False)
        finally:
            # ZMQ's FD is edge-triggered: a send can swallow the edge of a pending receive.
            self._schedule_drain()
        return None

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

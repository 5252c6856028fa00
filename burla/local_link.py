"""The embedded cluster's coordinator ↔ agent link: message objects handed over in-process.

In `burla coordinator --local-agent` both roles share one event loop. Over ZeroMQ each of
their messages was encoded, copied through the I/O thread twice and decoded again on the same
CPU; here a message is handed to the other side's handler on the loop's next turn, in that
side's context (so its log lines keep their role), in the order it was sent. What each side
sends and receives is unchanged: the agent still says Hello, is welcomed, pinged and assigned
like any other, and the coordinator's ZeroMQ socket still serves every other peer.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import structlog

from burla.channel import Channel
from burla.protocol import Message

log = structlog.get_logger("burla.local_link")

Handler = Callable[[bytes, Message], None]


def _deliver(handler: Handler, peer: bytes, msg: Message, name: str) -> None:
    try:
        handler(peer, msg)
    except Exception:  # as in Channel: one bad message never stops a role's loop
        log.exception("handler_failed", channel=name, op=msg.op)


class AgentUplink:
    """The agent's upstream: hands each message to the coordinator's handler as from `peer`."""

    def __init__(self, to_coordinator: Handler, peer: bytes,
                 context: contextvars.Context) -> None:
        self.to_coordinator = to_coordinator
        self.peer = peer
        self.context = context
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, msg: Message, peer: bytes | None = None) -> bool:
        self.loop.call_soon(_deliver, self.to_coordinator, self.peer, msg, "local-coordinator",
                            context=self.context)
        return True


class CoordinatorChannel:
    """The coordinator's channel, but what it sends the in-process agent (`agent_peer`) goes
    straight to the agent's handler; everything else goes out on the real `channel`."""

    def __init__(self, channel: Channel, agent_peer: bytes, to_agent: Handler,
                 agent_context: contextvars.Context) -> None:
        self.channel = channel
        self.agent_peer = agent_peer
        self.to_agent = to_agent
        self.agent_context = agent_context
        self.loop = asyncio.get_running_loop()

    def send(self, msg: Message, peer: bytes | None = None) -> bool:
        if peer == self.agent_peer:
            self.loop.call_soon(_deliver, self.to_agent, b"", msg, "local-agent",
                                context=self.agent_context)
            return True
        return self.channel.send(msg, peer)

    def __getattr__(self, name: str) -> Any:  # start, close, stats: the real channel's
        return getattr(self.channel, name)

"""The embedded cluster's in-process link: messages arrive in order, on the loop's next turn,
in the receiving role's context; a failing handler stops nothing; other peers use the socket."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from burla import local_link, protocol

pytestmark = pytest.mark.timeout(10)
ROLE: contextvars.ContextVar[str] = contextvars.ContextVar("role", default="coordinator")
AGENT = b"agent-here-0123"


class Socketed:
    """Stands in for the coordinator's ZeroMQ channel."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, protocol.Message]] = []
        self.stats = "the real channel's stats"

    def send(self, msg: protocol.Message, peer: bytes | None = None) -> bool:
        self.sent.append((peer, msg))
        return True


def in_role(role: str) -> contextvars.Context:
    context = contextvars.copy_context()
    context.run(ROLE.set, role)
    return context


def test_both_ways_in_order_in_the_receivers_context() -> None:
    async def main() -> tuple[list[Any], list[Any], Socketed]:
        to_agent: list[Any] = []
        to_coordinator: list[Any] = []
        socketed = Socketed()
        down = local_link.CoordinatorChannel(
            socketed, AGENT, lambda peer, msg: to_agent.append((ROLE.get(), peer, msg)),
            in_role("agent"))
        up = local_link.AgentUplink(
            lambda peer, msg: to_coordinator.append((ROLE.get(), peer, msg)), AGENT,
            in_role("coordinator"))
        assert down.send(protocol.Ping(), AGENT) and up.send(protocol.Ping())
        assert down.send(protocol.Forget("f1"), AGENT)
        assert down.send(protocol.Ping(), b"client-1")  # another peer: the real socket
        assert to_agent == [] and to_coordinator == []  # not re-entrant: the next turn
        await asyncio.sleep(0)
        return to_agent, to_coordinator, socketed

    to_agent, to_coordinator, socketed = asyncio.run(main())
    assert to_agent == [("agent", b"", protocol.Ping()), ("agent", b"", protocol.Forget("f1"))]
    assert to_coordinator == [("coordinator", AGENT, protocol.Ping())]
    assert socketed.sent == [(b"client-1", protocol.Ping())]


def test_a_failing_handler_is_logged_and_the_next_message_still_arrives() -> None:
    async def main() -> list[protocol.Message]:
        seen: list[protocol.Message] = []

        def handler(_peer: bytes, msg: protocol.Message) -> None:
            seen.append(msg)
            if isinstance(msg, protocol.Ping):
                raise RuntimeError("a bug in a handler")

        down = local_link.CoordinatorChannel(Socketed(), AGENT, handler, in_role("agent"))
        down.send(protocol.Ping(), AGENT)
        down.send(protocol.Forget("f2"), AGENT)
        await asyncio.sleep(0)
        return seen

    assert asyncio.run(main()) == [protocol.Ping(), protocol.Forget("f2")]


def test_the_wrapped_channel_keeps_the_real_channels_other_parts() -> None:
    async def main() -> Any:
        return local_link.CoordinatorChannel(Socketed(), AGENT, print, in_role("agent")).stats

    assert asyncio.run(main()) == "the real channel's stats"

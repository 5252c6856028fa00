"""What every daemon's run shares: signals that stop it, and its loops in one TaskGroup."""

from __future__ import annotations

import asyncio
import contextvars
import signal
from collections.abc import Callable, Coroutine
from typing import Any


class _Stop(Exception):
    pass


# The stops to call on a signal: one per role running in this process (the embedded cluster
# runs a coordinator and an agent in one).
_stops: list[tuple[Callable[[str], None], contextvars.Context]] = []


def stop_on_signals(stop: Callable[[str], None]) -> None:
    """SIGTERM and SIGINT take the same path as a remote Shutdown: `stop(reason)`."""
    loop = asyncio.get_running_loop()
    _stops.append((stop, contextvars.copy_context()))  # each role logs as itself
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop_all, f"signal {sig.name}")


def _stop_all(reason: str) -> None:
    for stop, context in list(_stops):
        context.run(stop, reason)


async def run_until(stopping: asyncio.Event, *loops: Coroutine[Any, Any, None]) -> None:
    """Run `loops` in one TaskGroup until `stopping` is set; a loop that fails stops them all."""
    try:
        async with asyncio.TaskGroup() as tasks:
            for loop in loops:
                tasks.create_task(loop)
            await stopping.wait()
            raise _Stop
    except* _Stop:
        pass

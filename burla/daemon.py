"""What every daemon's run shares: signals that stop it, and its loops in one TaskGroup."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any


class _Stop(Exception):
    pass


def stop_on_signals(stop: Callable[[str], None]) -> None:
    """SIGTERM and SIGINT take the same path as a remote Shutdown: `stop(reason)`."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, f"signal {sig.name}")


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

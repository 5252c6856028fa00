"""Runs a node provider's blocking calls on a few threads, so no event loop waits on a cloud API.

Boots wait minutes on operations, while a delete or a list is one quick call; they get their
own threads, so a run of slow boots never delays the deletes that stop billing. A slow or
failing cloud API therefore costs at most these threads, never the coordinator's loop or a
running job's results. Awaiting callers that are cancelled do not stop a call already on a
thread: it finishes, and its result is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from burla.coordinator.providers.base import BootReport, BootStep, Node, NodeProvider, NodeRequest

T = TypeVar("T")

# Boots at once: each holds a thread while its operations run.
BOOT_THREADS = 4
# Lists and deletes at once: deleting 500 nodes is 500 calls, so they go several at a time.
API_THREADS = 8


class ProviderPool:
    """A NodeProvider's methods as coroutines, each run on a fixed-size thread pool."""

    def __init__(self, provider: NodeProvider, boot_threads: int = BOOT_THREADS,
                 api_threads: int = API_THREADS) -> None:
        if boot_threads < 1 or api_threads < 1:
            raise ValueError(f"a ProviderPool needs at least one thread of each kind, got "
                             f"boot_threads={boot_threads}, api_threads={api_threads}")
        self.provider = provider
        self._boots = ThreadPoolExecutor(boot_threads, thread_name_prefix="burla-boot")
        self._api = ThreadPoolExecutor(api_threads, thread_name_prefix="burla-provider")

    async def create(self, request: NodeRequest,
                     on_step: Callable[[BootStep], None] | None = None) -> BootReport:
        """Boot the nodes; `on_step` is called on this event loop's thread for each step."""
        loop = asyncio.get_running_loop()

        def step(boot_step: BootStep) -> None:
            if on_step is not None and not loop.is_closed():
                loop.call_soon_threadsafe(on_step, boot_step)

        return await loop.run_in_executor(self._boots, self.provider.create, request, step)

    async def list_nodes(self) -> list[Node]:
        return await self._run(self.provider.list_nodes)

    async def delete(self, node: Node) -> None:
        await self._run(self.provider.delete, node)

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._api, function, *args)

    def close(self) -> None:
        """Drop queued calls and let running ones finish on their own (no wait)."""
        self._boots.shutdown(wait=False, cancel_futures=True)
        self._api.shutdown(wait=False, cancel_futures=True)

"""ProviderPool: a provider's blocking calls run off the event loop, in bounded threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from burla.coordinator.providers.base import BootReport, BootStep, Node, NodeRequest, StepCallback
from burla.coordinator.providers.pool import ProviderPool

pytestmark = pytest.mark.timeout(30)
NODE = Node("burla-c-abc123-0001", "us-central1-a", "RUNNING", "n2-standard-2",
            {"burla-cluster": "c"})


class BlockingProvider:
    """Boots block until released; every call records the thread it ran on."""

    cluster_name = "c"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: list[str] = []
        self.booting = 0
        self.most_booting = 0
        self.lock = threading.Lock()
        self.deleted: list[str] = []

    def create(self, request: NodeRequest, on_step: StepCallback | None = None) -> BootReport:
        with self.lock:
            self.threads.append(threading.current_thread().name)
            self.booting += 1
            self.most_booting = max(self.most_booting, self.booting)
        step = BootStep("trying", request, "us-central1-a", "trying us-central1-a",
                        request.count)
        if on_step is not None:
            on_step(step)
        self.release.wait(10)
        with self.lock:
            self.booting -= 1
        return BootReport(request, (NODE,), (step,))

    def list_nodes(self) -> list[Node]:
        self.threads.append(threading.current_thread().name)
        return [NODE]

    def delete(self, node: Node) -> None:
        self.threads.append(threading.current_thread().name)
        self.deleted.append(node.name)


def test_calls_run_on_pool_threads_and_steps_come_back_on_the_loop() -> None:
    provider = BlockingProvider()
    provider.release.set()
    pool = ProviderPool(provider)
    seen: list[tuple[str, str]] = []

    async def main() -> BootReport:
        return await pool.create(NodeRequest("n2-standard-2", 1),
                                 lambda s: seen.append((threading.current_thread().name,
                                                        s.detail)))

    try:
        report = asyncio.run(main())
    finally:
        pool.close()
    assert report.nodes == (NODE,)
    assert provider.threads[0].startswith("burla-boot")
    assert seen == [(threading.main_thread().name, "trying us-central1-a")]


def test_boots_are_bounded_and_never_hold_up_a_delete() -> None:
    provider = BlockingProvider()
    pool = ProviderPool(provider, boot_threads=2, api_threads=1)

    async def main() -> None:
        boots = [asyncio.ensure_future(pool.create(NodeRequest("n2-standard-2", 1)))
                 for _ in range(5)]
        # Every boot thread is blocked in a boot; a delete and a list still get through.
        await asyncio.wait_for(pool.delete(NODE), 5)
        assert await asyncio.wait_for(pool.list_nodes(), 5) == [NODE]
        assert provider.deleted == [NODE.name]
        assert provider.most_booting <= 2
        assert all(not b.done() for b in boots)
        provider.release.set()
        reports = await asyncio.wait_for(asyncio.gather(*boots), 10)
        assert len(reports) == 5

    try:
        asyncio.run(main())
    finally:
        provider.release.set()
        pool.close()
    assert provider.most_booting == 2


def test_the_loop_keeps_running_while_a_boot_blocks() -> None:
    provider = BlockingProvider()
    pool = ProviderPool(provider)

    async def main() -> int:
        boot = asyncio.ensure_future(pool.create(NodeRequest("n2-standard-2", 1)))
        ticks = 0
        while ticks < 20:  # the loop turns although the boot has not finished
            await asyncio.sleep(0)
            ticks += 1
        assert not boot.done()
        provider.release.set()
        await asyncio.wait_for(boot, 10)
        return ticks

    try:
        assert asyncio.run(main()) == 20
    finally:
        provider.release.set()
        pool.close()


def test_a_pool_needs_threads() -> None:
    with pytest.raises(ValueError, match="boot_threads=0"):
        ProviderPool(BlockingProvider(), boot_threads=0)

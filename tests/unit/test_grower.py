"""The Grower carries out growth's instructions through a provider, on an event loop: boots with
the names growth gave, deletes, the reaper, and a job growth gives up on. An in-memory provider
stands in for the cloud; agents "register" as plain scheduler events."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from burla import protocol
from burla.coordinator.capacity import Shape
from burla.coordinator.config import GrowthConfig, LocalSettings
from burla.coordinator.demand import GrowthLimits
from burla.coordinator.grower import Grower, advertised_endpoint
from burla.coordinator.providers.base import (
    CLUSTER_LABEL,
    BootReport,
    BootStep,
    Node,
    NodeRequest,
    QuotaExceeded,
    StepCallback,
)
from burla.coordinator.scheduler import Out, Scheduler

pytestmark = pytest.mark.timeout(30)
CLIENT = b"client-1"
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
WAIT_SECONDS = 10.0


class MemoryProvider:
    """Creates, lists and deletes nodes in a dict; `gate` holds creates until set."""

    cluster_name = "c"

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.requests: list[NodeRequest] = []
        self.deleted: list[str] = []
        self.error: Exception | None = None  # what the next creates report
        self.crash: Exception | None = None  # what the next creates raise
        self.gate = threading.Event()
        self.gate.set()
        self.steps: list[str] = []  # details each create reports before it makes its nodes

    def create(self, request: NodeRequest, on_step: StepCallback | None = None) -> BootReport:
        self.requests.append(request)
        for detail in self.steps:
            if on_step is not None:
                on_step(BootStep("moving", request, "z", detail, request.count))
        self.gate.wait(WAIT_SECONDS)
        if self.crash is not None:
            raise self.crash
        if self.error is not None:
            return BootReport(request, (), (), self.error)  # type: ignore[arg-type]
        made = tuple(self.add(name) for name in request.names)
        step = BootStep("created", request, "z", f"{len(made)} VMs started in z", len(made))
        if on_step is not None:
            on_step(step)
        return BootReport(request, made, (step,))

    def add(self, name: str, status: str = "RUNNING", cluster: str = "c") -> Node:
        node = Node(name, "z", status, "local-2", {CLUSTER_LABEL: cluster})
        self.nodes[name] = node
        return node

    def list_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.cluster == self.cluster_name]

    def delete(self, node: Node) -> None:
        self.deleted.append(node.name)
        self.nodes.pop(node.name, None)


class Harness:
    def __init__(self, provider: MemoryProvider, **limits: Any) -> None:
        config = GrowthConfig("local", "c", GrowthLimits(**limits), local=LocalSettings(2, 8),
                              reap_interval=0.2)
        self.scheduler = Scheduler(b"secret")
        self.sent: Out = []
        self.grower = Grower(config, self.scheduler, self.sent.extend,
                             lambda *args: provider)
        self.provider = provider

    def submit(self, job_id: str = "job", n_inputs: int = 4, grow: bool = True) -> Out:
        out = self.scheduler.submit(CLIENT, "me", protocol.Submit(
            job_id, "hash", "f", 1, 0, None, None, None, grow, False, n_inputs, PYTHON, None,
            b"function"), 0.0)
        self.grower.poke()
        return out

    def register(self, name: str) -> Out:
        hello = protocol.Hello("agent", protocol.PROTOCOL_VERSION, "x", "t", "s", {
            "agent_id": name, "cpus": 2, "ram_gb": 8, "gpus": [], "image": "",
            "python_version": PYTHON})
        out = self.scheduler.add_node(f"agent-{name}".encode(), hello, 0.0)
        self.grower.poke()
        return out

    def messages(self, kind: type) -> list[Any]:
        return [m for _, m in self.sent if isinstance(m, kind)]


def run(test: Callable[[Harness], Coroutine[Any, Any, None]], provider: MemoryProvider,
        **limits: Any) -> None:
    async def main() -> None:
        harness = Harness(provider, **limits)
        task = asyncio.create_task(harness.grower.run("tcp://127.0.0.1:7700", "tok", Path()))
        try:
            await test(harness)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


async def until(condition: Callable[[], bool]) -> None:
    """Wait (on the loop, so the grower works) until `condition` holds; fail after a while."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def test_a_boot_asks_the_provider_for_exactly_the_names_growth_gave():
    provider = MemoryProvider()

    async def test(h: Harness) -> None:
        h.submit(n_inputs=4)
        await until(lambda: len(provider.nodes) == 2)
        [request] = provider.requests
        assert request.machine_type == "local-2" and request.count == 2
        assert request.names == ("burla-c-1", "burla-c-2") and request.python_version == PYTHON
        # The agents register under those names and the job runs on them.
        h.register("burla-c-1")
        h.register("burla-c-2")
        assert h.scheduler.jobs["job"].slots == 4
        await until(lambda: "burla-c-1" in h.grower.growth.grown)

    run(test, provider)


def test_an_idle_grown_node_is_deleted_and_forgotten_by_the_scheduler():
    provider = MemoryProvider()

    async def test(h: Harness) -> None:
        h.submit(n_inputs=2)
        await until(lambda: "burla-c-1" in provider.nodes)
        h.register("burla-c-1")
        h.scheduler.cancel("job", None, "done with it")  # its slots free: the node is idle
        await until(lambda: provider.deleted == ["burla-c-1"])
        await until(lambda: "burla-c-1" not in h.scheduler.nodes)
        assert h.grower.growth.known() == set()

    run(test, provider, node_idle_timeout=0.1)


def test_the_reaper_adopts_a_previous_runs_nodes_then_deletes_unknown_and_stopped_ones():
    provider = MemoryProvider()
    provider.add("burla-c-7")  # a previous run's node, still running
    provider.add("burla-c-8", status="TERMINATED")
    provider.add("other-cluster-1", cluster="d")

    async def test(h: Harness) -> None:
        await until(lambda: provider.deleted == ["burla-c-8"])
        assert "burla-c-7" in h.grower.growth.known()
        provider.add("burla-c-99")  # appears later, made by nobody this coordinator knows
        await until(lambda: "burla-c-99" in provider.deleted)
        assert "burla-c-7" in provider.nodes and "other-cluster-1" in provider.nodes
        # A registered agent the reaper finds on a labelled node is adopted, not deleted.
        h.register("burla-c-50")
        provider.add("burla-c-50")
        await until(lambda: "burla-c-50" in h.grower.growth.known())
        assert "burla-c-50" not in provider.deleted
        # Growth's own new names do not reuse the adopted ones (the job takes burla-c-50's 2
        # slots, and 2 more calls want a node).
        h.submit(n_inputs=4)
        await until(lambda: len(provider.requests) == 1)
        assert provider.requests[0].names == ("burla-c-51",)

    run(test, provider)


def test_a_failed_boot_fails_the_job_that_nothing_else_can_run_naming_the_error():
    provider = MemoryProvider()
    provider.error = QuotaExceeded("Compute Engine quota 'CPUS' is exhausted in us-central1 "
                                   "(limit 24)", quota="CPUS")

    async def test(h: Harness) -> None:
        h.submit()
        await until(lambda: bool(h.messages(protocol.JobFailed)))
        [failed] = h.messages(protocol.JobFailed)
        assert failed.kind == "no_compatible_nodes:grow"
        assert "quota 'CPUS' is exhausted in us-central1 (limit 24)" in failed.message
        assert "job" not in h.scheduler.jobs

    run(test, provider)


def test_a_provider_that_raises_does_not_stop_the_grower():
    provider = MemoryProvider()
    provider.crash = RuntimeError("a bug in the provider")

    async def test(h: Harness) -> None:
        h.submit()
        await until(lambda: bool(h.messages(protocol.JobFailed)))
        assert "RuntimeError: a bug in the provider" in h.messages(protocol.JobFailed)[0].message
        provider.crash = None
        # Once the failed shape's pause is over, a new job's boot works: the grower still runs.
        shape = Shape(1, 0, None, PYTHON)
        await until(lambda: h.grower.growth.could_help(shape, time.monotonic())[0])
        assert not h.messages(protocol.Refuse)
        h.submit("later", n_inputs=1)
        await until(lambda: len(provider.requests) == 2)

    run(test, provider, retry_after=0.1)


def test_the_boots_steps_reach_the_client_and_a_failover_is_still_told_once_made():
    provider = MemoryProvider()
    provider.gate.clear()
    provider.steps = ["z-a exhausted, trying z-b"]

    async def test(h: Harness) -> None:
        h.submit(n_inputs=2)
        words = "booting 1× local-2: z-a exhausted, trying z-b"
        await until(lambda: any(p.status == words for p in h.messages(protocol.Progress)))
        status = h.grower.status()
        assert [(b["name"], b["note"]) for b in status["booting"]] == [
            ("burla-c-1", "z-a exhausted, trying z-b")]
        provider.gate.set()
        made = "booting 1× local-2: z-a exhausted, trying z-b; 1 VMs started in z"
        await until(lambda: any(p.status == made for p in h.messages(protocol.Progress)))
        h.register("burla-c-1")
        await until(lambda: h.messages(protocol.Progress)[-1].status == "")

    run(test, provider)


def test_a_node_deleted_while_its_create_runs_is_deleted_once_made():
    provider = MemoryProvider()
    provider.gate.clear()  # the create call hangs, as a slow cloud's would

    async def test(h: Harness) -> None:
        h.submit(n_inputs=2)
        await until(lambda: len(provider.requests) == 1)
        # The boot timeout passes while the create still runs; the job gives up meanwhile.
        await until(lambda: bool(h.messages(protocol.JobFailed)))
        assert "did not register within --boot-timeout=0.2s" in \
            h.messages(protocol.JobFailed)[0].message
        assert provider.deleted == []
        provider.gate.set()
        await until(lambda: provider.deleted == ["burla-c-1"])
        assert provider.nodes == {}

    run(test, provider, boot_timeout=0.2)


def test_grow_false_never_boots():
    provider = MemoryProvider()

    async def test(h: Harness) -> None:
        h.register("static")
        h.scheduler.nodes["static"].used_cpus = 2  # busy: the job queues
        h.submit(n_inputs=100, grow=False)
        for _ in range(5):  # several steps pass, each waking on a registration
            h.register(f"busy-{_}")
            for name in list(h.scheduler.nodes):
                h.scheduler.nodes[name].used_cpus = 2
            await asyncio.sleep(0.05)
        assert provider.requests == []

    run(test, provider)


def test_nodes_dial_the_advertised_endpoint_or_the_bound_one():
    local = GrowthConfig("local", local=LocalSettings(1, 1))
    assert advertised_endpoint(local, "tcp://0.0.0.0:7700") == "tcp://127.0.0.1:7700"
    assert advertised_endpoint(local, "tcp://10.1.2.3:7700") == "tcp://10.1.2.3:7700"
    told = GrowthConfig("local", local=LocalSettings(1, 1),
                        advertise_endpoint="tcp://coordinator.example:7700")
    assert advertised_endpoint(told, "tcp://0.0.0.0:7700") == "tcp://coordinator.example:7700"

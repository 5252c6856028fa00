"""Carries out growth's decisions: boots, deletes and reaps nodes through the provider.

The coordinator's async side of grow=True. It owns the `Growth` state (pure: what to boot and
delete) and the `ProviderPool` (the provider's blocking calls on bounded threads). About once a
second, and soon after a submit or a registration, it asks growth for a step and performs what
comes back: Boot and Delete run as tasks awaiting the pool, so a slow or failing cloud API
holds up nothing on the event loop, least of all a running job's results; GiveUp fails the job.
What growth says of each job goes to its client's spinner. The reaper lists the cluster's
nodes at start and every `reap_interval`: it adopts the nodes of a previous run, and deletes
stopped ones and labelled ones this coordinator does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from burla.coordinator.config import GrowthConfig
from burla.coordinator.demand import JobView
from burla.coordinator.growth import DELETE_GRACE_SECONDS, Boot, Delete, GiveUp, Growth
from burla.coordinator.providers import factory
from burla.coordinator.providers.base import BootStep, Node, NodeProvider, NodeRequest
from burla.coordinator.providers.pool import ProviderPool
from burla.coordinator.scheduler import Out, Scheduler

log = structlog.get_logger("burla.coordinator.grower")

# Growth steps at least this often; a submit or a registration brings the next one sooner.
STEP_SECONDS = 1.0
# ...but no sooner than this after the last: a burst of registrations costs a few steps.
MIN_STEP_GAP_SECONDS = 0.05
# The reaper tries again this soon when listing the nodes failed.
REAP_RETRY_SECONDS = 10.0
# Provider states of a VM that runs nothing and will not by itself: the reaper deletes it.
STOPPED_STATES = frozenset({"STOPPED", "SUSPENDED", "TERMINATED"})
_ANY_HOST = ("0.0.0.0", "*", "[::]")
# (growth settings, endpoint nodes dial, bootstrap token, state dir) -> the provider
ProviderMaker = Callable[[GrowthConfig, str, str, Path], NodeProvider]


class Grower:
    """Growth's instructions, carried out. `send` sends what the scheduler returns."""

    def __init__(self, config: GrowthConfig, scheduler: Scheduler, send: Callable[[Out], None],
                 make_provider: ProviderMaker = factory.provider_for) -> None:
        self.config = config
        self.make_provider = make_provider
        self.growth = Growth(config.limits, factory.catalog_for(config), config.name_prefix)
        self.scheduler = scheduler
        scheduler.could_grow = self.growth.could_help
        self.send = send
        self.provider: NodeProvider | None = None
        self.pool: ProviderPool | None = None
        self.endpoint = ""  # what nodes dial, once known
        self.wake = asyncio.Event()
        self.nodes: dict[str, Node] = {}  # what the provider said of each node (its zone)
        self.booting_now: set[str] = set()  # names whose create call has not returned
        self.doomed: set[str] = set()  # deleted while their create call ran: delete once made
        self.deleting_now: set[str] = set()  # names whose delete call has not returned
        self.deleted_at: dict[str, float] = {}  # names deleted lately, left to their delete
        self.listed = False  # a listing succeeded: the nodes of a previous run are adopted
        self.tasks: asyncio.TaskGroup | None = None

    def poke(self) -> None:
        """Something growth decides on changed (a job, a node): step soon."""
        self.wake.set()

    async def run(self, bound_endpoint: str, token: str, state_dir: Path) -> None:
        """Reap, then step until cancelled (the coordinator stops); then stop the pool."""
        # On threads: a host name lookup may wait on DNS, and the gce provider's first import
        # (google-cloud-compute) takes a while.
        self.endpoint = await asyncio.to_thread(advertised_endpoint, self.config, bound_endpoint)
        self.provider = await asyncio.to_thread(self.make_provider, self.config, self.endpoint,
                                                token, state_dir)
        self.pool = ProviderPool(self.provider)
        log.info("growth_ready", provider=self.config.provider, cluster=self.config.cluster_name,
                 nodes_dial=self.endpoint)
        try:
            async with asyncio.TaskGroup() as tasks:
                self.tasks = tasks
                await self.reap()
                next_reap = time.monotonic() + (self.config.reap_interval if self.listed
                                                else REAP_RETRY_SECONDS)
                while True:
                    self.step()
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                    # that comes as the wait ends, and the coordinator would never stop.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(STEP_SECONDS):
                            await self.wake.wait()
                    self.wake.clear()
                    await asyncio.sleep(MIN_STEP_GAP_SECONDS)
                    if time.monotonic() >= next_reap:
                        tasks.create_task(self.reap())
                        next_reap = time.monotonic() + self.config.reap_interval
        finally:
            self.close()

    def close(self) -> None:
        """Stop the pool's queued calls; a provider whose nodes are this machine's processes
        (local) stops them too."""
        if self.pool is not None:
            self.pool.close()
        closer = getattr(self.provider, "close", None)
        if closer is not None:
            closer()

    # --- a step ---------------------------------------------------------------------------

    def step(self) -> None:
        scheduler, growth = self.scheduler, self.growth
        jobs = [JobView.of(job, job.grow) for job in scheduler.jobs.values()]
        decision = growth.step(time.monotonic(), jobs, scheduler.nodes.values())
        scheduler.draining = growth.draining()
        out: Out = []
        for instruction in decision.instructions:
            if isinstance(instruction, Boot):
                self._spawn(self.boot(instruction))
            elif isinstance(instruction, Delete):
                self._spawn(self.delete(instruction.name, instruction.reason))
            elif isinstance(instruction, GiveUp):
                out += scheduler.give_up(instruction.job_id, instruction.reason)
        for job_id, said in decision.jobs.items():
            out += scheduler.growth_said(job_id, said.status, bool(said.booting))
        self.send(out)

    def _spawn(self, work: Any) -> None:
        assert self.tasks is not None, "the grower steps only inside run()"
        self.tasks.create_task(work)

    # --- instructions ---------------------------------------------------------------------

    async def boot(self, boot: Boot) -> None:
        assert self.pool is not None
        config = self.config
        request = NodeRequest(boot.machine_type, boot.count, spot=config.spot,
                              spot_fallback=config.spot_fallback, gpu=boot.shape.func_gpu,
                              names=boot.names, python_version=boot.shape.python_version)
        notes = _Notes()

        def on_step(step: BootStep) -> None:
            self.growth.boot_note(boot.names, notes.say(step))
            self.poke()

        self.booting_now.update(boot.names)
        log.info("boot_requested", request=request.describe(), names=list(boot.names),
                 jobs=list(boot.job_ids))
        try:
            report = await self.pool.create(request, on_step)
        except Exception as exc:  # a provider's bug: the boot failed, the coordinator goes on
            log.exception("boot_crashed", request=request.describe())
            self.booting_now.difference_update(boot.names)
            self.growth.boot_failed(boot.names, f"booting {request.describe()} failed: "
                                                f"{type(exc).__name__}: {exc}", time.monotonic())
            self.poke()
            return
        self.booting_now.difference_update(boot.names)
        made = {node.name for node in report.nodes}
        for node in report.nodes:
            self.nodes[node.name] = node
        missing = [name for name in boot.names if name not in made]
        if missing:
            reason = str(report.error) if report.error is not None else (
                f"the provider made {len(made)} of {request.describe()}")
            self.growth.boot_failed(missing, reason, time.monotonic())
        for name in sorted(self.doomed & set(boot.names)):  # timed out while it was made
            self.doomed.discard(name)
            self._spawn(self.delete(name, "growth stopped waiting for it while it was made"))
        self.poke()

    async def delete(self, name: str, reason: str) -> None:
        """Delete the node (not found counts as done), and forget it everywhere."""
        assert self.pool is not None
        if name in self.booting_now:  # its create call is still running: delete once made
            self.doomed.add(name)
            return
        if name in self.deleting_now:  # asked twice (growth and the reaper): once is enough
            return
        self.deleting_now.add(name)
        try:
            node = self.nodes.get(name)
            if node is None:
                node = next((n for n in await self.pool.list_nodes() if n.name == name), None)
            if node is not None:
                await self.pool.delete(node)
        except Exception as exc:  # it stays counted as deleting; the reaper tries again later
            log.warning("node_delete_failed", node=name, reason=reason, error=str(exc))
            return
        finally:
            self.deleting_now.discard(name)
        log.info("node_deleted", node=name, reason=reason)
        self.nodes.pop(name, None)
        self.deleted_at[name] = time.monotonic()
        self.growth.deleted(name)
        self.send(self.scheduler.lose_node(name, f"deleted: {reason}"))
        self.poke()

    async def reap(self) -> None:
        """Adopt the running nodes of a previous run (at the first listing) and nodes whose
        agents registered; delete stopped nodes, and labelled ones nobody knows."""
        assert self.pool is not None
        try:
            listed = await self.pool.list_nodes()
        except Exception as exc:
            log.warning("reap_list_failed", error=str(exc))
            return
        now = time.monotonic()
        for name, when in list(self.deleted_at.items()):
            if now - when >= DELETE_GRACE_SECONDS:
                del self.deleted_at[name]
        known = self.growth.known()
        adopt: list[str] = []
        for node in listed:
            self.nodes.setdefault(node.name, node)
            if node.name in self.deleted_at:
                continue  # its delete is under way
            if node.status in STOPPED_STATES:
                self._spawn(self.delete(node.name, f"the reaper found it {node.status}"))
            elif node.name in known:
                continue
            elif not self.listed or node.name in self.scheduler.nodes:
                adopt.append(node.name)
            else:
                self._spawn(self.delete(node.name, f"the reaper found it labelled for cluster "
                                                   f"{self.config.cluster_name}, but this "
                                                   f"coordinator does not know it"))
        if adopt:
            log.info("nodes_adopted", names=adopt)
            self.growth.adopt(adopt, now)
        self.listed = True
        self.poke()

    # --- what `burla status` shows --------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        growth = self.growth
        return {
            "provider": self.config.provider,
            "cluster": self.config.cluster_name,
            "nodes_dial": self.endpoint,
            "listed": self.listed,  # the reaper has seen the cluster's nodes once
            "booting": [{"name": b.name, "machine_type": b.machine.name or "?",
                         "age_seconds": round(now - b.since, 1), "note": b.note}
                        for b in growth.booting.values()],
            "grown": sorted(growth.grown),
            "deleting": sorted(growth.draining()),
        }


class _Notes:
    """What one boot's steps say, as growth's note on its nodes: the latest step, keeping
    the words of a zone failover once the VMs are made elsewhere."""

    def __init__(self) -> None:
        self.moved = ""

    def say(self, step: BootStep) -> str:
        if step.kind in ("moving", "fallback"):
            self.moved = step.detail
        if step.kind == "created" and self.moved:
            return f"{self.moved}; {step.detail}"
        return step.detail


def advertised_endpoint(config: GrowthConfig, bound: str) -> str:
    """What new nodes dial: --advertise-endpoint, else the bound endpoint, with a wildcard
    host replaced by this machine's address (loopback for local nodes)."""
    if config.advertise_endpoint:
        return config.advertise_endpoint
    host, _, port = bound.removeprefix("tcp://").rpartition(":")
    if host in _ANY_HOST:
        host = "127.0.0.1" if config.provider == "local" else internal_ip()
    return f"tcp://{host}:{port}"


def internal_ip() -> str:
    """This machine's address on its default route (on a GCE VM, its internal IP). A UDP
    socket's connect sends nothing; it only picks the route."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))
        return str(probe.getsockname()[0])
    return socket.gethostbyname(socket.gethostname())

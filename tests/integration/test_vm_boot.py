"""An inserted VM really boots: the fake Compute API's VM is a network namespace running the
real scripts/startup.sh, whose agent reads the stand-in metadata server, registers under its
instance name and runs a job; deleted, preempted or orphaned, it ends as a VM would."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemons import Cluster, PathNotifier

from burla import remote_parallel_map
from burla.coordinator.providers.base import Node, NodeRequest
from burla.coordinator.providers.gce import GceProvider
from burla.coordinator.providers.gce_config import GceConfig
from tests.fakes.compute import FakeCompute
from tests.fakes.vms import NamespaceVms, unavailable

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif(unavailable() is not None, reason=unavailable() or ""),
]

STARTUP_SCRIPT = Path(__file__).parents[2] / "scripts" / "startup.sh"
REGISTER_WITHIN_S = 60.0  # the startup script, an agent's start and its warm executor
ORPHAN_TIMEOUT_S = 4


@dataclass
class Cloud:
    cluster: Cluster
    fake: FakeCompute
    vms: NamespaceVms
    provider: GceProvider

    def boot(self, spot: bool = False) -> Node:
        report = self.provider.create(NodeRequest("n2-standard-2", 1, spot=spot))
        assert report.error is None and len(report.nodes) == 1, report
        return report.nodes[0]

    def registered(self, name: str) -> dict[str, Any]:
        """The coordinator's record of the agent `name`, once it registered."""
        found: dict[str, Any] = {}

        def seen() -> bool:
            found.update(next((n for n in self.cluster.status()["nodes"]
                               if n["agent_id"] == name), {}))
            return bool(found)

        wait_for(seen, REGISTER_WITHIN_S, f"VM {name}'s agent to register",
                 lambda: self.logs(name))
        return found

    def logs(self, name: str) -> str:
        root = self.vms.root / name
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in (root / "startup.log", root / "state" / "agent.log")
                         if p.exists()) + "\n" + self.cluster.logs()[-3000:]


def wait_for(done: Callable[[], bool], timeout: float, what: str,
             explain: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                 f"{explain()}")
        time.sleep(0.1)


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie is dead; is_running() tells a reused pid apart)."""
    left = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
    return left


def namespaces() -> set[str]:
    import subprocess

    shown = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split()[0] for line in shown.stdout.splitlines() if line.strip()}


@pytest.fixture
def make_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Cloud]]:
    """A coordinator on the VMs' network, the fake Compute API whose VMs boot in namespaces,
    and the real GCE provider on it. Afterwards: no VM in the fake, and nothing on the host."""
    made: list[tuple[Cluster, FakeCompute, NamespaceVms]] = []

    def make(**attributes: str) -> Cloud:
        vms = NamespaceVms(tmp_path / "vms", attributes)
        fake = FakeCompute(hooks=vms)
        vms.start(fake.url)
        fake.start()
        (tmp_path / "cluster").mkdir()
        cluster = Cluster(tmp_path / "cluster", notifier=PathNotifier(tmp_path))
        made.append((cluster, fake, vms))
        cluster.start_coordinator_at(f"tcp://{vms.host_address}:0")
        for key, value in cluster.env().items():
            monkeypatch.setenv(key, value)
        provider = GceProvider(GceConfig(
            project=fake.project, region="us-central1", cluster_name="vmtest",
            api_endpoint=fake.url, coordinator_endpoint=cluster.endpoint, token=cluster.token,
            startup_script=STARTUP_SCRIPT.read_text(), retry_initial_s=0.01,
            operation_timeout_s=60.0))
        return Cloud(cluster, fake, vms, provider)

    yield make
    for cluster, fake, vms in made:
        left_in_fake = [vm.name for vm in fake.vms()]
        fake.close()
        vms.close()
        cluster.stop()
        assert not left_in_fake, f"VMs left in the fake: {left_in_fake}"
        assert not vms.leftovers(), f"left on this host: {vms.leftovers()}"


def where_am_i(x: int) -> tuple[int, str]:
    import os

    return x * 2, os.readlink("/proc/self/ns/net")


def test_inserted_vm_boots_runs_a_job_and_its_deletion_ends_it(make_cloud):
    cloud = make_cloud()
    node = cloud.boot()
    machine = cloud.vms.machine(node.name)
    assert machine is not None, f"the fake booted no machine for {node.name}"

    record = cloud.registered(node.name)  # under the instance name, as the coordinator needs
    assert record["cpus"] == 1
    reads = {path for address, path in cloud.vms.metadata.reads if address == machine.address}
    assert "/computeMetadata/v1/instance/attributes/burla-coordinator" in reads
    assert "/computeMetadata/v1/instance/name" in reads

    results = remote_parallel_map(where_am_i, range(20), spinner=False)
    vm_net = f"net:[{os.stat(f'/run/netns/{machine.namespace}').st_ino}]"
    assert [value for value, _ in results] == [x * 2 for x in range(20)]
    assert {net for _, net in results} == {vm_net}, "the calls did not run inside the VM"

    pids = machine.pids()
    assert machine.process is not None and machine.process.pid in pids
    processes = [psutil.Process(pid) for pid in pids]
    cloud.provider.delete(node)
    wait_for(lambda: not cloud.fake.vms() and cloud.vms.ended, 60,
             "the deletion to end the VM's machine", lambda: cloud.logs(node.name))
    [ended] = cloud.vms.ended
    assert (ended.name, ended.preempted) == (node.name, False)
    assert ended.returncode == 0, f"the agent did not stop cleanly on SIGTERM:\n{ended.log}"
    assert "agent_stopping" in ended.log and "SIGTERM" in ended.log
    assert machine.namespace not in namespaces()
    assert not alive(processes), "processes of the deleted VM are still alive"


def test_preempted_vm_agent_is_sigkilled(make_cloud):
    cloud = make_cloud()
    node = cloud.boot(spot=True)
    cloud.registered(node.name)
    machine = cloud.vms.machine(node.name)
    assert machine is not None
    cloud.fake.preempt(node.name, node.zone)
    wait_for(lambda: bool(cloud.vms.ended), 60, "the preemption to end the VM's machine")
    [ended] = cloud.vms.ended
    assert ended.preempted and ended.returncode == -9, (ended.returncode, ended.log)
    assert not cloud.fake.vms(), "a preempted spot VM (termination action DELETE) stayed"
    assert machine.namespace not in namespaces()


@pytest.mark.slow  # about 8 s unloaded, most of it the orphan timeout; more on a busy machine
def test_orphaned_agent_deletes_its_own_vm(make_cloud):
    cloud = make_cloud(**{"burla-orphan-timeout": str(ORPHAN_TIMEOUT_S)})
    node = cloud.boot()
    cloud.registered(node.name)
    machine = cloud.vms.machine(node.name)
    assert machine is not None
    coordinator = cloud.cluster.coordinator
    assert coordinator is not None
    coordinator.kill()  # gone for good, without a word to its agents
    coordinator.wait(timeout=10)

    wait_for(lambda: not cloud.fake.vms() and cloud.vms.ended, 60,
             "the orphaned agent to delete its VM", lambda: cloud.logs(node.name))
    deletes = [(address, path) for address, method, path in cloud.vms.metadata.relayed
               if method == "DELETE"]
    assert [address for address, _ in deletes] == [machine.address], \
        "the deletion did not come from the VM itself"
    assert deletes[0][1].split("?")[0].endswith(f"/zones/{node.zone}/instances/{node.name}")
    [ended] = cloud.vms.ended
    assert "deleting_own_vm" in ended.log and "own_vm_delete_requested" in ended.log
    assert f"no coordinator for {ORPHAN_TIMEOUT_S}s" in ended.log

"""The GCE provider with the real google-cloud-compute client against the fake Compute API.

Create (insert and bulkInsert), list by label, delete, idempotent retries, spot, GPUs, scale.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from burla.coordinator.providers.base import CLUSTER_LABEL, Node, NodeRequest
from tests.fakes.compute import FakeCompute, FakeVm, VmHooks
from tests.integration.gce_harness import (
    CLUSTER,
    STARTUP_SCRIPT,
    provider_for,
    refuses_connections,
)

pytestmark = pytest.mark.timeout(60)


class Recorder(VmHooks):
    def __init__(self) -> None:
        self.booted_vms: list[str] = []
        self.gone_vms: list[tuple[str, bool]] = []
        self.changed = threading.Condition()

    def booted(self, vm: FakeVm) -> None:
        with self.changed:
            self.booted_vms.append(vm.name)
            self.changed.notify_all()

    def gone(self, vm: FakeVm, preempted: bool) -> None:
        with self.changed:
            self.gone_vms.append((vm.name, preempted))
            self.changed.notify_all()


@pytest.fixture
def hooks() -> Recorder:
    return Recorder()


@pytest.fixture
def fake(hooks: Recorder) -> Iterator[FakeCompute]:
    server = FakeCompute(hooks=hooks).start()
    yield server
    server.close()
    assert refuses_connections(server.url)


def test_a_few_nodes_are_inserted_one_by_one_labelled_with_metadata(fake: FakeCompute) -> None:
    report = provider_for(fake).create(NodeRequest("n2-standard-8", 2))

    assert report.error is None and report.missing == 0
    vms = fake.vms()
    assert sorted(n.name for n in report.nodes) == sorted(vm.name for vm in vms)
    assert fake.calls["instances.insert"] == 2 and fake.calls["instances.bulkInsert"] == 0
    for vm in vms:
        assert vm.labels[CLUSTER_LABEL] == CLUSTER
        assert vm.name.startswith(f"burla-{CLUSTER}-")
        assert vm.metadata == {"burla-coordinator": "tcp://10.128.0.1:5555",
                               "burla-token": "bootstrap-token", "startup-script": STARTUP_SCRIPT}
        assert vm.status == "RUNNING" and vm.machine_type == "n2-standard-8"
        assert vm.scheduling["provisioningModel"] == "STANDARD"
    ids = [request_id for call, request_id in fake.request_log if call == "insert"]
    assert len(ids) == 2 and all(ids) and len(set(ids)) == 2
    node = report.nodes[0]
    assert node.status == "RUNNING" and node.zone == "us-central1-a" and node.created_at > 0


def test_many_nodes_go_through_one_bulk_insert(fake: FakeCompute) -> None:
    report = provider_for(fake).create(NodeRequest("n2-standard-4", 10))

    assert report.error is None and len(report.nodes) == 10
    assert fake.calls["instances.bulkInsert"] == 1 and fake.calls["instances.insert"] == 0
    names = sorted(vm.name for vm in fake.vms())
    assert names == sorted(n.name for n in report.nodes)
    assert names[0].endswith("-0001") and names[-1].endswith("-0010")
    assert all(vm.labels[CLUSTER_LABEL] == CLUSTER for vm in fake.vms())
    assert all(vm.metadata["startup-script"] == STARTUP_SCRIPT for vm in fake.vms())


def test_list_shows_only_this_clusters_labelled_vms(fake: FakeCompute) -> None:
    fake.add_vm("someone-elses", "us-central1-a")
    fake.add_vm("other-cluster-vm", "us-central1-b", labels={CLUSTER_LABEL: "other"})
    fake.add_vm("our-stopped-vm", "us-central1-c", labels={CLUSTER_LABEL: CLUSTER},
                status="TERMINATED")
    provider = provider_for(fake)
    made = provider.create(NodeRequest("n2-standard-2", 2)).nodes

    listed = {node.name: node for node in provider.list_nodes()}

    assert set(listed) == {n.name for n in made} | {"our-stopped-vm"}
    assert listed["our-stopped-vm"].status == "TERMINATED"
    assert all(node.cluster == CLUSTER for node in listed.values())


def test_an_unlabelled_vm_is_never_deleted(fake: FakeCompute) -> None:
    fake.add_vm("someone-elses", "us-central1-a")
    stranger = Node("someone-elses", "us-central1-a", "RUNNING", "n2-standard-2")
    with pytest.raises(ValueError, match=r"refusing to delete VM someone-elses.*burla-cluster"):
        provider_for(fake).delete(stranger)
    assert [vm.name for vm in fake.vms()] == ["someone-elses"]
    assert fake.calls["instances.delete"] == 0


def test_delete_removes_the_vm_and_a_second_delete_is_fine(fake: FakeCompute,
                                                           hooks: Recorder) -> None:
    provider = provider_for(fake)
    node = provider.create(NodeRequest("n2-standard-2", 1)).nodes[0]

    provider.delete(node)

    assert fake.wait_until(lambda f: not f.vms())
    assert provider.list_nodes() == []
    provider.delete(node)  # already gone: not an error
    with hooks.changed:
        assert hooks.changed.wait_for(lambda: hooks.gone_vms == [(node.name, False)], 5)
    assert hooks.booted_vms == [node.name]


@pytest.mark.parametrize("count", [1, 10])
def test_a_retried_insert_reuses_its_request_id_and_makes_no_second_vm(fake: FakeCompute,
                                                                       count: int) -> None:
    fake.drop_replies(1)  # the insert is carried out, but its reply is lost (HTTP 503)

    report = provider_for(fake).create(NodeRequest("n2-standard-2", count))

    call = "insert" if count == 1 else "bulkInsert"
    assert fake.calls[f"instances.{call}"] == 2  # the retry happened
    ids = [request_id for kind, request_id in fake.request_log if kind == call]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert report.error is None and len(report.nodes) == count
    assert len(fake.vms()) == count


def test_spot_vms_are_deleted_on_preemption(fake: FakeCompute, hooks: Recorder) -> None:
    provider = provider_for(fake)
    node = provider.create(NodeRequest("n2-standard-2", 1, spot=True)).nodes[0]
    vm = fake.vms()[0]
    assert node.spot
    assert vm.scheduling == {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                             "onHostMaintenance": "TERMINATE", "automaticRestart": False}

    fake.preempt(node.name, node.zone)

    assert fake.vms() == [] and provider.list_nodes() == []
    with hooks.changed:
        assert hooks.changed.wait_for(lambda: hooks.gone_vms == [(node.name, True)], 5)


def test_gpu_vms_get_the_driver_image_and_stop_for_maintenance(fake: FakeCompute) -> None:
    report = provider_for(fake).create(NodeRequest("a2-highgpu-1g", 1, gpu="A100_40G"))

    assert report.error is None
    vm = fake.vms()[0]
    assert vm.scheduling["onHostMaintenance"] == "TERMINATE"
    image = vm.resource["disks"][0]["initializeParams"]["sourceImage"]
    assert "deeplearning-platform-release" in image
    assert vm.metadata["install-nvidia-driver"] == "True"


def test_cpu_vms_use_the_plain_image_and_live_migrate(fake: FakeCompute) -> None:
    provider_for(fake).create(NodeRequest("n2-standard-2", 1))
    vm = fake.vms()[0]
    assert vm.scheduling["onHostMaintenance"] == "MIGRATE"
    assert "debian-cloud" in vm.resource["disks"][0]["initializeParams"]["sourceImage"]
    assert "install-nvidia-driver" not in vm.metadata


def test_a_thousand_nodes_take_at_most_ten_api_calls(fake: FakeCompute) -> None:
    report = provider_for(fake).create(NodeRequest("n2-standard-8", 1000))

    assert report.error is None and len(report.nodes) == 1000
    assert len(fake.vms()) == 1000
    assert len({n.name for n in report.nodes}) == 1000
    assert fake.total_calls <= 10, fake.calls


def test_more_than_one_bulk_insert_holds_is_split(fake: FakeCompute,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("burla.coordinator.providers.gce_resources.BULK_MAX", 4)

    report = provider_for(fake).create(NodeRequest("n2-standard-2", 10))

    assert report.error is None and len(fake.vms()) == 10
    # 4 + 4 by bulkInsert, and the last 2 (under the bulk threshold) one by one.
    assert (fake.calls["instances.bulkInsert"], fake.calls["instances.insert"]) == (2, 2)

"""The fake Compute API itself, as the real google-cloud-compute client sees it.

Its operation life cycle, list filters and pages, zones and machine types, and HTTP errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from tests.fakes.compute import FakeCompute
from tests.integration.gce_harness import PROJECT, refuses_connections

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)
ZONE = "us-central1-a"


@pytest.fixture
def fake() -> Iterator[FakeCompute]:
    server = FakeCompute().start()
    yield server
    server.close()
    assert refuses_connections(server.url)


def client(fake: FakeCompute, kind: type[T]) -> T:
    make: Any = kind
    return make(credentials=AnonymousCredentials(), transport="rest",
                client_options={"api_endpoint": fake.url})


def insert(fake: FakeCompute, name: str, labels: dict[str, str] | None = None,
           request_id: str = "") -> compute_v1.Operation:
    vm = compute_v1.Instance(name=name, labels=labels or {},
                             machine_type=f"zones/{ZONE}/machineTypes/n2-standard-2")
    instances = client(fake, compute_v1.InstancesClient)
    return instances.insert_unary(request=compute_v1.InsertInstanceRequest(
        project=PROJECT, zone=ZONE, instance_resource=vm, request_id=request_id))


def test_an_operation_goes_pending_running_done(fake: FakeCompute) -> None:
    fake.slow(pending_s=0.2, running_s=0.2)
    operations = client(fake, compute_v1.ZoneOperationsClient)
    op = insert(fake, "vm-1", request_id="r-1")
    seen = [op.status]
    while op.status != compute_v1.Operation.Status.DONE:
        op = operations.get(project=PROJECT, zone=ZONE, operation=op.name)
        if op.status != seen[-1]:
            seen.append(op.status)
    status = compute_v1.Operation.Status
    assert seen == [status.PENDING, status.RUNNING, status.DONE]
    assert op.operation_type == "insert" and op.target_link.endswith("/instances/vm-1")
    assert op.end_time and not op.error.errors


def test_the_same_request_id_returns_the_same_operation(fake: FakeCompute) -> None:
    first = insert(fake, "vm-1", request_id="same")
    again = insert(fake, "vm-1", request_id="same")
    assert first.name == again.name
    with pytest.raises(exceptions.Conflict, match="already exists"):
        insert(fake, "vm-1", request_id="other")


@pytest.mark.parametrize("expression", [
    "labels.burla-cluster=mine",
    'labels.burla-cluster = "mine"',
    '(labels.burla-cluster = "mine") AND (status = RUNNING)',
    "labels.burla-cluster eq 'mi.e'",
])
def test_list_filters_on_labels(fake: FakeCompute, expression: str) -> None:
    insert(fake, "ours", {"burla-cluster": "mine"})
    insert(fake, "theirs", {"burla-cluster": "other"})
    insert(fake, "unlabelled")
    assert fake.wait_until(lambda f: all(vm.status == "RUNNING" for vm in f.vms()))
    instances = client(fake, compute_v1.InstancesClient)
    listed = instances.list(request=compute_v1.ListInstancesRequest(
        project=PROJECT, zone=ZONE, filter=expression))
    assert [vm.name for vm in listed] == ["ours"]


def test_a_filter_the_fake_cannot_read_is_refused_like_the_api_does(fake: FakeCompute) -> None:
    instances = client(fake, compute_v1.InstancesClient)
    with pytest.raises(exceptions.BadRequest, match="filter"):
        list(instances.list(request=compute_v1.ListInstancesRequest(
            project=PROJECT, zone=ZONE, filter="labels.a = b OR labels.c = d")))


def test_aggregated_list_pages(fake: FakeCompute) -> None:
    for n in range(5):
        insert(fake, f"vm-{n}", {"burla-cluster": "mine"})
    # An insert answers with its operation; the VM exists once the operation is done.
    assert fake.wait_until(lambda f: len(f.vms()) == 5 and all(
        vm.status == "RUNNING" for vm in f.vms()))
    instances = client(fake, compute_v1.InstancesClient)
    pages = instances.aggregated_list(request=compute_v1.AggregatedListInstancesRequest(
        project=PROJECT, filter="labels.burla-cluster = mine", max_results=2))
    names = sorted(vm.name for _, scoped in pages for vm in scoped.instances)
    assert names == [f"vm-{n}" for n in range(5)]
    assert fake.calls["instances.aggregatedList"] == 3


def test_zones_and_machine_types(fake: FakeCompute) -> None:
    zones = client(fake, compute_v1.ZonesClient)
    listed = [z.name for z in zones.list(project=PROJECT)]
    assert listed == ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"]
    zone = zones.get(project=PROJECT, zone=ZONE)
    assert zone.status == "UP" and zone.region.endswith("/regions/us-central1")
    types = client(fake, compute_v1.MachineTypesClient)
    a100 = types.get(project=PROJECT, zone=ZONE, machine_type="a2-highgpu-2g")
    assert (a100.guest_cpus, a100.memory_mb) == (24, 170 * 1024)
    assert a100.accelerators[0].guest_accelerator_type == "nvidia-tesla-a100"
    assert a100.accelerators[0].guest_accelerator_count == 2
    with pytest.raises(exceptions.NotFound):
        types.get(project=PROJECT, zone=ZONE, machine_type="e2-nothing")


def test_a_gpu_vm_that_would_live_migrate_is_refused(fake: FakeCompute) -> None:
    vm = compute_v1.Instance(name="gpu", machine_type=f"zones/{ZONE}/machineTypes/a2-highgpu-1g")
    instances = client(fake, compute_v1.InstancesClient)
    with pytest.raises(exceptions.BadRequest, match="live migration"):
        instances.insert_unary(project=PROJECT, zone=ZONE, instance_resource=vm)


def test_an_unknown_project_is_not_found(fake: FakeCompute) -> None:
    zones = client(fake, compute_v1.ZonesClient)
    with pytest.raises(exceptions.NotFound, match="projects/elsewhere"):
        list(zones.list(project="elsewhere"))

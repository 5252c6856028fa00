"""The GCE provider boots VMs under the names growth gives (each agent registers under its
VM's name): by insert, by bulkInsert, and across zones when one zone makes only some."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import burla
from burla.coordinator.providers.base import NodeRequest
from tests.fakes.compute import FakeCompute
from tests.integration.gce_harness import provider_for

pytestmark = pytest.mark.timeout(60)
NAMES = tuple(f"burla-testc-{n}" for n in range(1, 6))


@pytest.fixture
def fake() -> Iterator[FakeCompute]:
    server = FakeCompute().start()
    yield server
    server.close()


def test_a_few_named_nodes_are_inserted_under_their_names_with_version_and_python(
        fake: FakeCompute) -> None:
    request = NodeRequest("n2-standard-8", 2, names=NAMES[:2], python_version="3.12")
    report = provider_for(fake).create(request)
    assert report.error is None and [n.name for n in report.nodes] == list(NAMES[:2])
    assert fake.calls["instances.insert"] == 2
    for vm in fake.vms():
        assert vm.metadata["burla-version"] == burla.__version__
        assert vm.metadata["burla-python"] == "3.12"


def test_many_named_nodes_go_through_one_bulk_insert_under_their_names(
        fake: FakeCompute) -> None:
    report = provider_for(fake).create(NodeRequest("n2-standard-4", 5, names=NAMES))
    assert report.error is None
    assert fake.calls["instances.bulkInsert"] == 1 and fake.calls["instances.insert"] == 0
    assert sorted(vm.name for vm in fake.vms()) == sorted(NAMES)


def test_names_a_zone_could_not_make_are_made_in_the_next(fake: FakeCompute) -> None:
    fake.set_capacity("us-central1-a", 2)
    provider = provider_for(fake, zones=("us-central1-a", "us-central1-b"))
    report = provider.create(NodeRequest("n2-standard-4", 5, names=NAMES))
    assert report.error is None and sorted(n.name for n in report.nodes) == sorted(NAMES)
    made = {zone: sorted(vm.name for vm in fake.vms(zone))
            for zone in ("us-central1-a", "us-central1-b")}
    assert len(made["us-central1-a"]) == 2 and len(made["us-central1-b"]) == 3
    assert sorted(made["us-central1-a"] + made["us-central1-b"]) == sorted(NAMES)


def test_a_request_names_one_distinct_name_per_node_or_none() -> None:
    with pytest.raises(ValueError, match="for 2 nodes names 1"):
        NodeRequest("n2-standard-4", 2, names=("a",))
    with pytest.raises(ValueError, match=r"names 2 \(1 different\)"):
        NodeRequest("n2-standard-4", 2, names=("a", "a"))

"""GCE zone failover with the real client against the fake API: what each error leads to.

Stockouts move to the next zone, quota and permission errors stop and are named, slow
operations still finish, spot falls back to standard, and nothing waits forever.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from burla.coordinator.providers.base import (
    NoCapacity,
    NodeRequest,
    OperationTimedOut,
    PermissionDenied,
    QuotaExceeded,
)
from tests.fakes.compute import FakeCompute
from tests.integration.gce_harness import Steps, provider_for, refuses_connections

pytestmark = pytest.mark.timeout(60)
ZONES = ("us-central1-a", "us-central1-b")


@pytest.fixture
def fake() -> Iterator[FakeCompute]:
    server = FakeCompute().start()
    yield server
    server.close()
    assert refuses_connections(server.url)


@pytest.mark.parametrize("code", ["ZONE_RESOURCE_POOL_EXHAUSTED",
                                  "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"])
@pytest.mark.parametrize("count", [2, 10])
def test_a_stockout_moves_to_the_second_zone(fake: FakeCompute, code: str, count: int) -> None:
    fake.stockout("us-central1-a", code=code)
    steps = Steps()

    report = provider_for(fake, zones=ZONES).create(NodeRequest("n2-standard-8", count), steps)

    assert report.error is None and len(report.nodes) == count
    assert {n.zone for n in report.nodes} == {"us-central1-b"}
    assert fake.vms("us-central1-a") == []
    assert steps.words()[:2] == [
        f"booting {count}× n2-standard-8: trying us-central1-a",
        f"booting {count}× n2-standard-8: us-central1-a exhausted, trying us-central1-b"]
    assert steps.words()[-1] == f"booting {count}× n2-standard-8: {count} VMs started in " \
                                "us-central1-b"


@pytest.mark.parametrize("code", ["UNSUPPORTED_OPERATION", "RESOURCE_NOT_READY"])
def test_a_zone_that_cannot_take_it_now_moves_on(fake: FakeCompute, code: str) -> None:
    fake.fail_inserts(code, "The zone cannot take this request now.", "us-central1-a")
    steps = Steps()

    report = provider_for(fake, zones=ZONES).create(NodeRequest("n2-standard-2", 1), steps)

    assert report.error is None and report.nodes[0].zone == "us-central1-b"
    assert f"us-central1-a can't take it now ({code}), trying us-central1-b" in steps.words()[1]


def test_a_zone_that_runs_out_part_way_gives_what_it_has(fake: FakeCompute) -> None:
    fake.set_capacity("us-central1-a", 4)
    steps = Steps()

    report = provider_for(fake, zones=ZONES).create(NodeRequest("n2-standard-2", 10), steps)

    assert report.error is None
    assert sorted(n.zone for n in report.nodes) == ["us-central1-a"] * 4 + ["us-central1-b"] * 6
    assert "us-central1-a had room for 4, trying us-central1-b" in " | ".join(steps.words())


def test_a_zone_that_does_not_offer_the_type_is_skipped(fake: FakeCompute) -> None:
    fake.offers["us-central1-a"].discard("a2-ultragpu-1g")

    report = provider_for(fake, zones=ZONES).create(NodeRequest("a2-ultragpu-1g", 1))

    assert report.nodes[0].zone == "us-central1-b"
    assert fake.calls["instances.insert"] == 1


def test_quota_stops_the_boot_and_names_the_quota(fake: FakeCompute) -> None:
    fake.exceed_quota("NVIDIA_A100_GPUS", 8.0, metric="compute.googleapis.com/nvidia_a100_gpus")
    steps = Steps()

    report = provider_for(fake).create(NodeRequest("a2-highgpu-1g", 2, gpu="A100_40G"), steps)

    error = report.error
    assert isinstance(error, QuotaExceeded) and report.nodes == ()
    assert (error.quota, error.region, error.limit) == ("NVIDIA_A100_GPUS", "us-central1", 8.0)
    assert error.metric == "compute.googleapis.com/nvidia_a100_gpus"
    assert "'NVIDIA_A100_GPUS'" in str(error) and "Quotas" in str(error)
    assert fake.calls["instances.insert"] == 2  # one zone only: the region has no more
    assert fake.vms() == [] and not any("trying us-central1-b" in w for w in steps.words())
    assert steps.words()[-1].endswith("quota 'NVIDIA_A100_GPUS' exhausted in us-central1, stopped")


def test_a_refused_call_names_the_missing_permission(fake: FakeCompute) -> None:
    fake.deny("compute.instances.create")

    report = provider_for(fake).create(NodeRequest("n2-standard-2", 1))

    assert isinstance(report.error, PermissionDenied)
    assert report.error.permission == "compute.instances.create"
    assert "compute.instances.create" in str(report.error) and "role" in str(report.error)
    assert fake.calls["instances.insert"] == 1  # not retried, and no other zone tried


def test_a_permission_error_inside_the_operation_is_named_too(fake: FakeCompute) -> None:
    fake.deny("compute.disks.create", in_operation=True)

    report = provider_for(fake).create(NodeRequest("n2-standard-2", 1))

    assert isinstance(report.error, PermissionDenied)
    assert report.error.permission == "compute.disks.create"
    assert fake.vms() == []


def test_list_permission_is_named(fake: FakeCompute) -> None:
    fake.deny("compute.instances.list")
    with pytest.raises(PermissionDenied, match="compute.instances.list"):
        provider_for(fake).list_nodes()


def test_slow_operations_are_waited_for_to_the_end(fake: FakeCompute) -> None:
    fake.slow(pending_s=0.3, running_s=0.6)
    fake.wait_cap_s = 0.2  # each wait returns before the operation is done

    report = provider_for(fake).create(NodeRequest("n2-standard-2", 5))

    assert report.error is None and len(report.nodes) == 5
    assert fake.calls["zoneOperations.wait"] >= 3


def test_an_operation_that_never_ends_stops_at_the_timeout(fake: FakeCompute) -> None:
    fake.slow(running_s=3600)
    fake.wait_cap_s = 0.1

    report = provider_for(fake, operation_timeout_s=0.5).create(NodeRequest("n2-standard-2", 1))

    assert isinstance(report.error, OperationTimedOut)
    assert "did not finish in 0.5 s" in str(report.error)


def test_no_capacity_anywhere_lists_what_was_tried(fake: FakeCompute) -> None:
    fake.stockout()

    report = provider_for(fake, zones=ZONES).create(NodeRequest("n2-standard-8", 3))

    error = report.error
    assert isinstance(error, NoCapacity)
    assert [(a.zone, a.code) for a in error.attempts] == [
        ("us-central1-a", "ZONE_RESOURCE_POOL_EXHAUSTED"),
        ("us-central1-b", "ZONE_RESOURCE_POOL_EXHAUSTED")]
    assert ("tried us-central1-a (standard): ZONE_RESOURCE_POOL_EXHAUSTED; us-central1-b "
            "(standard): ZONE_RESOURCE_POOL_EXHAUSTED") in str(error)


def test_a_spot_stockout_falls_back_to_standard_vms(fake: FakeCompute) -> None:
    fake.stockout(spot=True)
    steps = Steps()
    request = NodeRequest("n2-standard-2", 2, spot=True, spot_fallback=True)

    report = provider_for(fake, zones=ZONES).create(request, steps)

    assert report.error is None and len(report.nodes) == 2
    assert not any(n.spot for n in report.nodes)
    assert {vm.scheduling["provisioningModel"] for vm in fake.vms()} == {"STANDARD"}
    assert ("booting 2× n2-standard-2 spot: no spot capacity in us-central1-a, us-central1-b; "
            "trying standard VMs") in steps.words()


def test_without_fallback_a_spot_stockout_is_no_capacity(fake: FakeCompute) -> None:
    fake.stockout(spot=True)

    report = provider_for(fake, zones=ZONES).create(NodeRequest("n2-standard-2", 2, spot=True))

    assert isinstance(report.error, NoCapacity) and fake.vms() == []
    assert {a.spot for a in report.error.attempts} == {True}


def test_a_zone_that_just_stocked_out_is_tried_last_next_time(fake: FakeCompute) -> None:
    fake.stockout("us-central1-a", times=1)
    provider = provider_for(fake, zones=ZONES)
    provider.create(NodeRequest("n2-standard-2", 1))
    steps = Steps()

    provider.create(NodeRequest("n2-standard-2", 1), steps)

    assert steps.words()[0] == "booting 1× n2-standard-2: trying us-central1-b"

"""An orphaned agent's call that deletes its own VM, against the fake Compute API: accepted,
retried past a lost reply without a second delete, already gone, or refused (logged, not
raised)."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from burla.agent import vm
from burla.agent.metadata import VmIdentity
from tests.fakes.compute import FakeCompute

pytestmark = pytest.mark.timeout(60)
ZONE = "us-central1-a"


@pytest.fixture
def fake():
    with FakeCompute() as api:
        yield api


def identity(fake: FakeCompute, name: str = "burla-c-1-0001") -> VmIdentity:
    return VmIdentity(fake.project, ZONE, name, fake.url)


def test_it_deletes_its_own_vm_and_no_other(fake):
    fake.add_vm("burla-c-1-0001", ZONE, {"burla-cluster": "c"})
    fake.add_vm("burla-c-1-0002", ZONE, {"burla-cluster": "c"})
    with structlog.testing.capture_logs() as logs:
        assert asyncio.run(vm.delete_own(identity(fake), "no coordinator for 600s"))
    assert fake.wait_until(lambda f: [v.name for v in f.vms()] == ["burla-c-1-0002"])
    events = [entry["event"] for entry in logs]
    assert events == ["deleting_own_vm", "own_vm_delete_requested"]
    assert logs[0]["reason"] == "no coordinator for 600s"


def test_a_lost_reply_is_retried_with_the_same_request_id(fake):
    fake.add_vm("burla-c-1-0001", ZONE)
    fake.drop_replies(1)
    assert vm.delete_own_vm(identity(fake), "orphaned")
    assert fake.wait_until(lambda f: not f.vms())
    deletes = [request_id for call, request_id in fake.request_log if call == "delete"]
    assert len(deletes) == 2 and len(set(deletes)) == 1 and deletes[0]


def test_a_vm_gone_already_is_not_an_error(fake):
    with structlog.testing.capture_logs() as logs:
        assert vm.delete_own_vm(identity(fake), "orphaned")
    assert [entry["event"] for entry in logs][-1] == "own_vm_gone_already"


def test_a_refused_delete_is_logged_not_raised(fake):
    fake.add_vm("burla-c-1-0001", ZONE)
    fake.deny("compute.instances.delete")
    with structlog.testing.capture_logs() as logs:
        assert not vm.delete_own_vm(identity(fake), "orphaned")
    [failed] = [entry for entry in logs if entry["event"] == "own_vm_delete_failed"]
    assert "compute.instances.delete" in failed["error"]
    assert [v.name for v in fake.vms()] == ["burla-c-1-0001"]


def test_an_orphaned_agent_off_gce_only_stops(make_cluster):
    cluster = make_cluster(agent_args=("--orphan-timeout", "3"))
    [agent] = cluster.agents
    assert cluster.coordinator is not None
    cluster.coordinator.kill()
    cluster.coordinator.wait(timeout=10)
    assert agent.wait(timeout=30) == 0
    log = (cluster.root / "agent0.log").read_text()
    assert "no coordinator for 3s" in log and "deleting_own_vm" not in log

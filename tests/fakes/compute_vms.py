"""The fake Compute API's instances and operations, and how an insert body becomes a VM."""

from __future__ import annotations

import copy
import hashlib
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.fakes.compute_faults import InsertFault
from tests.fakes.compute_http import ApiError

PACIFIC = timezone(timedelta(hours=-7))  # the API writes its timestamps in Pacific time
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_MACHINE_TYPE = re.compile(r"(?:.*/)?zones/([^/]+)/machineTypes/([^/]+)")


def timestamp(at: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if at is None else at, PACIFIC)
    return moment.isoformat(timespec="milliseconds")


def numeric_id(text: str) -> str:
    return str(int(hashlib.sha1(text.encode()).hexdigest()[:15], 16))


@dataclass
class FakeVm:
    """One instance: where it is, and its resource exactly as the API returns it."""

    project: str
    zone: str
    name: str
    resource: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.resource["status"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.resource.get("labels", {}))

    @property
    def metadata(self) -> dict[str, str]:
        items = self.resource.get("metadata", {}).get("items", [])
        return {item["key"]: item.get("value", "") for item in items}

    @property
    def scheduling(self) -> dict[str, Any]:
        return dict(self.resource.get("scheduling", {}))

    @property
    def spot(self) -> bool:
        return self.scheduling.get("provisioningModel") == "SPOT"

    @property
    def machine_type(self) -> str:
        return str(self.resource["machineType"]).rsplit("/", 1)[-1]


class VmHooks:
    """What the fake tells a harness about its VMs; override what you need.

    Calls come in order, on one thread of the fake, never under its lock (a hook may call the
    API). `close()` delivers every call still queued before it returns.
    """

    def booted(self, vm: FakeVm) -> None:
        """An insert finished and the VM is RUNNING: start its "machine" here."""

    def gone(self, vm: FakeVm, preempted: bool) -> None:
        """The VM was deleted, or preempted (stop its machine: SIGKILL when preempted)."""


@dataclass
class FakeOperation:
    """A zonal operation and what happens when it moves on."""

    project: str
    zone: str
    resource: dict[str, Any]
    running_at: float
    done_at: float
    creates: list[FakeVm] = field(default_factory=list)
    deletes: FakeVm | None = None
    fault: InsertFault | None = None

    @property
    def status(self) -> str:
        return str(self.resource["status"])



def build_vm(url: str, project: str, zone: str, name: str, body: dict[str, Any],
         offers: set[str], ip: int) -> FakeVm:
    """The instance an insert body describes, checked the way the API checks it."""
    if not _NAME.fullmatch(name):
        raise ApiError(400, f"Invalid value for field 'resource.name': '{name}'. Must be a "
                            "match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
    for key, value in (body.get("labels") or {}).items():
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(str(value)):
            raise ApiError(400, f"Invalid value for field 'resource.labels': "
                                f"'{key}={value}'.")
    match = _MACHINE_TYPE.fullmatch(str(body.get("machineType", "")))
    if not match or match.group(1) != zone or match.group(2) not in offers:
        raise ApiError(400, f"Invalid value for field 'resource.machineType': "
                            f"'{body.get('machineType')}'. Machine type does not exist in "
                            f"zone '{zone}'.")
    scheduling = _scheduling(match.group(2), dict(body.get("scheduling") or {}))
    base = f"{url}/compute/v1/projects/{project}/zones/{zone}"
    resource = {**copy.deepcopy(body), "kind": "compute#instance", "name": name,
                "id": numeric_id(f"{zone}/{name}/{time.time()}"),
                "creationTimestamp": timestamp(), "zone": base, "status": "PROVISIONING",
                "machineType": f"{base}/machineTypes/{match.group(2)}",
                "scheduling": scheduling, "selfLink": f"{base}/instances/{name}"}
    nics = resource.get("networkInterfaces") or [{"network": "global/networks/default"}]
    resource["networkInterfaces"] = [{**nic, "name": f"nic{i}",
                                      "networkIP": f"10.128.{ip // 250}.{ip % 250 + 2}"}
                                     for i, nic in enumerate(nics)]
    return FakeVm(project, zone, name, resource)

def _scheduling(machine: str, scheduling: dict[str, Any]) -> dict[str, Any]:
    spot = scheduling.get("provisioningModel") == "SPOT"
    scheduling.setdefault("provisioningModel", "STANDARD")
    scheduling.setdefault("onHostMaintenance", "TERMINATE" if spot else "MIGRATE")
    scheduling.setdefault("automaticRestart", not spot)
    if spot and scheduling["automaticRestart"]:
        raise ApiError(400, "Invalid value for field 'resource.scheduling.automaticRestart'"
                            ": 'true'. Spot instances cannot be set to restart "
                            "automatically.")
    gpu = machine.startswith(("a2-", "a3-"))
    if (spot or gpu) and scheduling["onHostMaintenance"] != "TERMINATE":
        raise ApiError(400, "Invalid value for field 'resource.scheduling.onHostMaintenance'"
                            f": '{scheduling['onHostMaintenance']}'. Instances with guest "
                            "accelerators or Spot VMs do not support live migration.")
    return scheduling

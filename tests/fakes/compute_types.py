"""The fake Compute API's zones and machine types, as the real API writes them."""

from __future__ import annotations

from typing import Any

from burla.coordinator.providers import catalog
from tests.fakes.compute_http import ApiError

# The accelerator type names GCE gives each GPU.
ACCELERATORS = {"A100_40G": "nvidia-tesla-a100", "A100_80G": "nvidia-a100-80gb",
                "H100_80G": "nvidia-h100-80gb"}


def offered_types() -> set[str]:
    """What each zone offers unless a test says otherwise: every type burla's catalog knows."""
    return set(catalog.MACHINE_TYPES)


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def zone_json(url: str, project: str, zone: str) -> dict[str, Any]:
    base = f"{url}/compute/v1/projects/{project}"
    return {
        "kind": "compute#zone", "id": str(2000 + sum(map(ord, zone))),
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": zone,
        "description": zone, "status": "UP", "region": f"{base}/regions/{region_of(zone)}",
        "selfLink": f"{base}/zones/{zone}", "supportsPzs": False,
        "availableCpuPlatforms": ["Intel Cascade Lake", "Intel Ice Lake", "AMD Milan"],
    }


def machine_type_json(url: str, project: str, zone: str, name: str) -> dict[str, Any]:
    try:
        mt = catalog.MACHINE_TYPES[name]
    except KeyError:
        raise ApiError(404, f"The resource 'projects/{project}/zones/{zone}/machineTypes/"
                            f"{name}' was not found") from None
    body: dict[str, Any] = {
        "kind": "compute#machineType", "id": str(900000 + sum(map(ord, name))),
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": name,
        "description": f"{mt.cpus} vCPUs, {mt.ram_gb} GB RAM", "guestCpus": mt.cpus,
        "memoryMb": mt.ram_gb * 1024, "imageSpaceGb": 0, "maximumPersistentDisks": 128,
        "maximumPersistentDisksSizeGb": "263168", "zone": zone, "isSharedCpu": False,
        "selfLink": f"{url}/compute/v1/projects/{project}/zones/{zone}/machineTypes/{name}",
    }
    if mt.gpu_type:
        body["accelerators"] = [{"guestAcceleratorType": ACCELERATORS[mt.gpu_type],
                                 "guestAcceleratorCount": mt.gpus}]
    return body

"""The fake Compute API's zones and machine types (as the real API writes them), and routes."""

from __future__ import annotations

from typing import Any

from burla.coordinator.providers import catalog
from tests.fakes.compute_http import (
    ApiError,
    Request,
    aggregated_body,
    list_body,
    matches,
    page,
    parse_filter,
)

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


class ZoneRoutes:
    """FakeCompute's routes for zones and machine types, and the project check all share."""

    project: str
    zones: list[str]
    offers: dict[str, set[str]]

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _project(self, request: Request) -> None:
        if request.fields["project"] != self.project:
            raise ApiError(404, f"The resource 'projects/{request.fields['project']}' was not "
                                "found")
        zone = request.fields.get("zone")
        if zone is not None and zone not in self.zones:
            raise ApiError(400, f"Invalid value for field 'zone': '{zone}'. Unknown zone.")

    def list_zones(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        terms = parse_filter(request.query.get("filter", ""))
        zones = [z for z in (zone_json(self.url, self.project, name) for name in self.zones)
                 if matches(z, terms)]
        items, token = page(zones, request.query)
        return 200, list_body("compute#zoneList", items, token)

    def get_zone(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        return 200, zone_json(self.url, self.project, request.fields["zone"])

    def list_machine_types(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        zone = request.fields["zone"]
        terms = parse_filter(request.query.get("filter", ""))
        types = [t for t in (machine_type_json(self.url, self.project, zone, name)
                             for name in sorted(self.offers[zone])) if matches(t, terms)]
        items, token = page(types, request.query)
        return 200, list_body("compute#machineTypeList", items, token)

    def get_machine_type(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        zone, name = request.fields["zone"], request.fields["name"]
        if name not in self.offers[zone]:
            raise ApiError(404, f"The resource 'projects/{self.project}/zones/{zone}/"
                                f"machineTypes/{name}' was not found")
        return 200, machine_type_json(self.url, self.project, zone, name)

    def aggregated_machine_types(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        terms = parse_filter(request.query.get("filter", ""))
        found = [(zone, t) for zone in self.zones for name in sorted(self.offers[zone])
                 if matches(t := machine_type_json(self.url, self.project, zone, name), terms)]
        return 200, aggregated_body("compute#machineTypeAggregatedList", "machineTypes", self.zones,
                                found, request.query)

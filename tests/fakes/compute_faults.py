"""Faults the fake Compute API injects: stockouts, quota, permissions, slowness, lost replies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.fakes.compute_http import ApiError

STOCKOUT_CODES = ("ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS")
_HTTP_MESSAGES = {400: "BAD REQUEST", 403: "FORBIDDEN", 503: "SERVICE UNAVAILABLE"}


@dataclass
class InsertFault:
    """An error an insert's operation ends with, in the zones (and provisioning model) named.

    `times` is how many more inserts it fails; None is every one.
    """

    code: str
    message: str  # may name {project} and {zone}
    http_status: int
    zones: frozenset[str] | None = None
    spot: bool | None = None
    details: list[dict[str, Any]] = field(default_factory=list)
    times: int | None = None

    def applies(self, zone: str, spot: bool) -> bool:
        return ((self.zones is None or zone in self.zones)
                and (self.spot is None or self.spot == spot)
                and (self.times is None or self.times > 0))

    @property
    def http_message(self) -> str:
        return _HTTP_MESSAGES.get(self.http_status, "ERROR")

    def error(self, project: str, zone: str) -> dict[str, Any]:
        """The entry of the operation's error.errors[] as the API writes it."""
        entry: dict[str, Any] = {"code": self.code,
                                 "message": self.message.format(project=project, zone=zone)}
        if self.details:
            entry["errorDetails"] = self.details
        return entry


def stockout_fault(code: str, zones: frozenset[str] | None, spot: bool | None,
                   times: int | None = None) -> InsertFault:
    if code not in STOCKOUT_CODES:
        raise ValueError(f"a stockout's code is one of {STOCKOUT_CODES}, got {code!r}")
    message = ("The zone 'projects/{project}/zones/{zone}' does not have enough resources "
               "available to fulfill the request.  ")
    message += ("'(resource type:compute)'." if code.endswith("_WITH_DETAILS")
                else "Try a different zone, or try again later.")
    return InsertFault(code, message, 503, zones, spot, times=times)


@dataclass
class Faults:
    """What is injected now. Change it through FakeCompute's methods."""

    inserts: list[InsertFault] = field(default_factory=list)
    # (zone, spot) -> VMs it can still make; spot None covers both models.
    capacity: dict[tuple[str, bool | None], int] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)  # permissions whose calls answer HTTP 403
    pending_s: float = 0.0  # how long an operation stays PENDING
    running_s: float = 0.0  # then RUNNING
    drop_replies: int = 0  # inserts/deletes to accept, then answer 503 as if the reply was lost


class FaultsMixin:
    """FakeCompute's methods for injecting faults."""

    faults: Faults
    project: str

    def stockout(self, *zones: str, spot: bool | None = None,
                 code: str = "ZONE_RESOURCE_POOL_EXHAUSTED", times: int | None = None) -> None:
        """Inserts in `zones` (every zone if none) end with a stockout; `spot` True or False
        limits it to that provisioning model."""
        self.faults.inserts.append(stockout_fault(code, frozenset(zones) or None, spot, times))

    def fail_inserts(self, code: str, message: str, *zones: str, http_status: int = 400,
                     spot: bool | None = None, times: int | None = None) -> None:
        """Inserts in `zones` end with this error code, e.g. UNSUPPORTED_OPERATION or
        RESOURCE_NOT_READY."""
        self.faults.inserts.append(InsertFault(code, message, http_status,
                                               frozenset(zones) or None, spot, times=times))

    def exceed_quota(self, quota: str = "CPUS", limit: float = 24.0, *,
                     region: str = "us-central1", metric: str = "compute.googleapis.com/cpus",
                     zones: tuple[str, ...] = ()) -> None:
        """Inserts end with QUOTA_EXCEEDED for `quota`, as the API words it."""
        message = f"Quota '{quota}' exceeded.  Limit: {limit} in region {region}."
        details = [{"quotaInfo": {"metricName": metric, "limitName": f"{quota}-per-project-region",
                                  "dimensions": {"region": region}, "limit": limit}}]
        self.faults.inserts.append(InsertFault("QUOTA_EXCEEDED", message, 403,
                                               frozenset(zones) or None, details=details))

    def deny(self, permission: str = "compute.instances.create", *, in_operation: bool = False,
             code: str = "PERMISSION_DENIED") -> None:
        """Calls that need `permission` answer HTTP 403 naming it; with `in_operation`, inserts
        are accepted and their operation ends with `code` instead."""
        if in_operation:
            message = (f"Required '{permission}' permission for 'projects/{{project}}/zones/"
                       "{zone}/instances'")
            self.faults.inserts.append(InsertFault(code, message, 403))
        else:
            self.faults.denied.add(permission)

    def slow(self, pending_s: float = 0.0, running_s: float = 0.0) -> None:
        """New operations stay PENDING then RUNNING this long before DONE."""
        self.faults.pending_s, self.faults.running_s = pending_s, running_s

    def set_capacity(self, zone: str, vms: int, spot: bool | None = None) -> None:
        """`zone` makes at most `vms` more VMs (of the `spot` model if given)."""
        self.faults.capacity[zone, spot] = vms

    def drop_replies(self, n: int = 1) -> None:
        """The next `n` inserts or deletes are carried out, but answered HTTP 503."""
        self.faults.drop_replies = n

    def clear_faults(self) -> None:
        self.faults = Faults()

    def _check_permission(self, permission: str, zone: str, name: str) -> None:
        if permission in self.faults.denied:
            where = f"projects/{self.project}" + (f"/zones/{zone}/instances/{name}" if zone
                                                   else "")
            raise ApiError(403, f"Required '{permission}' permission for '{where}'")

    def _outcome(self, zone: str, spot: bool, count: int,
                 min_count: int) -> tuple[InsertFault | None, int]:
        """(the fault this insert ends with, or None; how many VMs it makes)."""
        for fault in self.faults.inserts:
            if fault.applies(zone, spot):
                if fault.times is not None:
                    fault.times -= 1
                return fault, 0
        key = (zone, spot) if (zone, spot) in self.faults.capacity else (zone, None)
        left = self.faults.capacity.get(key)
        made = count if left is None else min(count, left)
        if made < min_count:
            return stockout_fault(STOCKOUT_CODES[0], None, None), 0
        if left is not None:
            self.faults.capacity[key] = left - made
        return None, made

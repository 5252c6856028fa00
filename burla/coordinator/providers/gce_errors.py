"""What a Compute Engine error means for a boot: try the next zone, or stop and say why.

Insert errors arrive inside the operation (`error.errors[].code`), not as HTTP errors; a
missing permission may also be an HTTP 403 on the call itself. Pure: it calls no API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.api_core import exceptions as api_exceptions
from google.cloud import compute_v1

from burla.coordinator.providers.base import (
    NodeRequest,
    PermissionDenied,
    ProviderError,
    QuotaExceeded,
)

# The zone has no room for this machine type now. SkyPilot once missed the _WITH_DETAILS one.
STOCKOUT_CODES = frozenset({"ZONE_RESOURCE_POOL_EXHAUSTED",
                            "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"})
# Codes on which another zone may well succeed. UNSUPPORTED_OPERATION is seen when a spot VM
# is preempted while it is created; RESOURCE_NOT_READY when the zone's resource is busy.
NEXT_ZONE_CODES = STOCKOUT_CODES | {"UNSUPPORTED_OPERATION", "RESOURCE_NOT_READY"}
QUOTA_CODES = frozenset({"QUOTA_EXCEEDED", "quotaExceeded"})
PERMISSION_CODES = frozenset({"PERMISSION_DENIED", "IAM_PERMISSION_DENIED", "forbidden",
                              "accessDenied"})
_PERMISSION = re.compile(r"Required '([\w.]+)' permission")
_QUOTA = re.compile(r"Quota '([^']+)' exceeded")
_LIMIT = re.compile(r"Limit: ([\d.]+)")
_REGION = re.compile(r"in region ([a-z0-9-]+)")


@dataclass(frozen=True)
class OperationFault:
    """One entry of an operation's error.errors[], with its quota details when it has any."""

    code: str
    message: str
    quota_limit_name: str = ""
    quota_metric: str = ""
    quota_limit: float | None = None
    quota_region: str = ""


def operation_faults(operation: compute_v1.Operation) -> list[OperationFault]:
    """The errors a finished operation ended with; empty when it succeeded."""
    found = []
    for error in operation.error.errors:
        quota = next((d.quota_info for d in error.error_details if "quota_info" in d), None)
        if quota is None:
            found.append(OperationFault(error.code, error.message))
            continue
        found.append(OperationFault(
            error.code, error.message, quota.limit_name, quota.metric_name,
            quota.limit if "limit" in quota else None, quota.dimensions.get("region", "")))
    if not found and operation.http_error_status_code:
        found.append(OperationFault(str(operation.http_error_status_code),
                                    operation.http_error_message or "operation failed"))
    return found


def moves_on(fault: OperationFault) -> bool:
    """Whether the next zone may succeed where this one failed."""
    return fault.code in NEXT_ZONE_CODES


def stop_error(faults: list[OperationFault], request: NodeRequest, zone: str, project: str,
               region: str) -> ProviderError | None:
    """The error that ends a boot, or None when every fault only moves it to the next zone."""
    for fault in faults:
        if fault.code in QUOTA_CODES:
            return quota_error(fault, request, zone, region)
        if fault.code in PERMISSION_CODES:
            return permission_error(fault.message, request, project)
    for fault in faults:
        if not moves_on(fault):
            return ProviderError(
                f"booting {request.describe()} in {zone} failed: {fault.code}: {fault.message}. "
                f"It would fail the same way in other zones, so burla stopped; fix the cause "
                f"(machine type, image, network or service account settings), then retry.")
    return None


def quota_error(fault: OperationFault, request: NodeRequest, zone: str,
                region: str) -> QuotaExceeded:
    named = _QUOTA.search(fault.message)
    quota = (named.group(1) if named else fault.quota_limit_name.removesuffix(
        "-per-project-region") or fault.quota_metric or "unknown")
    limit_text = _LIMIT.search(fault.message)
    limit = fault.quota_limit if fault.quota_limit is not None else (
        float(limit_text.group(1)) if limit_text else None)
    region_text = _REGION.search(fault.message)
    where = fault.quota_region or (region_text.group(1) if region_text else "")
    where = where or ("all regions" if quota.endswith("ALL_REGIONS") else region)
    limit_words = f" (limit {limit:g})" if limit is not None else ""
    return QuotaExceeded(
        f"Compute Engine quota '{quota}' is exhausted in {where}{limit_words}: booting "
        f"{request.describe()} in {zone} was refused ({fault.message}). Raise the '{quota}' "
        f"quota in the Google Cloud console (IAM & Admin > Quotas), or ask for fewer or "
        f"smaller nodes.", quota=quota, region=where, limit=limit, metric=fault.quota_metric)


def permission_error(message: str, request: NodeRequest | None, project: str) -> PermissionDenied:
    named = _PERMISSION.search(message)
    permission = named.group(1) if named else "unknown (see the API's words)"
    doing = f" to boot {request.describe()}" if request else ""
    return PermissionDenied(
        f"the coordinator's Google Cloud credentials lack the permission {permission} in "
        f"project {project}{doing}: {message}. Grant its service account a role that has it "
        f"(roles/compute.instanceAdmin.v1 has the compute.instances.* permissions), then "
        f"retry.", permission=permission)


def call_error(error: api_exceptions.GoogleAPICallError, doing: str, project: str,
               request: NodeRequest | None = None) -> ProviderError:
    """A ProviderError for an HTTP error on the call itself (after the transient retries)."""
    # The library puts "METHOD URL: " before the API's words; the URL only adds noise.
    message = re.sub(r"^[A-Z]+ \S+: ", "", error.message or str(error))
    if isinstance(error, api_exceptions.Forbidden) and (
            _PERMISSION.search(message) or "permission" in message.lower()):
        return permission_error(message, request, project)
    return ProviderError(f"Compute Engine refused to {doing} in project {project}: HTTP "
                         f"{error.code}: {message}")

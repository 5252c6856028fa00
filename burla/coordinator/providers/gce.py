"""The GCE node provider: boots, lists and deletes this cluster's VMs with google-cloud-compute.

Every call blocks (the client is synchronous, and a boot waits for its operations), so the
coordinator runs these methods only on a `ProviderPool`'s threads, never on its event loop.
Each thread gets its own API clients.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry, if_transient_error
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from burla.coordinator.providers import gce_resources
from burla.coordinator.providers.base import (
    CLUSTER_LABEL,
    BootReport,
    Node,
    NodeRequest,
    ProviderError,
    StepCallback,
)
from burla.coordinator.providers.gce_boot import Boot
from burla.coordinator.providers.gce_config import GceConfig
from burla.coordinator.providers.gce_errors import call_error

log = structlog.get_logger("burla.coordinator.providers.gce")

DONE = compute_v1.Operation.Status.DONE
# A zone that just stocked out is tried after the others for this long.
STOCKOUT_MEMORY_S = 300.0


@dataclass
class _Clients:
    instances: compute_v1.InstancesClient
    operations: compute_v1.ZoneOperationsClient
    zones: compute_v1.ZonesClient
    machine_types: compute_v1.MachineTypesClient


class GceProvider:
    """Creates, lists and deletes VMs labelled `burla-cluster=<cluster name>` in one project
    and region. Safe to call from several threads at once."""

    def __init__(self, config: GceConfig) -> None:
        self.config = config
        self.cluster_name = config.cluster_name
        self._local = threading.local()
        self._lock = threading.Lock()
        self._region_zones: list[str] | None = None
        self._offered: dict[str, set[str]] = {}  # machine type -> zones that offer it
        self._stockouts: dict[tuple[str, str], float] = {}  # (zone, machine type) -> when
        self._closed = threading.Event()  # the coordinator stops: boots stop waiting
        self._retry = Retry(predicate=if_transient_error, initial=config.retry_initial_s,
                            maximum=max(config.retry_initial_s, 10.0), multiplier=2.0,
                            timeout=config.retry_deadline_s)

    # -- the provider interface -------------------------------------------------------------

    def create(self, request: NodeRequest, on_step: StepCallback | None = None) -> BootReport:
        """Boot `request.count` VMs, zone after zone; the report says what was made and why
        any are missing (NoCapacity, QuotaExceeded, PermissionDenied, OperationTimedOut)."""
        return Boot(self, request, on_step).run()

    def list_nodes(self) -> list[Node]:
        label = f'labels.{CLUSTER_LABEL} = "{self.cluster_name}"'
        request = compute_v1.AggregatedListInstancesRequest(project=self.config.project,
                                                            filter=label)
        pages = self._call("list this cluster's VMs", self._clients().instances.aggregated_list,
                           request)
        nodes = [gce_resources.to_node(vm) for _, scoped in pages for vm in scoped.instances]
        # The filter is the API's job; checking again costs nothing and never lets another
        # cluster's VM (or an unlabelled one) through to the reaper.
        return [node for node in nodes if node.cluster == self.cluster_name]

    def delete(self, node: Node) -> None:
        """Ask for the VM's deletion and return once the API accepted it (a delete takes tens
        of seconds; list_nodes shows it STOPPING, then gone). Already gone is not an error."""
        if node.cluster != self.cluster_name:
            raise ValueError(
                f"refusing to delete VM {node.name} in {node.zone}: it does not carry the label "
                f"{CLUSTER_LABEL}={self.cluster_name}, so it is not this cluster's "
                f"(its labels: {dict(node.labels)})")
        request = compute_v1.DeleteInstanceRequest(
            project=self.config.project, zone=node.zone, instance=node.name,
            request_id=str(uuid.uuid4()))
        try:
            self._call(f"delete VM {node.name}", self._clients().instances.delete_unary, request,
                       missing_ok=True)
        except api_exceptions.NotFound:
            return
        log.info("node_delete_requested", node=node.name, zone=node.zone)

    def close(self) -> None:
        """Boots in progress stop waiting on their operations (within one wait call), so a
        stopping coordinator is not held up; the VMs they asked for carry the cluster's label,
        and the next start's reaper finds them."""
        self._closed.set()

    # -- what Boot uses ---------------------------------------------------------------------

    def zones_for(self, machine_type: str, preferred: tuple[str, ...]) -> list[str]:
        """Zones of the region that offer the type, in preference order (`preferred`, else
        the configured zones, else all), zones that stocked out lately last."""
        offered = self._zones_offering(machine_type)
        order = preferred or self.config.zones or tuple(self._zones_of_region())
        zones = [z for z in order if z in offered]
        now = time.monotonic()
        with self._lock:
            recent = {z for (z, mt), at in self._stockouts.items()
                      if mt == machine_type and now - at < STOCKOUT_MEMORY_S}
        return sorted(zones, key=lambda z: z in recent)

    def remember_stockout(self, zone: str, machine_type: str) -> None:
        with self._lock:
            self._stockouts[zone, machine_type] = time.monotonic()

    def insert(self, request: NodeRequest, zone: str, count: int, spot: bool,
               batch: str, names: list[str] | None = None) -> list[compute_v1.Operation]:
        """Start `count` VMs of one batch: bulkInsert above the threshold, else one insert
        each. `names` (one per VM) names them; else the batch's pattern does. Every call
        carries a requestId, and a retry sends the same one."""
        config, instances = self.config, self._clients().instances
        if count > config.bulk_threshold:
            resource = gce_resources.bulk_insert(config, request, count, spot, batch, names)
            bulk = compute_v1.BulkInsertInstanceRequest(
                project=config.project, zone=zone, bulk_insert_instance_resource_resource=resource,
                request_id=str(uuid.uuid4()))
            return [self._call(f"boot {request.describe()}", instances.bulk_insert_unary, bulk,
                               request)]
        operations = []
        for number in range(1, count + 1):
            name = names[number - 1] if names else gce_resources.node_name(
                config.cluster_name, batch, number)
            vm = gce_resources.instance(config, request, zone, name, spot, batch)
            one = compute_v1.InsertInstanceRequest(project=config.project, zone=zone,
                                                   instance_resource=vm,
                                                   request_id=str(uuid.uuid4()))
            operations.append(self._call(f"boot {request.describe()}", instances.insert_unary,
                                         one, request))
        return operations

    def wait(self, zone: str, operation: compute_v1.Operation,
             deadline: float) -> compute_v1.Operation | None:
        """The operation once DONE, or None at `deadline` (time.monotonic()). Polls with our
        own ZoneOperationsClient: the library's own polling ignores a custom endpoint."""
        operations = self._clients().operations
        while operation.status != DONE:
            if self._closed.is_set():
                raise ProviderError(f"stopped waiting for operation {operation.name} in {zone}: "
                                    f"the coordinator is stopping")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            request = compute_v1.WaitZoneOperationRequest(project=self.config.project, zone=zone,
                                                          operation=operation.name)
            operation = self._call("wait for an operation", operations.wait, request,
                                   timeout=min(self.config.call_timeout_s, left + 5.0))
        return operation

    def batch_nodes(self, zone: str, batch: str) -> list[Node]:
        """The VMs one batch made in `zone`."""
        labels = (f'(labels.{CLUSTER_LABEL} = "{self.cluster_name}") AND '
                  f'(labels.{gce_resources.BATCH_LABEL} = "{batch}")')
        request = compute_v1.ListInstancesRequest(project=self.config.project, zone=zone,
                                                  filter=labels)
        pages = self._call("list the VMs just booted", self._clients().instances.list, request)
        return sorted((gce_resources.to_node(vm) for vm in pages), key=lambda n: n.name)

    # -- plumbing ---------------------------------------------------------------------------

    def _zones_of_region(self) -> list[str]:
        with self._lock:
            if self._region_zones is not None:
                return self._region_zones
        request = compute_v1.ListZonesRequest(project=self.config.project)
        pages = self._call("list zones", self._clients().zones.list, request)
        zones = sorted(z.name for z in pages if z.region.rsplit("/", 1)[-1] == self.config.region
                       and z.status == "UP")
        with self._lock:
            self._region_zones = zones
        return zones

    def _zones_offering(self, machine_type: str) -> set[str]:
        with self._lock:
            if machine_type in self._offered:
                return self._offered[machine_type]
        request = compute_v1.AggregatedListMachineTypesRequest(
            project=self.config.project, filter=f"name = {machine_type}")
        pages = self._call(f"find the zones that offer {machine_type}",
                           self._clients().machine_types.aggregated_list, request)
        prefix = f"zones/{self.config.region}-"
        zones = {scope.split("/", 1)[1] for scope, scoped in pages
                 if scope.startswith(prefix) and any(t.name == machine_type
                                                     for t in scoped.machine_types)}
        with self._lock:
            self._offered[machine_type] = zones
        return zones

    def _call(self, doing: str, method: Any, request: Any, node_request: NodeRequest | None = None,
              timeout: float | None = None, missing_ok: bool = False) -> Any:
        """Call the API with transient-error retries; HTTP errors become ProviderErrors
        (NotFound is raised as it is when `missing_ok`: for a delete it means done)."""
        try:
            result = method(request=request, retry=self._retry,
                            timeout=timeout or self.config.call_timeout_s)
            # A pager fetches its later pages lazily: fetch them here, under the same handling.
            return list(result) if hasattr(result, "pages") else result
        except api_exceptions.GoogleAPICallError as e:
            if missing_ok and isinstance(e, api_exceptions.NotFound):
                raise
            raise call_error(e, doing, self.config.project, node_request) from e

    def _clients(self) -> _Clients:
        clients: _Clients | None = getattr(self._local, "clients", None)
        if clients is None:
            options: dict[str, Any] = {"transport": "rest"}
            if self.config.api_endpoint:
                options["credentials"] = AnonymousCredentials()
                options["client_options"] = {"api_endpoint": self.config.api_endpoint}
            clients = _Clients(compute_v1.InstancesClient(**options),
                               compute_v1.ZoneOperationsClient(**options),
                               compute_v1.ZonesClient(**options),
                               compute_v1.MachineTypesClient(**options))
            self._local.clients = clients
        return clients

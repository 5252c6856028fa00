"""One GCE boot: zone after zone, spot then (with fallback) standard, each step reported.

How an operation's error is read decides the next move: a stockout, UNSUPPORTED_OPERATION or
RESOURCE_NOT_READY moves on to the next zone that offers the type; a quota or permission
error stops the boot and names the quota or permission. It never waits past the provider's
operation timeout, and never loops: each zone is tried once per provisioning model.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from burla.coordinator.providers import catalog, gce_resources
from burla.coordinator.providers.base import (
    CLUSTER_LABEL,
    Attempt,
    BootReport,
    BootStep,
    NoCapacity,
    Node,
    NodeRequest,
    OperationTimedOut,
    PermissionDenied,
    ProviderError,
    QuotaExceeded,
    StepCallback,
    StepKind,
)
from burla.coordinator.providers.gce_errors import (
    STOCKOUT_CODES,
    OperationFault,
    operation_faults,
    stop_error,
)

if TYPE_CHECKING:
    from burla.coordinator.providers.gce import GceProvider

log = structlog.get_logger("burla.coordinator.providers.gce")


class Boot:
    """Carries out one create call of a GceProvider."""

    def __init__(self, provider: GceProvider, request: NodeRequest,
                 on_step: StepCallback | None) -> None:
        self.provider = provider
        self.request = request
        self.on_step = on_step
        self.wanted = request.count
        self.names = list(request.names)  # the names not yet made (none: the batch names them)
        self.nodes: list[Node] = []
        self.steps: list[BootStep] = []
        self.attempts: list[Attempt] = []

    def run(self) -> BootReport:
        error: ProviderError | None = None
        try:
            self._run()
        except ProviderError as e:
            error = e
            self._step("stopped", "", _summary(e), self.wanted)
        log.info("boot_done", request=self.request.describe(), made=len(self.nodes),
                 error=type(error).__name__ if error else None)
        return BootReport(self.request, tuple(self.nodes), tuple(self.steps), error)

    def _run(self) -> None:
        request, config = self.request, self.provider.config
        zones = self.provider.zones_for(request.machine_type, request.zones)
        if not zones:
            among = f" among {', '.join(request.zones or config.zones)}" if (
                request.zones or config.zones) else ""
            raise NoCapacity(f"no zone of region {config.region}{among} offers machine type "
                             f"{request.machine_type}; pick zones that do, or another machine "
                             f"type.", ())
        models = [request.spot]
        known = catalog.MACHINE_TYPES.get(request.machine_type)
        if request.spot_fallback and not (known and known.spot_only):
            models.append(False)
        ended = ""  # how the previous zone ended, in words
        for spot in models:
            if spot != request.spot:
                tried = ", ".join(a.zone for a in self.attempts)
                self._step("fallback", zones[0], f"no spot capacity in {tried}; trying "
                                                 f"standard VMs", self.wanted)
                ended = ""
            for zone in zones:
                detail = f"{ended}, trying {zone}" if ended else f"trying {zone}"
                if spot != request.spot:
                    detail += " as standard VMs"
                self._step("moving" if ended else "trying", zone, detail, self.wanted)
                ended = self._zone(zone, spot)
                if self.wanted == 0:
                    return
        raise NoCapacity(self._no_capacity_message(known), tuple(self.attempts))

    def _zone(self, zone: str, spot: bool) -> str:
        """Boot what this zone gives; the words for how it ended ("" when nothing is left)."""
        provider, made_here = self.provider, 0
        while self.wanted > 0:
            batch = gce_resources.new_batch()
            count = min(self.wanted, gce_resources.BULK_MAX)
            names = self.names[:count]
            operations = provider.insert(self.request, zone, count, spot, batch, names)
            deadline = time.monotonic() + provider.config.operation_timeout_s
            faults: list[OperationFault] = []
            timed_out = None
            for operation in operations:
                done = provider.wait(zone, operation, deadline)
                if done is None:
                    timed_out = operation.name
                    continue
                faults += operation_faults(done)
            made = provider.batch_nodes(zone, batch) if len(faults) < len(operations) else []
            self.nodes += made
            self.wanted -= len(made)
            made_names = {node.name for node in made}
            self.names = [name for name in self.names if name not in made_names]
            made_here += len(made)
            if made:
                self._step("created", zone, f"{_vms(len(made))} started in {zone}", len(made))
            if timed_out:
                raise OperationTimedOut(
                    f"operation {timed_out} (booting {self.request.describe()} in {zone}) did "
                    f"not finish in {provider.config.operation_timeout_s:g} s; its VMs may "
                    f"still appear, labelled {CLUSTER_LABEL}={provider.cluster_name}. Retry; "
                    f"if it keeps happening the Compute API is degraded.")
            stop = stop_error(faults, self.request, zone, provider.config.project,
                              provider.config.region)
            if stop is not None:
                raise stop
            if faults or len(made) < count:
                return self._zone_ended(zone, spot, faults, made_here)
        return ""

    def _zone_ended(self, zone: str, spot: bool, faults: list[OperationFault],
                    made_here: int) -> str:
        code = faults[0].code if faults else ""
        message = faults[0].message if faults else ""
        self.attempts.append(Attempt(zone, spot, code, message, made_here))
        if not faults or code in STOCKOUT_CODES:
            self.provider.remember_stockout(zone, self.request.machine_type)
        if made_here:
            return f"{zone} had room for {made_here}"
        if code in STOCKOUT_CODES:
            return f"{zone} exhausted"
        return f"{zone} can't take it now ({code})"

    def _step(self, kind: StepKind, zone: str, detail: str, count: int) -> None:
        step = BootStep(kind, self.request, zone, detail, count)
        self.steps.append(step)
        log.info("boot_step", kind=kind, zone=zone, step=step.describe())
        if self.on_step is not None:
            self.on_step(step)

    def _no_capacity_message(self, known: catalog.MachineType | None) -> str:
        tried = "; ".join(a.describe() for a in self.attempts)
        made = f" ({len(self.nodes)} made, {self.wanted} missing)" if self.nodes else ""
        spot_only = (" It is sold only as spot VMs, so there is no standard fallback."
                     if self.request.spot_fallback and known and known.spot_only else "")
        return (f"no capacity for {self.request.describe()}{made}: tried {tried}.{spot_only} "
                f"Retry later, allow more zones, accept spot or standard VMs, or ask for a "
                f"smaller machine type.")


def _vms(n: int) -> str:
    return f"{n} VM" if n == 1 else f"{n} VMs"


def _summary(error: ProviderError) -> str:
    if isinstance(error, QuotaExceeded):
        return f"quota '{error.quota}' exhausted in {error.region}, stopped"
    if isinstance(error, PermissionDenied):
        return f"permission {error.permission} missing, stopped"
    if isinstance(error, NoCapacity):
        tried = ", ".join(a.zone for a in error.attempts)
        return f"no capacity in {tried}, stopped" if tried else "no zone offers it, stopped"
    return f"stopped: {type(error).__name__}"

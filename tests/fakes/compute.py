"""A fake Compute Engine API on loopback with the real JSON, operation life cycle and faults.

It serves instances (insert, bulkInsert by namePattern or by perInstanceProperties names, get,
list, aggregatedList, delete), zone operations (get, wait), zones and machine types, for the
real google-cloud-compute client. Errors that the real API reports inside an operation arrive
inside the operation here too. Tests only.
"""

from __future__ import annotations

import copy
import itertools
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tests.fakes.compute_faults import Faults, FaultsMixin, InsertFault
from tests.fakes.compute_http import (
    ApiError,
    Request,
    aggregated_body,
    list_body,
    matches,
    page,
    parse_filter,
    serve,
)
from tests.fakes.compute_types import ZoneRoutes, offered_types
from tests.fakes.compute_vms import (
    FakeOperation,
    FakeVm,
    VmHooks,
    build_vm,
    numeric_id,
    timestamp,
)

DEFAULT_ZONES = ("us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f")
# The real wait answers after at most 2 minutes, done or not. Short here, so that a slow
# operation is seen through several waits.
DEFAULT_WAIT_CAP_S = 1.0
TICK_S = 0.01  # how often operations move on


class FakeCompute(FaultsMixin, ZoneRoutes):
    """The fake API for one project. Use as a context manager, or start() and close()."""

    def __init__(self, project: str = "test-project", zones: Iterable[str] = DEFAULT_ZONES,
                 offers: Mapping[str, Iterable[str]] | None = None,
                 hooks: VmHooks | None = None) -> None:
        self.project = project
        self.zones = list(zones)
        self.offers = {z: set(offers[z]) if offers and z in offers else offered_types()
                       for z in self.zones}
        self.hooks = hooks or VmHooks()
        self.faults = Faults()
        self.calls: Counter[str] = Counter()
        self.wait_cap_s = DEFAULT_WAIT_CAP_S
        self._vms: dict[tuple[str, str], FakeVm] = {}
        self._reserved: set[tuple[str, str]] = set()
        self._ops: dict[tuple[str, str], FakeOperation] = {}
        self._request_ids: dict[tuple[str, str], FakeOperation] = {}
        self._ips = itertools.count(2)
        self._lock = threading.Condition()
        self._hook_calls: queue.Queue[tuple[str, FakeVm, bool] | None] = queue.Queue()
        self._server = serve(self)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.request_log: list[tuple[str, str]] = []  # (call, requestId) of each change
        self.closed = False

    # -- life cycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeCompute:
        for target in (self._serve, self._tick, self._deliver_hooks):
            thread = threading.Thread(target=target, name=f"fake-compute-{target.__name__}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        """Stop serving, deliver the hook calls still queued, and join every thread."""
        if self.closed:
            return
        self.closed = True
        self._server.shutdown()
        self._server.server_close()
        self._stop.set()
        self._hook_calls.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> FakeCompute:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self, call: str) -> None:
        with self._lock:
            self.calls[call] += 1

    @property
    def total_calls(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def _serve(self) -> None:
        self._server.serve_forever(poll_interval=0.05)  # so that close() is quick

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            with self._lock:
                self._advance()

    def _deliver_hooks(self) -> None:
        while (call := self._hook_calls.get()) is not None:
            kind, vm, preempted = call
            if kind == "booted":
                self.hooks.booted(vm)
            else:
                self.hooks.gone(vm, preempted)

    # -- what tests look at and do ----------------------------------------------------------

    def wait_until(self, done: Callable[[FakeCompute], bool], timeout: float = 10.0) -> bool:
        """Whether `done(self)` came true within `timeout`, checked as operations move on."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not done(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def vms(self, zone: str | None = None) -> list[FakeVm]:
        """Every instance (in `zone`), as copies."""
        with self._lock:
            return [copy.deepcopy(vm) for (z, _), vm in sorted(self._vms.items())
                    if zone is None or z == zone]

    def add_vm(self, name: str, zone: str, labels: Mapping[str, str] | None = None,
               machine_type: str = "n2-standard-2", status: str = "RUNNING") -> FakeVm:
        """Plant an instance, as if someone else made it (no hooks fire)."""
        body = {"name": name, "labels": dict(labels or {}),
                "machineType": f"zones/{zone}/machineTypes/{machine_type}"}
        vm = self._vm(zone, name, body)
        vm.resource["status"] = status
        with self._lock:
            self._vms[zone, name] = vm
        return copy.deepcopy(vm)

    def preempt(self, name: str, zone: str) -> None:
        """Preempt a spot VM now: TERMINATED, then deleted if its termination action says so."""
        with self._lock:
            vm = self._vms[zone, name]
            vm.resource["status"] = "TERMINATED"
            if vm.scheduling.get("instanceTerminationAction", "STOP") == "DELETE":
                del self._vms[zone, name]
            self._hook_calls.put(("gone", copy.deepcopy(vm), True))

    # -- operations -------------------------------------------------------------------------

    def _advance(self) -> None:
        """Move operations on whose time has come (under the lock)."""
        now = time.time()
        for op in self._ops.values():
            if op.status == "PENDING" and now >= op.running_at:
                op.resource.update(status="RUNNING", startTime=timestamp(now), progress=0)
                for vm in op.creates if op.fault is None else []:
                    self._vms[vm.zone, vm.name] = vm
            if op.status == "RUNNING" and now >= op.done_at:
                self._finish(op, now)
        self._lock.notify_all()

    def _finish(self, op: FakeOperation, now: float) -> None:
        op.resource.update(status="DONE", endTime=timestamp(now), progress=100)
        for vm in op.creates:
            self._reserved.discard((vm.zone, vm.name))
        if op.fault is not None:
            op.resource["error"] = {"errors": [op.fault.error(op.project, op.zone)]}
            op.resource["httpErrorStatusCode"] = op.fault.http_status
            op.resource["httpErrorMessage"] = op.fault.http_message
            return
        for vm in op.creates:
            if self._vms.get((vm.zone, vm.name)) is vm:
                vm.resource["status"] = "RUNNING"
                self._hook_calls.put(("booted", copy.deepcopy(vm), False))
        if op.deletes is not None and (op.zone, op.deletes.name) in self._vms:
            del self._vms[op.zone, op.deletes.name]
            self._hook_calls.put(("gone", copy.deepcopy(op.deletes), False))

    def _operation(self, zone: str, kind: str, target: str, request_id: str,
                   creates: list[FakeVm] | None = None, deletes: FakeVm | None = None,
                   fault: InsertFault | None = None) -> FakeOperation:
        now = time.time()
        name = f"operation-{int(now * 1000)}-{numeric_id(f'{target}{now}{kind}')[:12]}"
        base = f"{self.url}/compute/v1/projects/{self.project}/zones/{zone}"
        resource = {
            "kind": "compute#operation", "id": numeric_id(name), "name": name,
            "zone": base, "operationType": kind, "targetLink": f"{base}/instances/{target}",
            "targetId": numeric_id(target), "status": "PENDING", "user": "anonymous",
            "progress": 0, "insertTime": timestamp(now), "selfLink": f"{base}/operations/{name}",
        }
        running_at = now + self.faults.pending_s
        op = FakeOperation(self.project, zone, resource, running_at,
                           running_at + self.faults.running_s, creates or [], deletes, fault)
        self._ops[zone, name] = op
        if request_id:
            self._request_ids[zone, request_id] = op
        return op

    def _reply(self, op: FakeOperation) -> tuple[int, Any]:
        """The operation's JSON, unless a dropped reply was asked for."""
        if self.faults.drop_replies > 0:
            self.faults.drop_replies -= 1
            raise ApiError(503, "Backend Error")
        return 200, copy.deepcopy(op.resource)

    # -- routes -----------------------------------------------------------------------------

    def insert(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        zone, body = request.fields["zone"], request.body or {}
        name = str(body.get("name", ""))
        self._check_permission("compute.instances.create", zone, name)
        with self._lock:
            request_id = self._request_id(request, "insert")
            if (op := self._request_ids.get((zone, request_id))) is not None:
                return self._reply(op)
            vm = self._vm(zone, name, body)
            self._claim_names(zone, [name])
            fault, _ = self._outcome(zone, vm.spot, 1, 1)
            op = self._operation(zone, "insert", name, request_id, [vm], fault=fault)
            if fault is None:
                self._reserved.add((zone, name))
            return self._reply(op)

    def bulk_insert(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        zone, body = request.fields["zone"], request.body or {}
        count, min_count = int(body.get("count", 0)), int(body.get("minCount", body.get(
            "count", 0)))
        pattern = str(body.get("namePattern", ""))
        properties = dict(body.get("instanceProperties") or {})
        named = list(body.get("perInstanceProperties") or {})  # names asked for, in order
        if not 1 <= min_count <= count or ("#" not in pattern and len(named) != count):
            raise ApiError(400, f"Invalid value for field 'resource': count={count}, "
                                f"minCount={min_count}, namePattern='{pattern}', "
                                f"perInstanceProperties={len(named)} names.")
        machine = str(properties.get("machineType", ""))
        if "/" in machine:
            raise ApiError(400, f"Invalid value for field 'resource.instanceProperties."
                                f"machineType': '{machine}'. Give a machine type name.")
        self._check_permission("compute.instances.create", zone, pattern or named[0])
        with self._lock:
            request_id = self._request_id(request, "bulkInsert")
            if (op := self._request_ids.get((zone, request_id))) is not None:
                return self._reply(op)
            if named:
                self._claim_names(zone, named)
            names = named or self._names(zone, pattern, count)
            properties["machineType"] = f"zones/{zone}/machineTypes/{machine}"
            vms = [self._vm(zone, n, {**properties, "name": n}) for n in names]
            fault, made_count = self._outcome(zone, vms[0].spot, count, min_count)
            made = vms[:made_count] if fault is None else vms
            op = self._operation(zone, "bulkInsert", names[0], request_id, made, fault=fault)
            if fault is None:
                self._reserved.update((zone, vm.name) for vm in made)
            return self._reply(op)

    def get_instance(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        with self._lock:
            return 200, copy.deepcopy(self._instance(request).resource)

    def list_instances(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        self._check_permission("compute.instances.list", request.fields["zone"], "")
        terms = parse_filter(request.query.get("filter", ""))
        with self._lock:
            found = [copy.deepcopy(vm.resource) for (z, _), vm in sorted(self._vms.items())
                     if z == request.fields["zone"] and matches(vm.resource, terms)]
        items, token = page(found, request.query)
        return 200, list_body("compute#instanceList", items, token)

    def aggregated_instances(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        self._check_permission("compute.instances.list", "", "")
        terms = parse_filter(request.query.get("filter", ""))
        with self._lock:
            found = [(z, copy.deepcopy(vm.resource)) for (z, _), vm in sorted(self._vms.items())
                     if matches(vm.resource, terms)]
        return 200, aggregated_body("compute#instanceAggregatedList", "instances", self.zones,
                                found, request.query)

    def delete(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        zone = request.fields["zone"]
        self._check_permission("compute.instances.delete", zone, request.fields["name"])
        with self._lock:
            request_id = self._request_id(request, "delete")
            if (op := self._request_ids.get((zone, request_id))) is not None:
                return self._reply(op)
            vm = self._instance(request)
            vm.resource["status"] = "STOPPING"
            return self._reply(self._operation(zone, "delete", vm.name, request_id,
                                               deletes=vm))

    def get_operation(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        with self._lock:
            self._advance()
            return 200, copy.deepcopy(self._op(request).resource)

    def wait_operation(self, request: Request) -> tuple[int, Any]:
        self._project(request)
        with self._lock:
            op = self._op(request)
            self._lock.wait_for(lambda: op.status == "DONE", timeout=self.wait_cap_s)
            return 200, copy.deepcopy(op.resource)

    # -- helpers ----------------------------------------------------------------------------

    def _request_id(self, request: Request, call: str) -> str:
        request_id = request.query.get("requestId", "")
        self.request_log.append((call, request_id))
        return request_id

    def _op(self, request: Request) -> FakeOperation:
        key = (request.fields["zone"], request.fields["name"])
        if key not in self._ops:
            raise ApiError(404, f"The resource 'projects/{self.project}/zones/{key[0]}/"
                                f"operations/{key[1]}' was not found")
        return self._ops[key]

    def _instance(self, request: Request) -> FakeVm:
        key = (request.fields["zone"], request.fields["name"])
        if key not in self._vms:
            raise ApiError(404, f"The resource 'projects/{self.project}/zones/{key[0]}/"
                                f"instances/{key[1]}' was not found")
        return self._vms[key]

    def _claim_names(self, zone: str, names: list[str]) -> None:
        for name in names:
            if (zone, name) in self._vms or (zone, name) in self._reserved:
                raise ApiError(409, f"The resource 'projects/{self.project}/zones/{zone}/"
                                    f"instances/{name}' already exists")

    def _names(self, zone: str, pattern: str, count: int) -> list[str]:
        """Names from a namePattern: numbering goes on after the zone's highest match."""
        run = max(re.findall(r"#+", pattern), key=len)
        prefix, suffix = pattern.split(run, 1)
        shape = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix))
        taken = [int(m.group(1)) for z, n in (*self._vms, *self._reserved)
                 if z == zone and (m := shape.fullmatch(n))]
        first = max(taken, default=0) + 1
        if first + count - 1 >= 10 ** len(run):
            raise ApiError(400, f"Invalid value for field 'resource.namePattern': '{pattern}'. "
                                f"Too few '#' for {count} more instances.")
        return [f"{prefix}{i:0{len(run)}d}{suffix}" for i in range(first, first + count)]

    def _vm(self, zone: str, name: str, body: dict[str, Any]) -> FakeVm:
        return build_vm(self.url, self.project, zone, name, body, self.offers[zone],
                        next(self._ips))

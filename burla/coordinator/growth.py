"""Which nodes to boot and delete, decided from jobs, nodes and booting nodes; clock-free, no I/O.

The coordinator calls `Growth.step(now, jobs, nodes)` with its jobs (oldest first) and its
registered nodes, and carries out the Boot / Delete / GiveUp instructions it returns; what the
provider reports back comes in as events (`boot_failed`, `boot_note`, `deleted`). The machine
catalog is a callable passed in, so no provider is imported here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from burla.coordinator.capacity import Caps, Catalog, MachineType, Room, Shape, fitting, pack
from burla.coordinator.demand import GrowthLimits, JobView
from burla.coordinator.placement import eligible
from burla.coordinator.state import Node, Request

log = structlog.get_logger("burla.coordinator.growth")

# A deleted VM counts against the caps until the provider says it is gone, or this long: a
# delete takes about a minute, and past this the reaper owns the VM, not growth.
DELETE_GRACE_SECONDS = 300.0
# VM names: GCE allows 63 characters of [a-z0-9-], starting with a letter; the prefix leaves
# room for "-" and a sequence number.
_NAME = re.compile(r"[a-z][-a-z0-9]{0,49}")


@dataclass(frozen=True)
class Boot:
    """Create one VM per name, of `machine_type`, for calls of `shape` (for `job_ids`)."""

    shape: Shape
    machine_type: str
    names: tuple[str, ...]  # the instance names; each agent registers with its name as id
    job_ids: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Delete:
    """Delete the VM `name` (tolerating one already gone), and stop placing work on it."""

    name: str
    reason: str


@dataclass(frozen=True)
class GiveUp:
    """Fail the job: no node can run it and growth cannot boot one (`reason` says what failed)."""

    job_id: str
    reason: str


Instruction = Boot | Delete | GiveUp


@dataclass(frozen=True)
class JobGrowth:
    """One job's side of a step: for the spinner and `burla status`, and for the advice."""

    job_id: str
    short: int  # calls it wants that no free slot and no booting node covers
    booting: tuple[tuple[str, int], ...]  # (machine type, how many) booting that it counts on
    status: str  # e.g. "booting 3× n2-standard-8"; "" when there is nothing to say
    could_help: bool  # whether grow=True could boot a node for this job's shape now
    reason: str  # what it could boot, or why it could not


@dataclass
class Decision:
    instructions: list[Instruction]
    jobs: dict[str, JobGrowth]


@dataclass
class _Booting:
    name: str
    shape: Shape | None  # None: found at start (adopted) before its agent registered
    machine: MachineType
    since: float
    note: str = ""  # the provider's latest words about it, e.g. a zone failover


@dataclass
class _Grown:
    name: str
    cpus: int
    gpus: int
    idle_since: float | None


@dataclass
class _Deleting:
    name: str
    cpus: int
    gpus: int
    since: float


@dataclass
class _Blocked:
    until: float
    reason: str


class Growth:
    def __init__(self, limits: GrowthLimits, catalog: Catalog, name_prefix: str) -> None:
        if not _NAME.fullmatch(name_prefix):
            raise ValueError(f"name_prefix {name_prefix!r} must be 1-50 characters of a-z, 0-9 "
                             f"and '-', starting with a letter (VM names are built from it)")
        self.limits = limits
        self.catalog = catalog
        self.name_prefix = name_prefix
        self.booting: dict[str, _Booting] = {}
        self.grown: dict[str, _Grown] = {}  # registered nodes growth booted or adopted
        self.deleting: dict[str, _Deleting] = {}
        self.blocked: dict[Shape, _Blocked] = {}  # shapes whose boot failed, until retry
        self.given_up: set[str] = set()
        self.seq = 0

    # --- events from the provider -------------------------------------------------------------

    def boot_failed(self, names: Iterable[str], reason: str, now: float) -> None:
        """The provider could not create these VMs; `reason` says what it tried."""
        for name in names:
            booting = self.booting.pop(name, None)
            if booting is not None and booting.shape is not None:
                self.blocked[booting.shape] = _Blocked(now + self.limits.retry_after, reason)
                log.warning("boot_failed", name=name, reason=reason)

    def boot_note(self, names: Iterable[str], note: str) -> None:
        """The provider's progress words (`us-central1-a exhausted, trying us-central1-b`)."""
        for name in names:
            if name in self.booting:
                self.booting[name].note = note

    def deleted(self, name: str) -> None:
        """The provider deleted the VM (or found it gone): it stops counting against the caps."""
        self.deleting.pop(name, None)

    def adopt(self, names: Iterable[str], now: float) -> None:
        """This cluster's VMs found at start: tracked from now, as booting until they register."""
        for name in names:
            if name not in self.known():
                self.booting[name] = _Booting(name, None, MachineType("", 0, 0, 0), now)
            number = name.removeprefix(f"{self.name_prefix}-")
            if number.isdigit():  # names this prefix made before a restart are never reused
                self.seq = max(self.seq, int(number))

    def known(self) -> set[str]:
        """Every VM name growth tracks; the reaper deletes only labelled VMs not among these."""
        return set(self.booting) | set(self.grown) | set(self.deleting)

    def draining(self) -> set[str]:
        """Nodes being deleted: the scheduler must place no new work on them."""
        return set(self.deleting)

    # --- the step ---------------------------------------------------------------------------

    def step(self, now: float, jobs: Iterable[JobView], nodes: Iterable[Node]) -> Decision:
        """Reconcile with the registered `nodes`, then decide; `jobs` oldest first."""
        jobs = list(jobs)
        registered = {node.agent_id: node for node in nodes}
        self._forget_expired(now, {job.job_id for job in jobs})
        out: list[Instruction] = self._join_and_lose(registered, now)
        out += self._boot_timeouts(now)
        out += self._idle(registered, now)
        statuses, boots = self._grow(jobs, registered, now)
        return Decision(out + boots + self._give_up(jobs, statuses, registered), statuses)

    def could_help(self, shape: Shape, now: float) -> tuple[bool, str]:
        """Whether grow=True could boot a node for `shape` now, and what, or why not."""
        return self._help(shape, self._caps_left(), now)

    def _forget_expired(self, now: float, job_ids: set[str]) -> None:
        for name, deleting in list(self.deleting.items()):
            if now - deleting.since >= DELETE_GRACE_SECONDS:
                del self.deleting[name]
        for shape, blocked in list(self.blocked.items()):
            if now >= blocked.until:
                del self.blocked[shape]
        self.given_up &= job_ids

    def _join_and_lose(self, registered: dict[str, Node], now: float) -> list[Instruction]:
        for name in [n for n in self.booting if n in registered]:
            booting = self.booting.pop(name)
            node = registered[name]
            self.grown[name] = _Grown(name, booting.machine.cpus or node.cpus,
                                      booting.machine.gpus or len(node.gpus), now)
            log.info("node_joined", name=name, waited=round(now - booting.since, 1))
        out: list[Instruction] = []
        for name in [n for n in self.grown if n not in registered]:
            out.append(self._delete(self.grown.pop(name), now,
                                    "lost: its agent went silent (preempted, or the VM died)"))
        return out

    def _boot_timeouts(self, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        for booting in list(self.booting.values()):
            if now - booting.since < self.limits.boot_timeout:
                continue
            del self.booting[booting.name]
            why = f"its agent did not register within --boot-timeout={self.limits.boot_timeout:g}s"
            out.append(self._delete(_Grown(booting.name, booting.machine.cpus,
                                           booting.machine.gpus, None), now, why))
            if booting.shape is not None:
                self.blocked[booting.shape] = _Blocked(
                    now + self.limits.retry_after, f"VM {booting.name} ({booting.machine.name}): "
                    f"{why}")
        return out

    def _idle(self, registered: dict[str, Node], now: float) -> list[Instruction]:
        timeout = self.limits.node_idle_timeout
        idle: list[_Grown] = []
        for grown in self.grown.values():
            node = registered[grown.name]
            if node.used_cpus or node.used_ram_gb or node.used_gpus:
                grown.idle_since = None
                continue
            if grown.idle_since is None:
                grown.idle_since = now
            if now - grown.idle_since >= timeout:
                idle.append(grown)
        spare = max(0, len(self.grown) - self.limits.min_nodes)
        out: list[Instruction] = []
        for grown in sorted(idle, key=lambda g: (g.idle_since or 0.0, g.name))[:spare]:
            del self.grown[grown.name]
            idle_for = now - (grown.idle_since or now)
            out.append(self._delete(grown, now, f"idle for {idle_for:.0f}s "
                                                f"(--node-idle-timeout={timeout:g}s)"))
        return out

    def _delete(self, node: _Grown, now: float, reason: str) -> Delete:
        self.deleting[node.name] = _Deleting(node.name, node.cpus, node.gpus, now)
        log.info("node_delete", name=node.name, reason=reason)
        return Delete(node.name, reason)

    # --- growth -------------------------------------------------------------------------------

    def _grow(self, jobs: list[JobView], registered: dict[str, Node],
              now: float) -> tuple[dict[str, JobGrowth], list[Instruction]]:
        free = [Room.free_on(node) for name, node in registered.items()
                if name not in self.deleting]
        booting = [Room.booting(b.name, b.shape, b.machine)
                   for b in self.booting.values() if b.shape is not None]
        short: dict[str, int] = {}
        counted: dict[str, list[Room]] = {job.job_id: [] for job in jobs}  # booting rooms
        for job in jobs:  # in age order, as the scheduler hands out slots
            wanted = job.wanted - _take(free, job.shape, job.wanted, None)
            if job.grow:  # what was booted for grow jobs is theirs
                wanted -= _take(booting, job.shape, wanted, counted[job.job_id])
            short[job.job_id] = wanted
        groups: dict[Shape, list[JobView]] = {}
        for job in jobs:
            if job.grow and short[job.job_id] > 0 and job.job_id not in self.given_up:
                groups.setdefault(job.shape, []).append(job)
        caps = self._caps_left()
        fresh: list[Room] = []  # booted in this step; leftovers go to later shapes
        why: dict[str, str] = {}
        for shape, members in groups.items():
            for job in members:
                short[job.job_id] -= _take(fresh, shape, short[job.job_id], counted[job.job_id])
            rest = sum(short[job.job_id] for job in members)
            problem = None if rest <= 0 else self._boot_for(shape, rest, caps, fresh, now)
            for job in members:
                short[job.job_id] -= _take(fresh, shape, short[job.job_id], counted[job.job_id])
                if short[job.job_id] > 0 and problem:
                    why[job.job_id] = f"{short[job.job_id]} calls more wanted, but {problem}"
        boots = self._boots(fresh, counted)
        statuses = {}
        for job in jobs:
            help_, reason = self._help(job.shape, caps, now)
            rooms = counted[job.job_id]
            machines: dict[str, int] = {}
            for room in rooms:
                machines[room.machine_type] = machines.get(room.machine_type, 0) + 1
            parts = [", ".join(f"{n}× {m}" for m, n in machines.items())] if machines else []
            if parts:
                notes = sorted({self.booting[r.name].note for r in rooms} - {""})
                parts = ["booting " + parts[0] + (": " + "; ".join(notes) if notes else "")]
            parts += [why[job.job_id]] if job.job_id in why else []
            statuses[job.job_id] = JobGrowth(job.job_id, max(0, short[job.job_id]),
                                             tuple(machines.items()), "; ".join(parts),
                                             help_, reason)
        return statuses, boots

    def _boot_for(self, shape: Shape, calls: int, caps: Caps, fresh: list[Room],
                  now: float) -> str | None:
        """Plan VMs for `calls` calls of `shape` into `fresh`; what stopped the rest, if any."""
        blocked = self.blocked.get(shape)
        if blocked is not None:
            return f"booting is paused for {blocked.until - now:.0f}s more: {blocked.reason}"
        types = fitting(shape, self.catalog)
        if not types:
            return f"no machine type this cluster can boot fits one call of {shape.describe()}"
        for machine, count in pack(calls, shape, types, caps).items():
            for _ in range(count):
                self.seq += 1
                name = f"{self.name_prefix}-{self.seq}"
                self.booting[name] = _Booting(name, shape, machine, now)
                fresh.append(Room.booting(name, shape, machine))
        if caps.allow(types[-1]) != 0:
            return None  # all of it is booting
        return caps.binding(types[-1], self._caps_tuple())

    def _boots(self, fresh: list[Room], counted: dict[str, list[Room]]) -> list[Instruction]:
        users: dict[str, list[str]] = {}
        for job_id, rooms in counted.items():
            for room in rooms:
                users.setdefault(room.name, []).append(job_id)
        grouped: dict[tuple[Shape, str], tuple[list[str], list[str]]] = {}
        for room in fresh:
            shape = self.booting[room.name].shape
            assert shape is not None  # growth booted it for a shape
            names, job_ids = grouped.setdefault((shape, room.machine_type), ([], []))
            names.append(room.name)
            job_ids += [j for j in users.get(room.name, []) if j not in job_ids]
        out: list[Instruction] = []
        for (shape, machine_type), (names, job_ids) in grouped.items():
            log.info("boot", machine_type=machine_type, count=len(names), jobs=job_ids)
            out.append(Boot(shape, machine_type, tuple(names), tuple(job_ids)))
        return out

    def _help(self, shape: Shape, caps: Caps, now: float) -> tuple[bool, str]:
        types = fitting(shape, self.catalog)
        if not types:
            return False, (f"no machine type this cluster can boot fits one call of "
                           f"{shape.describe()}")
        blocked = self.blocked.get(shape)
        if blocked is not None:
            return False, (f"booting failed ({blocked.reason}); it is tried again in "
                           f"{blocked.until - now:.0f}s")
        usable = [t for t in types if caps.allow(t) != 0]
        if not usable:
            return False, f"the caps leave no room: {caps.binding(types[-1], self._caps_tuple())}"
        best = usable[0]
        return True, f"grow=True can boot {best.name} ({best.slots(shape)} calls each)"

    def _give_up(self, jobs: list[JobView], statuses: dict[str, JobGrowth],
                 registered: dict[str, Node]) -> list[Instruction]:
        out: list[Instruction] = []
        for job in jobs:
            blocked = self.blocked.get(job.shape)
            status = statuses[job.job_id]
            if (not job.grow or job.slots or not status.short or blocked is None
                    or status.booting or job.job_id in self.given_up):
                continue
            shape = job.shape
            request = Request(shape.func_cpu, shape.func_ram, shape.func_gpu, shape.image,
                              shape.python_version)
            if eligible(request, registered.values()):
                continue  # a node that can run it will free up: it waits, like any job
            self.given_up.add(job.job_id)
            out.append(GiveUp(job.job_id, f"no node can run {shape.describe()} and none "
                                          f"could be booted: {blocked.reason}"))
        return out

    def _caps_tuple(self) -> tuple[int | None, int | None, int | None]:
        return self.limits.max_nodes, self.limits.max_cpus, self.limits.max_gpus

    def _caps_left(self) -> Caps:
        held: list[tuple[int, int]] = [(b.machine.cpus, b.machine.gpus)
                                       for b in self.booting.values()]
        held += [(n.cpus, n.gpus) for n in self.grown.values()]
        held += [(n.cpus, n.gpus) for n in self.deleting.values()]
        limits = self.limits

        def left(cap: int | None, used: int) -> int | None:
            return None if cap is None else cap - used

        return Caps(left(limits.max_nodes, len(held)),
                    left(limits.max_cpus, sum(c for c, _ in held)),
                    left(limits.max_gpus, sum(g for _, g in held)))


def _take(rooms: list[Room], shape: Shape, wanted: int, counted: list[Room] | None) -> int:
    """Count up to `wanted` calls of `shape` into `rooms` in turn; `counted` gets each room used."""
    taken = 0
    for room in rooms:
        if taken >= wanted:
            break
        got = room.take(shape, wanted - taken)
        if got and counted is not None:
            counted.append(room)
        taken += got
    return taken

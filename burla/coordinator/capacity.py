"""Call shapes, machine types and room for calls, and packing calls into machines. Pure, no I/O.

Growth decides with these; it mirrors `placement.eligible` and `Request.slots_on`, so what it
counts as room for a call is what the scheduler will allocate. Must not import a provider.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from burla.coordinator.state import Node, Request


@dataclass(frozen=True)
class Shape:
    """What one call of a job needs: the key growth groups demand by, and boots for."""

    func_cpu: int
    func_ram: int  # GB, 0 = dynamic (CPUs alone decide how many calls fit)
    func_gpu: str | None
    python_version: str
    image: str | None = None

    @classmethod
    def of(cls, request: Request) -> Shape:
        return cls(request.func_cpu, request.func_ram, request.func_gpu,
                   request.python_version, request.image)

    def slots_in(self, cpus: int, ram_gb: int, gpus: int) -> int:
        """Calls of this shape that fit in that much room (as `Request.slots_on` counts)."""
        slots = cpus // self.func_cpu
        if self.func_ram:
            slots = min(slots, ram_gb // self.func_ram)
        if self.func_gpu:
            slots = min(slots, gpus)
        return max(0, slots)

    def describe(self) -> str:
        ram = f"func_ram={self.func_ram}" if self.func_ram else "func_ram='dynamic'"
        gpu = f", func_gpu={self.func_gpu!r}" if self.func_gpu else ""
        image = f", image={self.image!r}" if self.image else ""
        return f"func_cpu={self.func_cpu}, {ram}{gpu}{image}, Python {self.python_version}"


class MachineType(NamedTuple):
    """One machine type a provider can boot. `ram_gb` is what its agent will advertise."""

    name: str
    cpus: int
    ram_gb: int
    gpus: int  # of the shape's func_gpu type; 0 for a CPU machine

    def slots(self, shape: Shape) -> int:
        if self.gpus and not shape.func_gpu:
            return 0  # a CPU job never books a GPU machine
        return shape.slots_in(self.cpus, self.ram_gb, self.gpus)


# The provider's catalog: the machine types that can run calls of a shape ([] when none can).
Catalog = Callable[[Shape], Iterable[tuple[str, int, int, int]]]


@dataclass
class Room:
    """Free room on one node, registered or booting, that jobs are counted into in turn."""

    name: str
    machine_type: str  # "" for a node growth did not boot
    cpus: int
    ram_gb: int
    gpus: int
    gpu_type: str | None
    python_version: str
    image: str

    @classmethod
    def free_on(cls, node: Node, machine_type: str = "") -> Room:
        return cls(node.agent_id, machine_type, node.cpus - node.used_cpus,
                   node.ram_gb - node.used_ram_gb, len(node.gpus) - node.used_gpus,
                   node.gpus[0] if node.gpus else None, node.python_version, node.image)

    @classmethod
    def booting(cls, name: str, shape: Shape, machine: MachineType) -> Room:
        """The room a VM booted for `shape` will offer once its agent registers."""
        return cls(name, machine.name, machine.cpus, machine.ram_gb, machine.gpus,
                   shape.func_gpu if machine.gpus else None, shape.python_version,
                   shape.image or "")

    def slots(self, shape: Shape) -> int:
        if self.python_version != shape.python_version:
            return 0
        if shape.image and self.image != shape.image:
            return 0
        if shape.func_gpu and self.gpu_type != shape.func_gpu:
            return 0
        return shape.slots_in(self.cpus, self.ram_gb, self.gpus)

    def take(self, shape: Shape, wanted: int) -> int:
        """Count up to `wanted` calls into this room; return how many fit."""
        taken = min(wanted, self.slots(shape))
        self.cpus -= taken * shape.func_cpu
        self.ram_gb -= taken * shape.func_ram
        self.gpus -= taken if shape.func_gpu else 0
        return taken


@dataclass
class Caps:
    """What the hard caps leave room for: None means no cap. Counts down as boots are planned."""

    nodes: int | None
    cpus: int | None
    gpus: int | None

    def allow(self, machine: MachineType) -> int | None:
        """How many more of `machine` fit under the caps (None: no cap binds)."""
        room = [self.nodes]
        if self.cpus is not None:
            room.append(self.cpus // machine.cpus if machine.cpus else None)
        if self.gpus is not None and machine.gpus:
            room.append(self.gpus // machine.gpus)
        bound = [r for r in room if r is not None]
        return max(0, min(bound)) if bound else None

    def spend(self, machine: MachineType, count: int) -> None:
        if self.nodes is not None:
            self.nodes -= count
        if self.cpus is not None:
            self.cpus -= count * machine.cpus
        if self.gpus is not None:
            self.gpus -= count * machine.gpus

    def binding(self, machine: MachineType, limits: tuple[int | None, ...]) -> str:
        """Which cap stops one more `machine`, in the operator's flag words."""
        max_nodes, max_cpus, max_gpus = limits
        if self.nodes is not None and self.nodes < 1:
            return f"--max-nodes={max_nodes} is reached"
        if self.cpus is not None and self.cpus < machine.cpus:
            return (f"--max-cpus={max_cpus} leaves {max(self.cpus, 0)} CPUs and "
                    f"{machine.name} has {machine.cpus}")
        return (f"--max-gpus={max_gpus} leaves {max(self.gpus or 0, 0)} GPUs and "
                f"{machine.name} has {machine.gpus}")


def fitting(shape: Shape, catalog: Catalog) -> list[MachineType]:
    """The catalog's types that hold at least one call, most calls first (then most CPUs)."""
    types = [MachineType(*t) for t in catalog(shape)]
    fits = [t for t in types if t.slots(shape) > 0]
    return sorted(fits, key=lambda t: (t.slots(shape), t.cpus), reverse=True)


def pack(calls: int, shape: Shape, types: list[MachineType], caps: Caps) -> dict[MachineType, int]:
    """Machines for `calls` calls of `shape`, within `caps` (which this spends): as many of the
    largest type as the calls fill, then the cheapest cover of the rest. Fewer calls fit when a
    cap binds. `types` is `fitting`'s list, most calls first."""
    plan: dict[MachineType, int] = {}

    def add(machine: MachineType, count: int) -> None:
        nonlocal calls
        plan[machine] = plan.get(machine, 0) + count
        caps.spend(machine, count)
        calls -= count * machine.slots(shape)

    while calls > 0:
        usable = [t for t in types if caps.allow(t) != 0]
        if not usable:
            break
        largest = usable[0]
        per = largest.slots(shape)
        if per <= calls:
            allowed = caps.allow(largest)
            add(largest, calls // per if allowed is None else min(calls // per, allowed))
            continue
        cover = _cheapest_cover(calls, shape, usable)
        if _fits_together(cover, caps):
            for machine, count in cover.items():
                add(machine, count)
            break
        # The caps rule the cheapest cover out: one machine at a time, the largest first.
        under = [t for t in usable if t.slots(shape) <= calls]
        add(under[0] if under else usable[-1], 1)
    return {t: plan[t] for t in sorted(plan, key=lambda t: (t.slots(shape), t.cpus), reverse=True)}


def _fits_together(plan: dict[MachineType, int], caps: Caps) -> bool:
    nodes = sum(plan.values())
    cpus = sum(t.cpus * n for t, n in plan.items())
    gpus = sum(t.gpus * n for t, n in plan.items())
    return ((caps.nodes is None or nodes <= caps.nodes) and (caps.cpus is None or cpus <= caps.cpus)
            and (caps.gpus is None or gpus <= caps.gpus))


def _cheapest_cover(calls: int, shape: Shape, types: list[MachineType]) -> dict[MachineType, int]:
    """The machines that hold `calls` calls for the fewest GPUs, then CPUs, RAM and machines.
    `calls` is below the largest type's slots, so this table stays small (one row a call)."""
    Cost = tuple[int, int, int, int]
    best: list[tuple[Cost, dict[MachineType, int]]] = [((0, 0, 0, 0), {})]
    for need in range(1, calls + 1):
        options = []
        for t in types:
            (gpus, cpus, ram, nodes), plan = best[max(0, need - t.slots(shape))]
            cost = (gpus + t.gpus, cpus + t.cpus, ram + t.ram_gb, nodes + 1)
            options.append((cost, {**plan, t: plan.get(t, 0) + 1}))
        best.append(min(options, key=lambda option: option[0]))
    return best[calls][1]

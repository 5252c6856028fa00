"""GCE machine types and how a job's demand packs into them; pure, it calls no cloud API."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from burla.config import GPU_ALIASES

# Share of a VM's nominal memory that its agent cannot count on: the guest kernel keeps some
# (a 32 GB VM shows about 31.3 GiB), and the agent reports whole GB rounded down.
GUEST_RESERVED_FRACTION = 0.06
# On-demand N2 prices in us-central1 (USD per hour), used only to compare families' cost per
# call: an exact price is not needed, only which family is cheaper for a shape.
N2_CPU_HOUR = 0.031611
N2_GB_HOUR = 0.004237


@dataclass(frozen=True)
class MachineType:
    """One GCE machine type: its size, and the GPUs that come with it."""

    name: str
    family: str
    cpus: int
    ram_gb: int
    gpus: int = 0
    gpu_type: str | None = None  # normalized, e.g. "A100_40G"
    spot_only: bool = False  # sold only as Spot (or Flex-start) VMs, never as standard ones

    @property
    def usable_ram_gb(self) -> int:
        """The RAM its agent will report, a little under the nominal size."""
        return self.ram_gb - max(1, math.ceil(self.ram_gb * GUEST_RESERVED_FRACTION))

    def calls(self, func_cpu: int, func_ram: int, func_gpu: str | None) -> int:
        """How many calls of this shape run at once on one node (func_ram 0 = dynamic)."""
        if (func_gpu and GPU_ALIASES.get(func_gpu) != self.gpu_type) or func_cpu < 1:
            return 0
        fits = self.cpus // func_cpu
        if func_ram:
            fits = min(fits, self.usable_ram_gb // func_ram)
        if func_gpu:
            fits = min(fits, self.gpus)
        return max(0, fits)


@dataclass(frozen=True)
class NodePlan:
    """`count` nodes of `machine_type`, each running `calls_per_node` calls at once."""

    machine_type: MachineType
    count: int
    calls_per_node: int


def _family(family: str, sizes: Iterable[int], gb_per_cpu: int) -> list[MachineType]:
    return [MachineType(f"{family}-{n}", family, n, n * gb_per_cpu) for n in sizes]


def _gpu_family(family: str, gpu_type: str, cpus_per_gpu: int, gb_per_gpu: int,
                spot_only: frozenset[int] = frozenset()) -> list[MachineType]:
    return [MachineType(f"{family}-{n}g", family, n * cpus_per_gpu, n * gb_per_gpu, n, gpu_type,
                        n in spot_only) for n in (1, 2, 4, 8)]


# Sizes ascending within each family. n2-highmem stops at 96 because n2-highmem-128 has 864 GB,
# not 8 GB per CPU, and each family here keeps one ratio.
CPU_FAMILIES: dict[str, list[MachineType]] = {
    "n2-standard": _family("n2-standard", (2, 4, 8, 16, 32, 48, 64, 80, 96, 128), 4),
    "n2-highmem": _family("n2-highmem", (2, 4, 8, 16, 32, 48, 64, 80, 96), 8),
}
# A2 and A3 machine types come with their GPUs attached; no guestAccelerators are given.
# a3-highgpu-1g/2g/4g are sold only as Spot or Flex-start VMs.
GPU_FAMILIES: dict[str, list[MachineType]] = {
    "A100_40G": _gpu_family("a2-highgpu", "A100_40G", 12, 85),
    "A100_80G": _gpu_family("a2-ultragpu", "A100_80G", 12, 170),
    "H100_80G": _gpu_family("a3-highgpu", "H100_80G", 26, 234, frozenset({1, 2, 4})),
}
MACHINE_TYPES: dict[str, MachineType] = {
    mt.name: mt
    for family in (*CPU_FAMILIES.values(), *GPU_FAMILIES.values())
    for mt in family
}


def machine_type(name: str) -> MachineType:
    """The catalog's entry for `name`; ValueError naming it when the catalog has no such type."""
    try:
        return MACHINE_TYPES[name]
    except KeyError:
        raise ValueError(
            f"machine type {name!r} is not in burla's catalog; it knows "
            f"{', '.join(sorted(MACHINE_TYPES))}"
        ) from None


def normalize_gpu(func_gpu: str | None) -> str | None:
    """The GPU type a func_gpu value means; ValueError listing the accepted values."""
    if func_gpu is None:
        return None
    if func_gpu not in GPU_ALIASES:
        raise ValueError(f"func_gpu={func_gpu!r} is not a GPU burla can boot; pass one of "
                         f"{', '.join(GPU_ALIASES)}")
    return GPU_ALIASES[func_gpu]


def _cost_per_call(mt: MachineType, func_cpu: int, func_ram: int) -> float:
    return (mt.cpus * N2_CPU_HOUR + mt.ram_gb * N2_GB_HOUR) / mt.calls(func_cpu, func_ram, None)


def candidates(func_cpu: int, func_ram: int, func_gpu: str | None, *, spot: bool = False,
               max_node_cpus: int | None = None) -> list[MachineType]:
    """The sizes, ascending, of the one family that suits this shape best.

    GPU shapes use their GPU's family. CPU shapes use the N2 family with the lower cost per
    call at its largest size that fits, so RAM-heavy calls go to n2-highmem. Spot-only types
    are left out unless `spot`; sizes over `max_node_cpus` are left out.
    """
    if func_cpu < 1 or func_ram < 0:
        raise ValueError(f"func_cpu must be >= 1 and func_ram >= 0 (0 = dynamic), got "
                         f"func_cpu={func_cpu}, func_ram={func_ram}")
    gpu = normalize_gpu(func_gpu)
    families = [GPU_FAMILIES[gpu]] if gpu else list(CPU_FAMILIES.values())
    best: list[MachineType] = []
    best_cost = math.inf
    for family in families:
        sizes = [mt for mt in family
                 if mt.calls(func_cpu, func_ram, func_gpu) > 0
                 and (spot or not mt.spot_only)
                 and (max_node_cpus is None or mt.cpus <= max_node_cpus)]
        if not sizes:
            continue
        cost = 0.0 if gpu else _cost_per_call(sizes[-1], func_cpu, func_ram)
        if cost < best_cost:
            best, best_cost = sizes, cost
    if not best:
        raise ValueError(_no_fit_message(func_cpu, func_ram, func_gpu, families, spot,
                                         max_node_cpus))
    return best


def pack(calls: int, func_cpu: int, func_ram: int, func_gpu: str | None, *,
         spot: bool = False, max_node_cpus: int | None = None) -> list[NodePlan]:
    """Nodes that run `calls` calls of this shape at once: the largest size first, then one
    node of the smallest size that holds the rest. ValueError when no machine type fits."""
    if calls <= 0:
        return []
    sizes = candidates(func_cpu, func_ram, func_gpu, spot=spot, max_node_cpus=max_node_cpus)
    largest = sizes[-1]
    per_largest = largest.calls(func_cpu, func_ram, func_gpu)
    full, rest = divmod(calls, per_largest)
    plans = [NodePlan(largest, full, per_largest)] if full else []
    if rest:
        smallest = next(mt for mt in sizes if mt.calls(func_cpu, func_ram, func_gpu) >= rest)
        per_node = smallest.calls(func_cpu, func_ram, func_gpu)
        if plans and smallest == largest:
            plans = [NodePlan(largest, full + 1, per_largest)]
        else:
            plans.append(NodePlan(smallest, 1, per_node))
    return plans


def _no_fit_message(func_cpu: int, func_ram: int, func_gpu: str | None,
                    families: list[list[MachineType]], spot: bool,
                    max_node_cpus: int | None) -> str:
    ram = f"func_ram={func_ram} GB" if func_ram else "func_ram='dynamic'"
    gpu = f", func_gpu={func_gpu!r}" if func_gpu else ""
    allowed = [mt for family in families for mt in family
               if (spot or not mt.spot_only)
               and (max_node_cpus is None or mt.cpus <= max_node_cpus)]
    if not allowed:
        return (f"no machine type has at most {max_node_cpus} CPUs for func_cpu={func_cpu}, "
                f"{ram}{gpu}")
    biggest = max(allowed, key=lambda mt: (mt.cpus, mt.usable_ram_gb))
    roomiest = max(allowed, key=lambda mt: mt.usable_ram_gb)
    return (f"no machine type fits one call of func_cpu={func_cpu}, {ram}{gpu}: the largest "
            f"has {biggest.cpus} CPUs ({biggest.name}) and the roomiest "
            f"{roomiest.usable_ram_gb} GB usable ({roomiest.name}). Ask for fewer CPUs or "
            f"less RAM per call.")

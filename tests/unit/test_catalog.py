"""The GCE machine catalog: which family a shape gets and how demand packs into it. Pure."""

from __future__ import annotations

import pytest

from burla.coordinator.providers import catalog
from burla.coordinator.providers.catalog import pack

pytestmark = pytest.mark.timeout(30)


def plan(calls: int, func_cpu: int = 1, func_ram: int = 0, func_gpu: str | None = None,
         **kw: object) -> list[tuple[str, int, int]]:
    return [(p.machine_type.name, p.count, p.calls_per_node)
            for p in pack(calls, func_cpu, func_ram, func_gpu, **kw)]  # type: ignore[arg-type]


@pytest.mark.parametrize(("func_gpu", "family", "gpu_type"), [
    ("A100", "a2-highgpu", "A100_40G"),
    ("A100_40G", "a2-highgpu", "A100_40G"),
    ("A100_80G", "a2-ultragpu", "A100_80G"),
    ("H100", "a3-highgpu", "H100_80G"),
    ("H100_80G", "a3-highgpu", "H100_80G"),
])
def test_each_gpu_maps_to_its_family(func_gpu: str, family: str, gpu_type: str) -> None:
    sizes = catalog.candidates(1, 0, func_gpu, spot=True)
    assert [mt.name for mt in sizes] == [f"{family}-{n}g" for n in (1, 2, 4, 8)]
    assert {mt.gpu_type for mt in sizes} == {gpu_type}
    assert [mt.gpus for mt in sizes] == [1, 2, 4, 8]


def test_gpu_sizes_are_the_real_ones() -> None:
    sizes = {name: (mt.cpus, mt.ram_gb) for name, mt in catalog.MACHINE_TYPES.items()}
    assert sizes["a2-highgpu-1g"] == (12, 85)
    assert sizes["a2-highgpu-8g"] == (96, 680)
    assert sizes["a2-ultragpu-8g"] == (96, 1360)
    assert sizes["a3-highgpu-8g"] == (208, 1872)
    assert sizes["n2-standard-8"] == (8, 32)
    assert sizes["n2-highmem-8"] == (8, 64)


def test_unknown_gpu_is_refused_naming_it_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"func_gpu='V100'.*A100.*H100_80G"):
        pack(3, 1, 0, "V100")


def test_cpu_demand_fills_the_largest_size_then_one_small_node() -> None:
    assert plan(300) == [("n2-standard-128", 2, 128), ("n2-standard-48", 1, 48)]
    assert plan(256) == [("n2-standard-128", 2, 128)]
    assert plan(3) == [("n2-standard-4", 1, 4)]
    assert plan(1) == [("n2-standard-2", 1, 2)]


def test_no_demand_needs_no_nodes() -> None:
    assert plan(0) == []


def test_cpus_per_call_are_counted() -> None:
    # 4 CPUs a call: 32 calls per n2-standard-128; 10 calls = 40 CPUs -> one n2-standard-48.
    assert plan(10, func_cpu=4) == [("n2-standard-48", 1, 12)]


def test_ram_heavy_calls_go_to_highmem() -> None:
    # 8 GB per CPU: n2-standard-128 holds only 60 such calls (RAM-bound), n2-highmem-96 holds
    # 90 at a lower cost per call. (The last number is what a node holds, not what it gets.)
    assert plan(100, func_ram=8) == [("n2-highmem-96", 1, 90), ("n2-highmem-16", 1, 15)]


def test_four_gb_per_cpu_stays_standard_and_counts_usable_ram() -> None:
    # A 32 GB VM leaves its agent about 30 GB: 7 calls of 4 GB, not 8.
    assert catalog.machine_type("n2-standard-8").calls(1, 4, None) == 7
    assert plan(7, func_ram=4) == [("n2-standard-8", 1, 7)]


def test_gpu_demand_packs_eight_gpu_machines_first() -> None:
    assert plan(10, func_gpu="A100") == [("a2-highgpu-8g", 1, 8), ("a2-highgpu-2g", 1, 2)]
    assert plan(3, func_gpu="A100_80G") == [("a2-ultragpu-4g", 1, 4)]


def test_gpu_calls_are_limited_by_cpus_too() -> None:
    # 16 CPUs per call: an a2-highgpu-8g (96 CPUs) runs 6 calls, not 8.
    assert plan(6, func_cpu=16, func_gpu="A100") == [("a2-highgpu-8g", 1, 6)]


def test_small_h100_machines_are_spot_only() -> None:
    assert plan(3, func_gpu="H100") == [("a3-highgpu-8g", 1, 8)]
    assert plan(3, func_gpu="H100", spot=True) == [("a3-highgpu-4g", 1, 4)]
    assert catalog.machine_type("a3-highgpu-1g").spot_only
    assert not catalog.machine_type("a3-highgpu-8g").spot_only


def test_node_size_cap_is_respected() -> None:
    assert plan(100, max_node_cpus=32) == [("n2-standard-32", 3, 32), ("n2-standard-4", 1, 4)]


def test_a_call_too_big_for_any_machine_names_the_shape() -> None:
    with pytest.raises(ValueError, match=r"func_cpu=200.*largest has 128 CPUs"):
        pack(1, 200, 0, None)
    with pytest.raises(ValueError, match=r"func_ram=2000 GB"):
        pack(1, 1, 2000, None)
    with pytest.raises(ValueError, match=r"func_cpu=100, func_ram='dynamic', "
                                         r"func_gpu='A100'.*96 CPUs"):
        pack(1, 100, 0, "A100")


def test_bad_shape_values_are_refused() -> None:
    with pytest.raises(ValueError, match="func_cpu=0"):
        pack(1, 0, 0, None)
    with pytest.raises(ValueError, match="func_ram=-1"):
        pack(1, 1, -1, None)


def test_unknown_machine_type_is_named() -> None:
    with pytest.raises(ValueError, match="'e2-micro' is not in burla's catalog"):
        catalog.machine_type("e2-micro")


@pytest.mark.parametrize("calls", [1, 2, 7, 63, 64, 65, 500, 1001])
@pytest.mark.parametrize(("func_cpu", "func_ram", "func_gpu"), [
    (1, 0, None), (2, 4, None), (1, 16, None), (4, 2, None), (1, 0, "A100"), (8, 60, "H100"),
])
def test_every_plan_covers_its_demand_in_one_family(calls: int, func_cpu: int, func_ram: int,
                                                    func_gpu: str | None) -> None:
    plans = pack(calls, func_cpu, func_ram, func_gpu)
    assert sum(p.count * p.calls_per_node for p in plans) >= calls
    assert len({p.machine_type.family for p in plans}) == 1
    for p in plans:
        assert p.calls_per_node == p.machine_type.calls(func_cpu, func_ram, func_gpu) > 0
    # Only the last node may be partly idle, and only the last plan is a smaller size.
    assert sum(p.count * p.calls_per_node for p in plans) - calls < plans[-1].calls_per_node

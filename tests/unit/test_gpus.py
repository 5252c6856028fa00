"""GPU inventory: fake inventories, func_gpu aliases, NVML name mapping, no-driver machines."""

from __future__ import annotations

import pynvml
import pytest
from structlog.testing import capture_logs

from burla.agent import gpus
from burla.agent.gpus import (
    GIB,
    Gpu,
    discover_gpus,
    fake_gpus,
    gpu_type_from_nvml,
    normalize_gpu_request,
)


@pytest.mark.timeout(10)
def test_fake_inventory_has_deterministic_uuids_and_minors() -> None:
    assert discover_gpus("A100_40G:2") == [
        Gpu(0, "GPU-fake-a100_40g-0", "A100_40G", 40 * GIB, minor=0),
        Gpu(1, "GPU-fake-a100_40g-1", "A100_40G", 40 * GIB, minor=1),
    ]


@pytest.mark.timeout(10)
def test_fake_inventory_mixes_types_accepts_aliases_and_default_count() -> None:
    found = fake_gpus("h100:1, A100_80G")
    assert [(g.index, g.type, g.uuid, g.memory_bytes) for g in found] == [
        (0, "H100_80G", "GPU-fake-h100_80g-0", 80 * GIB),
        (1, "A100_80G", "GPU-fake-a100_80g-1", 80 * GIB),
    ]
    assert fake_gpus("A100:0") == []


@pytest.mark.timeout(10)
def test_fake_inventory_rejects_bad_count_and_type() -> None:
    with pytest.raises(ValueError, match="'A100:x'"):
        fake_gpus("A100:x")
    with pytest.raises(ValueError, match="'T4'"):
        fake_gpus("T4:1")


@pytest.mark.timeout(10)
def test_normalize_gpu_request_maps_aliases() -> None:
    assert normalize_gpu_request("A100") == "A100_40G"
    assert normalize_gpu_request("a100_80g") == "A100_80G"
    assert normalize_gpu_request("H100") == "H100_80G"
    assert normalize_gpu_request(" H100_80G ") == "H100_80G"
    assert normalize_gpu_request("A100_40G") == "A100_40G"


@pytest.mark.timeout(10)
def test_normalize_gpu_request_error_names_value_and_accepted_ones() -> None:
    with pytest.raises(ValueError) as info:
        normalize_gpu_request("V100")
    message = str(info.value)
    assert "'V100'" in message
    for accepted in ("A100", "A100_40G", "A100_80G", "H100", "H100_80G"):
        assert accepted in message


@pytest.mark.timeout(10)
def test_nvml_names_map_to_types() -> None:
    assert gpu_type_from_nvml("NVIDIA A100-SXM4-40GB", 40 * GIB) == "A100_40G"
    assert gpu_type_from_nvml("NVIDIA A100-SXM4-80GB", 80 * GIB) == "A100_80G"
    assert gpu_type_from_nvml("NVIDIA H100 80GB HBM3", 80 * GIB) == "H100_80G"
    assert gpu_type_from_nvml("Tesla T4", 15 * GIB) == "TESLA_T4"


class FakeNvml:
    """Stands in for pynvml with two devices, the second failing its queries."""

    NVMLError = pynvml.NVMLError

    def __init__(self) -> None:
        self.shut_down = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA A100-SXM4-80GB"  # older releases return bytes

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> object:
        return type("Memory", (), {"total": 80 * GIB})()

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return "GPU-1234"

    def nvmlDeviceGetMinorNumber(self, handle: int) -> int:
        return 3


@pytest.mark.timeout(10)
def test_discover_queries_nvml_and_skips_a_lost_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml()
    monkeypatch.setattr(gpus, "pynvml", fake)
    with capture_logs() as logs:
        found = discover_gpus()
    assert found == [Gpu(0, "GPU-1234", "A100_80G", 80 * GIB, minor=3)]
    assert [e["event"] for e in logs] == ["gpu_query_failed"]
    assert fake.shut_down


@pytest.mark.timeout(10)
def test_discover_without_driver_returns_empty_quietly() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    with capture_logs() as logs:
        assert discover_gpus() == []
        assert discover_gpus("") == []
    assert logs == []

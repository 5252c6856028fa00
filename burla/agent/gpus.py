"""This node's GPU inventory (NVML, or a declared fake one); it never assigns GPUs to executors."""

from __future__ import annotations

from dataclasses import dataclass

import pynvml
import structlog

from burla.config import GPU_ALIASES

log = structlog.get_logger("burla.agent.gpus")

GIB = 1 << 30
# An A100 reports 40 GiB or 80 GiB; anything past the middle is the 80 GB part.
A100_80G_THRESHOLD_BYTES = 60 * GIB
# Memory of each type in a fake inventory, as NVML would report it.
FAKE_MEMORY_BYTES: dict[str, int] = {
    "A100_40G": 40 * GIB,
    "A100_80G": 80 * GIB,
    "H100_80G": 80 * GIB,
}


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML index
    uuid: str  # what CUDA_VISIBLE_DEVICES takes
    type: str  # normalized, e.g. "A100_40G"
    memory_bytes: int
    minor: int  # N of /dev/nvidiaN, for the v1 devices cgroup ("c 195:N rwm")


def normalize_gpu_request(value: str) -> str:
    """Map a user's func_gpu value to a GPU type; ValueError names it and the accepted values."""
    gpu_type = GPU_ALIASES.get(value.strip().upper())
    if gpu_type is None:
        accepted = ", ".join(GPU_ALIASES)
        raise ValueError(f"unknown GPU type {value!r}; accepted values: {accepted}")
    return gpu_type


def gpu_type_from_nvml(name: str, memory_bytes: int) -> str:
    """Normalize an NVML device name ("NVIDIA A100-SXM4-40GB") to a GPU type."""
    upper = name.upper()
    if "A100" in upper:
        return "A100_80G" if memory_bytes > A100_80G_THRESHOLD_BYTES else "A100_40G"
    if "H100" in upper:
        return "H100_80G"
    return upper.strip().replace(" ", "_")


def fake_gpus(spec: str) -> list[Gpu]:
    """Parse a declared inventory, "A100_40G:2" or "A100:1,H100:2" (a missing count is 1)."""
    gpus: list[Gpu] = []
    for part in spec.split(","):
        kind, _, count_text = part.strip().partition(":")
        try:
            count = int(count_text or "1")
        except ValueError:
            count = -1
        if count < 0:
            raise ValueError(f"fake GPU count must be a whole number >= 0 in {part!r} of {spec!r}")
        gpu_type = normalize_gpu_request(kind)
        for _ in range(count):
            index = len(gpus)
            uuid = f"GPU-fake-{gpu_type.lower()}-{index}"
            gpus.append(Gpu(index, uuid, gpu_type, FAKE_MEMORY_BYTES[gpu_type], minor=index))
    return gpus


def discover_gpus(fake: str | None = None) -> list[Gpu]:
    """The GPUs of this node: the fake inventory if one is declared, else what NVML reports.

    No NVIDIA driver (the usual case on CPU nodes) is not an error: it returns [] quietly.
    """
    if fake:
        return fake_gpus(fake)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                gpus.append(_query(index))
            except pynvml.NVMLError as e:
                log.warning("gpu_query_failed", index=index, error=str(e))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _query(index: int) -> Gpu:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = _text(pynvml.nvmlDeviceGetName(handle))
    memory = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    return Gpu(
        index=index,
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        type=gpu_type_from_nvml(name, memory),
        memory_bytes=memory,
        minor=int(pynvml.nvmlDeviceGetMinorNumber(handle)),
    )


def _text(value: str | bytes) -> str:
    """Older nvidia-ml-py releases return bytes, newer ones str."""
    return value.decode() if isinstance(value, bytes) else value

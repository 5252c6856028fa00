"""The agent's settings, built once by the CLI and passed down; nothing reads them globally."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from burla.agent.metadata import VmIdentity

# Chunks each slot may hold beyond the one it runs, so an executor never waits on the network.
DEFAULT_PREFETCH = 2
# Memory the dynamic-RAM budget leaves to the OS, the agent and the zygote by default: 10 %,
# at least 1 GiB, so a runaway call is killed before the node itself thrashes or OOMs.
MIN_RESERVE_BYTES = 1 << 30
RESERVE_FRACTION = 0.10
# Processes and threads one executor may hold at once (its cgroup's pids.max): far more than
# a call's process pool needs, yet a fork bomb stops there instead of taking the host's pids,
# which every user of the machine shares.
DEFAULT_EXECUTOR_PIDS_MAX = 4096
# An executor's own tasks: its threads (runner, link, ZeroMQ's), and the sandbox's two reapers.
MIN_EXECUTOR_PIDS = 16


def physical_memory() -> int:
    """This machine's RAM in bytes (what psutil.virtual_memory().total says, without the 20 ms
    of importing psutil into every agent's start)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_memory_budget(total: int | None = None) -> int:
    """Bytes all func_ram="dynamic" calls of a node may use together: its RAM less a reserve."""
    total = physical_memory() if total is None else total
    return max(total - max(MIN_RESERVE_BYTES, int(total * RESERVE_FRACTION)), total // 2)


@dataclass(frozen=True)
class AgentConfig:
    coordinator: str  # endpoint, e.g. tcp://10.0.0.2:7700
    token: str  # cluster token sent in Hello
    state_dir: Path
    agent_id: str = field(default_factory=lambda: platform.node())
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    ram_gb: int = field(default_factory=lambda: max(1, physical_memory() // 2**30))
    image: str = ""  # container image this node runs; "" when none
    fake_gpus: str = ""  # e.g. "A100_40G:2", for tests on machines without GPUs
    warm_executors: int = -1  # executors forked at start; -1 means one per CPU
    prefetch: int = DEFAULT_PREFETCH
    orphan_timeout: float = 0.0  # exit after this long without a coordinator; 0 = never
    vm: VmIdentity | None = None  # the GCE VM it runs on (--from-metadata): orphaned, it deletes it
    python_version: str = field(
        default_factory=lambda: ".".join(platform.python_version_tuple()[:2])
    )
    token_file: Path | None = None  # hidden from sandboxed executors, like state_dir
    sandbox: bool = False  # sandbox executors (takes effect only when the agent is root)
    cgroups: str = "auto"  # cgroup backend: auto, v1, v2 or none
    memory_budget_bytes: int = field(default_factory=default_memory_budget)
    executor_pids_max: int = DEFAULT_EXECUTOR_PIDS_MAX  # pids.max per executor; 0 = no limit

    def __post_init__(self) -> None:
        if self.cgroups not in ("auto", "v1", "v2", "none"):
            raise ValueError(f"cgroups must be auto, v1, v2 or none, got {self.cgroups!r}")
        if self.memory_budget_bytes <= 0:
            raise ValueError(f"memory budget must be > 0 bytes, got {self.memory_budget_bytes}")
        if self.executor_pids_max and self.executor_pids_max < MIN_EXECUTOR_PIDS:
            raise ValueError(
                f"--executor-pids-max must be 0 (no limit) or at least {MIN_EXECUTOR_PIDS} (an "
                f"executor's own threads and reapers need that many), got {self.executor_pids_max}"
            )

"""The agent's settings, built once by the CLI and passed down; nothing reads them globally."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# Chunks each slot may hold beyond the one it runs, so an executor never waits on the network.
DEFAULT_PREFETCH = 2


@dataclass(frozen=True)
class AgentConfig:
    coordinator: str  # endpoint, e.g. tcp://10.0.0.2:7700
    token: str  # cluster token sent in Hello
    state_dir: Path
    agent_id: str = field(default_factory=lambda: platform.node())
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    ram_gb: int = field(default_factory=lambda: max(1, psutil.virtual_memory().total // 2**30))
    image: str = ""  # container image this node runs; "" when none
    fake_gpus: str = ""  # e.g. "A100_40G:2", for tests on machines without GPUs
    warm_executors: int = -1  # executors forked at start; -1 means one per CPU
    prefetch: int = DEFAULT_PREFETCH
    orphan_timeout: float = 0.0  # exit after this long without a coordinator; 0 = never
    python_version: str = field(
        default_factory=lambda: ".".join(platform.python_version_tuple()[:2])
    )

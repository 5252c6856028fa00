"""Per-executor resource limits behind one interface (v1, v2, none); no agent logic lives here."""

from __future__ import annotations

from burla.agent.cgroups.base import Cgroup, CgroupBackend, CgroupError, Limits
from burla.agent.cgroups.detect import build_backend, detect_backend, plan_backend
from burla.agent.cgroups.none import NoneBackend
from burla.agent.cgroups.v1 import V1Backend
from burla.agent.cgroups.v2 import V2Backend

__all__ = [
    "Cgroup",
    "CgroupBackend",
    "CgroupError",
    "Limits",
    "NoneBackend",
    "V1Backend",
    "V2Backend",
    "build_backend",
    "detect_backend",
    "plan_backend",
]

"""Choose the cgroup backend from mountinfo and /proc/self/cgroup; choosing never writes.

Building the chosen backend may write (v2 moves the agent into its leaf); `plan_backend` does
not, so it is what tests probe with fake trees.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

from burla.agent.cgroups.base import KILL_TIMEOUT_S, CgroupBackend, CgroupError
from burla.agent.cgroups.none import NoneBackend
from burla.agent.cgroups.v1 import OPTIONAL_CONTROLLERS as V1_OPTIONAL
from burla.agent.cgroups.v1 import REQUIRED_CONTROLLERS as V1_REQUIRED
from burla.agent.cgroups.v1 import V1Backend
from burla.agent.cgroups.v2 import REQUIRED_CONTROLLERS as V2_REQUIRED
from burla.agent.cgroups.v2 import V2Backend, delegated_root

log = structlog.get_logger("burla.agent.cgroups")

BackendName = Literal["v1", "v2", "none"]
# Only a cgroup2 mounted here is the unified hierarchy; one elsewhere (e.g. the
# /sys/fs/cgroup/unified of hybrid systemd setups) holds no useful controllers.
UNIFIED_MOUNTPOINT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo, reduced to what detection needs."""

    root: str  # the path inside the mounted filesystem (a cgroup path for cgroupfs)
    mountpoint: str
    fstype: str
    super_options: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Which backend to build, why, and the paths it needs (relative to the real `/`)."""

    backend: BackendName
    reason: str
    v1_mounts: dict[str, str] = field(default_factory=dict)  # controller -> mountpoint
    v2_mount: str | None = None
    v2_own: str | None = None  # our cgroup path relative to v2_mount


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo (proc(5)): optional fields end at a lone "-"; paths are octal-escaped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 6 or len(fields) < sep + 4:
            continue
        mounts.append(
            Mount(
                root=_unescape(fields[3]),
                mountpoint=_unescape(fields[4]),
                fstype=fields[sep + 1],
                super_options=tuple(fields[sep + 3].split(",")),
            )
        )
    return mounts


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def v1_controller_mounts(mounts: list[Mount]) -> dict[str, str]:
    """controller -> mountpoint for the v1 controllers burla uses (first mount wins)."""
    found: dict[str, str] = {}
    for mount in mounts:
        if mount.fstype != "cgroup":
            continue
        for option in mount.super_options:
            if option in V1_REQUIRED + V1_OPTIONAL:
                found.setdefault(option, mount.mountpoint)
    return found


def unified_own_path(proc_cgroup: str) -> str | None:
    """Our path in the unified hierarchy: the `0::<path>` line of /proc/self/cgroup."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def plan_backend(
    *,
    mountinfo: str = "/proc/self/mountinfo",
    proc_cgroup: str = "/proc/self/cgroup",
    fs_root: str = "/",
    euid: int | None = None,
    force: str | None = None,
) -> Plan:
    """Decide the backend without changing anything; `fs_root` prefixes every cgroupfs path."""
    if force not in (None, "v1", "v2", "none"):
        raise ValueError(f"cgroups backend must be 'v1', 'v2' or 'none', got {force!r}")
    if force == "none":
        return Plan("none", "forced by the agent's cgroups option")
    if force is None and (os.geteuid() if euid is None else euid) != 0:
        return Plan("none", "the agent does not run as root")
    mounts = parse_mountinfo(Path(mountinfo).read_text())
    v1_mounts = v1_controller_mounts(mounts)
    v2 = _unified(mounts, Path(proc_cgroup).read_text(), fs_root, strict=force is None)
    if force == "v2" or (force is None and v2 is not None):
        if v2 is None:
            raise CgroupError(f"cgroups forced to v2, but {mountinfo} has no cgroup2 mount")
        mount, own, why = v2
        return Plan("v2", why, v2_mount=mount, v2_own=own)
    if force == "v1" or all(c in v1_mounts for c in V1_REQUIRED):
        return Plan("v1", f"v1 controllers mounted: {sorted(v1_mounts)}", v1_mounts=v1_mounts)
    return Plan("none", f"no usable cgroups (v1 controllers mounted: {sorted(v1_mounts)})")


def _unified(
    mounts: list[Mount], proc_cgroup: str, fs_root: str, *, strict: bool
) -> tuple[str, str, str] | None:
    """(mountpoint, own path, reason) of a usable cgroup2 hierarchy, or None.

    strict: only the unified hierarchy at /sys/fs/cgroup with cpu and memory delegated to us;
    otherwise (v2 forced) any cgroup2 mount, preferring that one.
    """
    own = unified_own_path(proc_cgroup)
    candidates = sorted(
        (m for m in mounts if m.fstype == "cgroup2"),
        key=lambda m: m.mountpoint != UNIFIED_MOUNTPOINT,
    )
    if own is None or not candidates:
        return None
    mount = candidates[0]
    # Without a cgroup namespace the mount's root may be a sub-path of the hierarchy.
    if mount.root != "/" and own.startswith(mount.root):
        own = own[len(mount.root) :] or "/"
    if not strict:
        return mount.mountpoint, own, "forced by the agent's cgroups option"
    if mount.mountpoint != UNIFIED_MOUNTPOINT:
        return None
    service = Path(fs_root) / mount.mountpoint.lstrip("/") / delegated_root(own).lstrip("/")
    try:
        available = (service / "cgroup.controllers").read_text().split()
    except OSError:
        return None
    if not all(c in available for c in V2_REQUIRED):
        return None
    return mount.mountpoint, own, f"unified hierarchy with controllers {available}"


def build_backend(
    plan: Plan,
    *,
    root_name: str = "burla",
    fs_root: str = "/",
    kill_timeout_s: float = KILL_TIMEOUT_S,
) -> CgroupBackend:
    """Construct the planned backend (v2 moves the agent into its leaf here)."""
    prefix = Path(fs_root)
    if plan.backend == "v2":
        assert plan.v2_mount is not None and plan.v2_own is not None
        return V2Backend(
            prefix / plan.v2_mount.lstrip("/"),
            plan.v2_own,
            root_name,
            kill_timeout_s=kill_timeout_s,
        )
    if plan.backend == "v1":
        mounts = {c: prefix / m.lstrip("/") for c, m in plan.v1_mounts.items()}
        return V1Backend(mounts, root_name, kill_timeout_s)
    return NoneBackend(plan.reason)


def detect_backend(
    *,
    mountinfo: str = "/proc/self/mountinfo",
    proc_cgroup: str = "/proc/self/cgroup",
    root_name: str = "burla",
    force: str | None = None,
    fs_root: str = "/",
    euid: int | None = None,
) -> CgroupBackend:
    """Pick and build the backend; `force` ("v1", "v2", "none") is the agent's override."""
    plan = plan_backend(
        mountinfo=mountinfo, proc_cgroup=proc_cgroup, fs_root=fs_root, euid=euid, force=force
    )
    log.info("cgroup_backend", backend=plan.backend, reason=plan.reason)
    return build_backend(plan, root_name=root_name, fs_root=fs_root)

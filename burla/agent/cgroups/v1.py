"""Executor cgroups on cgroup v1 hierarchies (memory, cpu, cpuacct, pids, devices); no detection.

Executors live at `<mount>/<root_name>/<name>` in each controller's hierarchy, i.e. under the
*mount root*, not under the agent's own cgroup. As root we may create there, the path is the
same across agent restarts (so `cleanup_stale` finds what a crashed agent left, whatever cgroup
the new agent was started in), and the cgroup we were started in may belong to a supervisor
(here memory:/process_api/<id>, one per command) that would be blocked from removing it.
"""

from __future__ import annotations

from pathlib import Path

from burla.agent.cgroups.base import (
    KILL_TIMEOUT_S,
    REAL_FS,
    CgroupError,
    Limits,
    check_name,
    make_dir,
    read_int,
    read_keyed,
    read_pids,
    rmdir_with_retries,
    wait_until_empty,
    walk_post_order,
    write_file,
)

REQUIRED_CONTROLLERS = ("memory", "cpu", "cpuacct")
OPTIONAL_CONTROLLERS = ("pids", "devices")
# CFS period; 100 ms is the kernel default and keeps quota granularity fine enough for 0.1 CPU.
CFS_PERIOD_US = 100_000
# What every process needs even when GPUs are hidden: null, zero, full, random, urandom, tty,
# ptmx and the pty slaves.
BASIC_DEVICES = (
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
)


class V1Cgroup:
    """One executor's directory in every v1 hierarchy it uses."""

    def __init__(self, name: str, dirs: dict[str, Path], kill_timeout_s: float) -> None:
        self.name = name
        self._dirs = dirs  # controller -> directory; co-mounted controllers share one
        self._kill_timeout_s = kill_timeout_s

    def _unique_dirs(self) -> list[Path]:
        return list(dict.fromkeys(self._dirs.values()))

    def add_process(self, pid: int) -> None:
        for d in self._unique_dirs():
            write_file(d / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self._unique_dirs():
            found.update(read_pids(d / "cgroup.procs"))
        return sorted(found)

    def oom_kills(self) -> int:
        memory = self._dirs["memory"]
        oom_control = read_keyed(memory / "memory.oom_control")
        if "oom_kill" in oom_control:
            return oom_control["oom_kill"]
        # Kernels before 4.13 do not count kills: having hit the limit is the best evidence;
        # the caller pairs it with the executor's SIGKILL exit.
        return 1 if read_int(memory / "memory.failcnt") > 0 else 0

    def cpu_seconds(self) -> float:
        return read_int(self._dirs["cpuacct"] / "cpuacct.usage") / 1e9

    def memory_peak_bytes(self) -> int | None:
        return read_int(self._dirs["memory"] / "memory.max_usage_in_bytes")

    def kill_all(self) -> None:
        wait_until_empty(self.pids, timeout_s=self._kill_timeout_s, sigkill=True, what=self.name)

    def remove(self) -> None:
        self.kill_all()
        for d in self._unique_dirs():
            rmdir_with_retries(d, REAL_FS, timeout_s=self._kill_timeout_s)


class V1Backend:
    """Creates executor cgroups under `<mount>/<root_name>` in each v1 controller hierarchy."""

    name = "v1"
    enforced = True

    def __init__(
        self,
        mounts: dict[str, Path],
        root_name: str = "burla",
        kill_timeout_s: float = KILL_TIMEOUT_S,
    ) -> None:
        missing = [c for c in REQUIRED_CONTROLLERS if c not in mounts]
        if missing:
            raise CgroupError(f"cgroup v1 controllers not mounted: {', '.join(missing)}")
        self._mounts = {
            c: m for c, m in mounts.items() if c in REQUIRED_CONTROLLERS + OPTIONAL_CONTROLLERS
        }
        self.root_name = check_name(root_name)
        self._kill_timeout_s = kill_timeout_s
        self.pids_limited = "pids" in self._mounts

    def roots(self) -> list[Path]:
        """The `<mount>/<root_name>` directory of every hierarchy we use."""
        return list(dict.fromkeys(m / self.root_name for m in self._mounts.values()))

    def create(self, name: str, limits: Limits, parent: str | None = None) -> V1Cgroup:
        """An executor cgroup at `<root>/[<parent>/]<name>`; a parent comes from create_group."""
        check_name(name)
        controllers = list(REQUIRED_CONTROLLERS)
        if limits.pids is not None or "pids" in self._mounts:
            controllers.append("pids")
        if limits.devices:
            controllers.append("devices")
        unavailable = [c for c in controllers if c not in self._mounts]
        if unavailable:
            raise CgroupError(
                f"cgroup {name!r} needs v1 controllers that are not mounted: {unavailable}"
            )
        base = self.root_name if parent is None else f"{self.root_name}/{check_name(parent)}"
        dirs = {c: self._mounts[c] / base / name for c in controllers}
        return self._make(name, dirs, limits)

    def create_group(self, name: str, memory_bytes: int) -> V1Cgroup:
        """A parent capping its children's memory together; it spans every hierarchy we use,
        so any executor can be created below it."""
        check_name(name)
        dirs = {c: m / self.root_name / name for c, m in self._mounts.items()}
        return self._make(name, dirs, Limits(memory_bytes=memory_bytes))

    def _make(self, name: str, dirs: dict[str, Path], limits: Limits) -> V1Cgroup:
        unique = list(dict.fromkeys(dirs.values()))
        existing = [str(d) for d in unique if d.exists()]
        if existing:
            raise CgroupError(f"cgroups already exist: {existing}; run cleanup_stale() first")
        cgroup = V1Cgroup(name, dirs, self._kill_timeout_s)
        try:
            for d in unique:
                for ancestor in self._ancestors(d):
                    make_dir(ancestor, REAL_FS, exist_ok=True)
                make_dir(d, REAL_FS)
            _apply(dirs, limits)
        except BaseException:
            cgroup.remove()
            raise
        return cgroup

    def _ancestors(self, d: Path) -> list[Path]:
        """The directories between d's mount and d (root first): `<root>`, `<root>/<parent>`."""
        mount = next(m for m in self._mounts.values() if d.is_relative_to(m))
        parts = d.relative_to(mount).parts
        return [mount.joinpath(*parts[:i]) for i in range(1, len(parts))]

    def cleanup_stale(self) -> int:
        """Remove every cgroup under our roots (deepest first); returns the top-level count."""
        groups: dict[Path, dict[str, Path]] = {}
        for controller, mount in self._mounts.items():
            root = mount / self.root_name
            if root.is_dir():
                for path in walk_post_order(root):
                    groups.setdefault(path.relative_to(root), {})[controller] = path
        for relative in sorted(groups, key=lambda p: len(p.parts), reverse=True):
            V1Cgroup(str(relative), groups[relative], self._kill_timeout_s).remove()
        return sum(1 for relative in groups if len(relative.parts) == 1)

    def remove_root(self) -> None:
        """Remove our (empty) root directories; call after every executor cgroup is removed."""
        for root in self.roots():
            rmdir_with_retries(root, REAL_FS, timeout_s=self._kill_timeout_s)


def _apply(dirs: dict[str, Path], limits: Limits) -> None:
    memory = dirs["memory"]
    write_file(memory / "memory.swappiness", "0")  # executors never swap, limited or not
    if limits.memory_bytes is not None:
        value = str(limits.memory_bytes)
        # Order matters: memsw may never be below the memory limit, and both start at max.
        write_file(memory / "memory.limit_in_bytes", value)
        if (memory / "memory.memsw.limit_in_bytes").exists():  # absent without swap accounting
            write_file(memory / "memory.memsw.limit_in_bytes", value)
    if limits.cpus is not None:
        cpu = dirs["cpu"]
        write_file(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        write_file(cpu / "cpu.cfs_quota_us", str(max(1000, round(limits.cpus * CFS_PERIOD_US))))
    if limits.pids is not None:
        write_file(dirs["pids"] / "pids.max", str(limits.pids))
    if limits.devices:
        devices = dirs["devices"]
        write_file(devices / "devices.deny", "a")
        for rule in BASIC_DEVICES + limits.devices:
            write_file(devices / "devices.allow", rule)

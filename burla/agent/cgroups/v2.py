"""Executor cgroups on the cgroup v2 unified hierarchy, inside the agent's delegated cgroup.

It must never write outside the cgroup systemd delegated to the agent (`Delegate=yes`).

Layout, with `<svc>` the agent's own cgroup from /proc/self/cgroup (`0::/<svc>`):

    <svc>/agent          the agent and everything it started before (zygote included)
    <svc>/<root>/        no processes; enables cpu, memory, pids for its children
    <svc>/<root>/<name>  one executor

v2 forbids processes in a cgroup that hands controllers to its children ("no internal
processes"), so the agent first moves every process of `<svc>` into the `agent` leaf, then
enables the controllers in `<svc>` and `<svc>/<root>`. Executors sit in their own `<root>`
subtree rather than next to `agent`, so `cleanup_stale` removes every child of one directory
without parsing names, and an executor name can never collide with the agent leaf.
"""

from __future__ import annotations

import errno
from pathlib import Path

from burla.agent.cgroups.base import (
    KILL_TIMEOUT_S,
    REAL_FS,
    CgroupError,
    CgroupFs,
    Limits,
    check_name,
    make_dir,
    read_file,
    read_int,
    read_keyed,
    read_pids,
    rmdir_with_retries,
    wait_until_empty,
    walk_post_order,
)

# The leaf holding the agent's own processes; see the module docstring for why it exists.
AGENT_LEAF = "agent"
REQUIRED_CONTROLLERS = ("cpu", "memory")
OPTIONAL_CONTROLLERS = ("pids",)
CPU_PERIOD_US = 100_000  # kernel default period; the quota is cpus * period


def delegated_root(own: str) -> str:
    """The delegated service cgroup: our own, or its parent once we moved into AGENT_LEAF."""
    own = "/" + own.strip("/")
    head, _, tail = own.rpartition("/")
    if tail == AGENT_LEAF:
        return head or "/"
    return own


class V2Cgroup:
    """One executor's cgroup directory in the unified hierarchy."""

    def __init__(
        self, name: str, path: Path, kill_timeout_s: float, fs: CgroupFs = REAL_FS
    ) -> None:
        self.name = name
        self.path = path
        self._kill_timeout_s = kill_timeout_s
        self._fs = fs

    def add_process(self, pid: int) -> None:
        self._fs.write(self.path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        return read_pids(self.path / "cgroup.procs")

    def oom_kills(self) -> int:
        return read_keyed(self.path / "memory.events").get("oom_kill", 0)

    def cpu_seconds(self) -> float:
        return read_keyed(self.path / "cpu.stat").get("usage_usec", 0) / 1e6

    def memory_peak_bytes(self) -> int | None:
        peak = self.path / "memory.peak"  # kernel >= 5.19
        return read_int(peak) if peak.exists() else None

    def kill_all(self) -> None:
        if not self.path.is_dir():
            return
        kill_file = self.path / "cgroup.kill"  # kernel >= 5.14; kills forks in flight too
        if kill_file.exists():
            self._fs.write(kill_file, "1")
        wait_until_empty(
            self.pids,
            timeout_s=self._kill_timeout_s,
            sigkill=not kill_file.exists(),
            what=str(self.path),
        )

    def remove(self) -> None:
        if not self.path.is_dir():
            return
        self.kill_all()
        rmdir_with_retries(self.path, self._fs, timeout_s=self._kill_timeout_s)


class V2Backend:
    """Creates executor cgroups under `<svc>/<root_name>`; setting up the agent leaf on init."""

    name = "v2"
    enforced = True

    def __init__(
        self,
        mount: Path,
        own: str,
        root_name: str = "burla",
        *,
        kill_timeout_s: float = KILL_TIMEOUT_S,
        fs: CgroupFs = REAL_FS,
    ) -> None:
        """`mount`: the cgroup2 mount point; `own`: our path in it (from /proc/self/cgroup).

        `fs` is injectable so tests can run against a fake cgroup tree.
        """
        self.service = mount / delegated_root(own).lstrip("/")
        self.agent_leaf = self.service / AGENT_LEAF
        self.root = self.service / check_name(root_name)
        self._kill_timeout_s = kill_timeout_s
        self._fs = fs
        available = read_file(self.service / "cgroup.controllers").split()
        missing = [c for c in REQUIRED_CONTROLLERS if c not in available]
        if missing:
            raise CgroupError(
                f"cgroup v2 controllers {missing} are not delegated to {self.service} "
                f"(available: {available}); set Delegate=yes on the agent's systemd unit"
            )
        self.controllers = [
            c for c in REQUIRED_CONTROLLERS + OPTIONAL_CONTROLLERS if c in available
        ]
        self.pids_limited = "pids" in self.controllers
        self._setup()

    def _setup(self) -> None:
        make_dir(self.agent_leaf, self._fs, exist_ok=True)
        for pid in read_pids(self.service / "cgroup.procs"):
            try:
                self._fs.write(self.agent_leaf / "cgroup.procs", str(pid))
            except CgroupError as e:
                if e.errno != errno.ESRCH:  # it exited meanwhile: nothing to move
                    raise
        enable = " ".join(f"+{c}" for c in self.controllers)
        self._fs.write(self.service / "cgroup.subtree_control", enable)
        make_dir(self.root, self._fs, exist_ok=True)
        self._fs.write(self.root / "cgroup.subtree_control", enable)

    def create(self, name: str, limits: Limits, parent: str | None = None) -> V2Cgroup:
        """An executor cgroup at `<root>/[<parent>/]<name>`; a parent comes from create_group."""
        base = self.root if parent is None else self.root / check_name(parent)
        path = base / check_name(name)
        if path.exists():
            raise CgroupError(f"cgroup {path} already exists; run cleanup_stale() first")
        if limits.pids is not None and "pids" not in self.controllers:
            raise CgroupError(f"pids limit asked but pids controller not delegated to {self.root}")
        make_dir(path, self._fs)
        cgroup = V2Cgroup(name, path, self._kill_timeout_s, self._fs)
        try:
            _apply(path, limits, self._fs)
        except BaseException:
            cgroup.remove()
            raise
        return cgroup

    def create_group(self, name: str, memory_bytes: int) -> V2Cgroup:
        """A process-free parent whose memory.max caps all its children together.

        memory.oom.group stays 0 here: an OOM of the group kills one executor, not all.
        """
        path = self.root / check_name(name)
        if path.exists():
            raise CgroupError(f"cgroup {path} already exists; run cleanup_stale() first")
        make_dir(path, self._fs)
        cgroup = V2Cgroup(name, path, self._kill_timeout_s, self._fs)
        try:
            self._fs.write(path / "memory.max", str(memory_bytes))
            if (path / "memory.swap.max").exists():
                self._fs.write(path / "memory.swap.max", "0")
            enable = " ".join(f"+{c}" for c in self.controllers)
            self._fs.write(path / "cgroup.subtree_control", enable)
        except BaseException:
            cgroup.remove()
            raise
        return cgroup

    def cleanup_stale(self) -> int:
        """Remove every cgroup under our root (deepest first); returns the top-level count."""
        if not self.root.is_dir():
            return 0
        stale = walk_post_order(self.root)
        for child in stale:
            V2Cgroup(child.name, child, self._kill_timeout_s, self._fs).remove()
        return sum(1 for child in stale if child.parent == self.root)

    def roots(self) -> list[Path]:
        return [self.root]

    def remove_root(self) -> None:
        """Remove our (empty) root; call after every executor cgroup is removed."""
        rmdir_with_retries(self.root, self._fs, timeout_s=self._kill_timeout_s)


def _apply(path: Path, limits: Limits, fs: CgroupFs) -> None:
    # limits.devices is ignored: v2 has no devices files (only BPF programs), so GPUs are
    # hidden by the sandbox's private /dev instead.
    if limits.cpus is None:
        fs.write(path / "cpu.max", f"max {CPU_PERIOD_US}")
    else:
        quota = max(1000, round(limits.cpus * CPU_PERIOD_US))  # kernel minimum is 1 ms
        fs.write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
    fs.write(
        path / "memory.max", "max" if limits.memory_bytes is None else str(limits.memory_bytes)
    )
    if (path / "memory.swap.max").exists():  # absent when swap accounting is off: no swap then
        fs.write(path / "memory.swap.max", "0")
    # On OOM, kill the executor's whole process tree, not one child that leaves it half-broken.
    fs.write(path / "memory.oom.group", "1")
    if (path / "pids.max").exists():
        fs.write(path / "pids.max", "max" if limits.pids is None else str(limits.pids))

"""The cgroup backend interface, Limits, and the cgroupfs file helpers; it picks no backend."""

from __future__ import annotations

import errno
import functools
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

log = structlog.get_logger("burla.agent.cgroups")

# How long kill_all waits for a cgroup to empty and remove() retries rmdir: the kernel needs
# a few milliseconds to tear down killed tasks, a process stuck in D state may take seconds.
KILL_TIMEOUT_S = 5.0
# Pause between polls of cgroup.procs / rmdir retries; short, the wait is usually < 50 ms.
POLL_INTERVAL_S = 0.01


class CgroupError(Exception):
    """A cgroup file or directory could not be written, read or removed.

    The message names the path and the value; `errno` keeps the OS error code, if any.
    Recover: run the agent as root (or in a systemd unit with `Delegate=yes`), or start it
    with `--cgroups none` to run without limits.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class Limits:
    """Resource limits of one executor; None or empty means "do not limit"."""

    cpus: float | None = None  # CPU quota in CPUs (func_cpu)
    memory_bytes: int | None = None  # hard limit, swap disabled (integer func_ram)
    pids: int | None = None
    # Extra allowed char devices, e.g. ("c 195:0 rwm",) for one GPU (v1 devices cgroup only);
    # empty means the devices controller is not used at all.
    devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.cpus is not None and self.cpus <= 0:
            raise ValueError(f"Limits.cpus must be > 0, got {self.cpus!r}")
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ValueError(f"Limits.memory_bytes must be > 0, got {self.memory_bytes!r}")
        if self.pids is not None and self.pids <= 0:
            raise ValueError(f"Limits.pids must be > 0, got {self.pids!r}")


class Cgroup(Protocol):
    """One executor's cgroup (in one or several hierarchies)."""

    name: str

    def add_process(self, pid: int) -> None: ...
    def pids(self) -> list[int]: ...
    def oom_kills(self) -> int: ...
    def cpu_seconds(self) -> float: ...
    def memory_peak_bytes(self) -> int | None: ...
    def kill_all(self) -> None: ...
    def remove(self) -> None: ...


class CgroupBackend(Protocol):
    """Creates executor cgroups under the agent's root; "v1", "v2" or "none".

    `create_group` makes a parent that holds no process itself and caps the memory of all the
    executors later created with `parent=` its name (the agent's dynamic-RAM budget).
    """

    name: str
    enforced: bool
    pids_limited: bool  # whether Limits.pids can be enforced (a pids controller is ours)

    def create(self, name: str, limits: Limits, parent: str | None = None) -> Cgroup: ...
    def create_group(self, name: str, memory_bytes: int) -> Cgroup: ...
    def cleanup_stale(self) -> int: ...
    def remove_root(self) -> None: ...
    def roots(self) -> list[Path]: ...


def check_name(name: str) -> str:
    """Return `name` if it is usable as one cgroup directory name, else raise ValueError."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"cgroup name must be one path component, got {name!r}")
    return name


class CgroupFs:
    """The operations that change a cgroup tree; tests swap in a fake kernel.

    Reads stay plain file reads: a fake tree is made of real files.
    """

    def write(self, path: Path, value: str) -> None:
        write_file(path, value)

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)


REAL_FS = CgroupFs()


def make_dir(path: Path, fs: CgroupFs, *, exist_ok: bool = False) -> None:
    """Create one cgroup directory, naming it in the error."""
    if exist_ok and path.is_dir():
        return
    try:
        fs.mkdir(path)
    except FileExistsError:
        if not exist_ok:  # else: created concurrently, which is what we wanted
            raise CgroupError(f"cgroup {path} already exists") from None
    except OSError as e:
        raise CgroupError(f"cannot create cgroup {path}: {e.strerror}", e.errno) from e


def write_file(path: Path, value: str) -> None:
    """Write `value` to an existing cgroup file; never creates files, so typos fail loudly."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except OSError as e:
        raise CgroupError(f"cannot open {path} to write {value!r}: {e.strerror}", e.errno) from e
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise CgroupError(f"cannot write {value!r} to {path}: {e.strerror}", e.errno) from e
    finally:
        os.close(fd)


def read_file(path: Path) -> str:
    """Read one cgroup file, naming it in the error."""
    try:
        return path.read_text()
    except OSError as e:
        raise CgroupError(f"cannot read {path}: {e.strerror}", e.errno) from e


def read_int(path: Path) -> int:
    """A file holding one integer (cpuacct.usage, memory.peak)."""
    text = read_file(path).strip()
    try:
        return int(text)
    except ValueError as e:
        raise CgroupError(f"expected an integer in {path}, found {text!r}") from e


def read_keyed(path: Path) -> dict[str, int]:
    """Parse "key value" lines (memory.events, cpu.stat, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in read_file(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def read_pids(path: Path) -> list[int]:
    """The pids listed in a cgroup.procs file; [] when the cgroup is already gone."""
    if not path.parent.is_dir():
        return []
    return [int(tok) for tok in read_file(path).split()]


def wait_until_empty(
    list_pids: Callable[[], list[int]],
    *,
    timeout_s: float,
    sigkill: bool,
    what: str,
) -> bool:
    """Poll `list_pids` until empty (SIGKILL-ing them each round if asked); True if it emptied.

    Bounded by `timeout_s`, because a task in uninterruptible sleep can outlive SIGKILL.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        pids = list_pids()
        if not pids:
            return True
        if time.monotonic() >= deadline:
            log.warning("cgroup_kill_timeout", cgroup=what, pids=pids, timeout_s=timeout_s)
            return False
        if sigkill:
            _sigkill(pids)
        time.sleep(POLL_INTERVAL_S)


def _sigkill(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def walk_post_order(root: Path) -> list[Path]:
    """Every cgroup directory below `root`, children before their parents (the rmdir order)."""
    found = [Path(top) / name for top, dirs, _ in os.walk(root) for name in dirs]
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def remove_tree(root: Path, *, timeout_s: float = KILL_TIMEOUT_S) -> None:
    """Kill every process in `root` and the cgroups below it, then remove them all.

    For the zygote, which outlives a killed agent to remove its cgroups: it knows no backend,
    only the roots, and every backend's cgroups are directories with a cgroup.procs file.
    """
    if not root.is_dir():
        return
    for path in [*walk_post_order(root), root]:
        procs = functools.partial(read_pids, path / "cgroup.procs")
        wait_until_empty(procs, timeout_s=timeout_s, sigkill=True, what=str(path))
        rmdir_with_retries(path, REAL_FS, timeout_s=timeout_s)


def rmdir_with_retries(path: Path, fs: CgroupFs, *, timeout_s: float) -> None:
    """Remove one cgroup directory; absent is fine, EBUSY is retried until `timeout_s`.

    A cgroup stays busy for a moment after its last task was killed, so one failure is normal.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fs.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {e.strerror}", e.errno) from e
        time.sleep(POLL_INTERVAL_S)

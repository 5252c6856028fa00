"""The no-cgroup backend: limits are only logical; it must never pretend they are enforced."""

from __future__ import annotations

import os
import select
import signal
from pathlib import Path

import structlog

from burla.agent.cgroups.base import Limits, check_name

log = structlog.get_logger("burla.agent.cgroups")


class NoneCgroup:
    """Holds a pidfd per process it was given; it can list and kill them, nothing more.

    pidfds, not bare pids, so a kill after the executor was reaped can never hit a process
    that reused its pid.
    """

    def __init__(self, name: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits  # kept so the agent can still schedule by them
        self._pidfds: dict[int, int] = {}  # pid -> pidfd

    def add_process(self, pid: int) -> None:
        if pid not in self._pidfds:
            try:
                self._pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                pass  # already gone: nothing to limit or kill

    def pids(self) -> list[int]:
        return sorted(pid for pid, fd in self._pidfds.items() if _alive(fd))

    def oom_kills(self) -> int:
        return 0  # nothing limits memory, so no kill can be attributed to this executor

    def cpu_seconds(self) -> float:
        return 0.0  # not measured without cpuacct

    def memory_peak_bytes(self) -> int | None:
        return None

    def kill_all(self) -> None:
        for fd in self._pidfds.values():
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        self.kill_all()
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()


def _alive(pidfd: int) -> bool:
    """A pidfd turns readable once its process has exited (zombie or reaped)."""
    readable, _, _ = select.select([pidfd], [], [], 0)
    return not readable


class NoneBackend:
    """Hands out NoneCgroups; says once, at construction, that limits are not enforced."""

    name = "none"
    enforced = False
    pids_limited = False

    def __init__(self, reason: str) -> None:
        self.reason = reason
        log.warning("cgroup_limits_not_enforced", reason=reason)

    def create(self, name: str, limits: Limits, parent: str | None = None) -> NoneCgroup:
        return NoneCgroup(check_name(name), limits)

    def create_group(self, name: str, memory_bytes: int) -> NoneCgroup:
        return NoneCgroup(check_name(name), Limits(memory_bytes=memory_bytes))

    def cleanup_stale(self) -> int:
        return 0  # a previous run left no cgroups behind

    def remove_root(self) -> None:
        pass

    def roots(self) -> list[Path]:
        return []

"""The processes a job leaves in its executor: children that exited unwaited (zombies), and
daemons (setsid, double fork), which stay in the executor's tree because it is their child
subreaper. Between jobs they are killed and reaped; during a call nothing here runs, so no
exit status a user's subprocess waits for is taken. It also explains a fork that the
executor's pids.max refused. It runs no user code.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

# How long the end of a job waits for the processes it killed to be gone; past it the executor
# is retired instead (a process in uninterruptible sleep can outlive SIGKILL for a while).
KILL_TIMEOUT_S = 2.0
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
# Bound here, before any user code: a call that replaces one must not change the clean-up.
_len, _open = len, open
_kill, _waitpid, _waitid, _listdir = os.kill, os.waitpid, os.waitid, os.listdir
_monotonic, _sleep = time.monotonic, time.sleep
_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> bool:
    """Adopt every orphan of our descendants (PR_SET_CHILD_SUBREAPER), so a daemon a call
    starts stays in our tree to be killed; False where the kernel cannot."""
    return bool(_libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def is_subreaper() -> bool:
    flag = ctypes.c_int()
    _libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
    return bool(flag.value)


def children() -> list[int]:
    """Our direct child processes, zombies included (every thread's children file)."""
    found: list[int] = []
    try:
        tasks = _listdir("/proc/self/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with _open(f"/proc/self/task/{task}/children", "rb") as handle:
                found += [int(pid) for pid in handle.read().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return found


def reap() -> int:
    """Collect every exited child (zombie); returns how many. Only between jobs: during a call
    it would steal the exit status that a user's subprocess waits for."""
    reaped = 0
    while True:
        try:
            pid, _ = _waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped += 1


def has_children() -> bool:
    """Whether any child, running or a zombie, is ours: one syscall, the common answer no."""
    try:
        _waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def kill_leftovers(timeout_s: float = KILL_TIMEOUT_S) -> tuple[int, bool]:
    """SIGKILL every process the job left (our subtree: its orphans were reparented to us) and
    reap them; returns (how many there were, whether all are gone)."""
    if not has_children():
        return 0, True
    deadline = _monotonic() + timeout_s
    seen: set[int] = set()
    while True:
        left = children()
        if not left:
            return _len(seen), True
        seen.update(left)
        for pid in left:
            try:
                _kill(pid, signal.SIGKILL)  # our child: its pid is not reused until we reap it
            except ProcessLookupError:
                pass
        reap()
        if _monotonic() >= deadline:
            return _len(seen), not children()
        if children():
            _sleep(0.001)  # SIGKILL takes effect, and orphans reach us, within microseconds


class PidLimit:
    """Tells a call that a failed fork or thread start hit its executor's pids.max."""

    def __init__(self) -> None:
        self.seen = 0  # the cgroup's "max" events already explained (a fresh cgroup has none)
        self._dir: str | None = None

    def explain(self, exc: BaseException) -> None:
        """Add a note to `exc` if it is the limit's doing: the cgroup counted a refused fork."""
        if not (isinstance(exc, BlockingIOError) or (
                isinstance(exc, RuntimeError) and "start new thread" in str(exc))):
            return
        try:
            self._dir = self._dir or _pids_cgroup()
            if self._dir is None:
                return
            with _open(f"{self._dir}/pids.events") as handle:
                events = dict(line.split() for line in handle if line.strip())
            hits = int(events.get("max", 0))
            if hits <= self.seen:
                return
            self.seen = hits
            with _open(f"{self._dir}/pids.max") as handle:
                limit = handle.read().strip()
        except (OSError, ValueError):
            return
        exc.add_note(
            f"[burla] the call could not start another process or thread: its executor may "
            f"hold at most {limit} at once (cgroup pids.max). Start fewer at once, or start "
            f"the agent with a higher --executor-pids-max.")


def _pids_cgroup() -> str | None:
    """Our pids cgroup directory: v1's pids hierarchy, else the v2 unified one."""
    with _open("/proc/self/cgroup") as handle:
        lines = handle.read().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(",") or (not controllers and line.startswith("0::")):
            base = "/sys/fs/cgroup/pids" if controllers else "/sys/fs/cgroup"
            candidate = base + path.rstrip("/")
            if os.path.exists(f"{candidate}/pids.events"):
                return candidate
    return None

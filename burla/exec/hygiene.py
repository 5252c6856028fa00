"""What one job may leave in its executor that would break the next: a fingerprint of the
state the next job relies on, and the processes the job left behind. It runs no user code and
never decides about the executor's fate: the runner reports, the agent retires.

The fingerprint is taken once, before any user code, and compared once per job, when the job
ends on this executor (never per input or per chunk). It holds identities, not copies: the
values of builtins and of the runtime's modules' functions and classes, the open files behind
fds 0-2, signal handlers and mask, interval timers, the streams and hooks of `sys`, the working
directory and the umask. The executor is the child subreaper of everything a call starts, so a
daemon (setsid, double fork) is still its descendant when the job ends, and is killed then.
"""

from __future__ import annotations

import _signal
import builtins
import ctypes
import errno
import fcntl
import gc
import operator
import os
import signal
import sys
import time
import types
from collections.abc import Callable
from typing import Any

# Modules the executor's runtime calls into after user code ran: a user's replacement of one
# of their functions or classes would reach the next job. Those of burla are found by name.
RUNTIME_MODULES = (
    "pickle", "copyreg", "cloudpickle", "cloudpickle.cloudpickle", "tblib",
    "tblib.pickling_support", "msgpack", "zmq",
)
# Signals whose disposition Python cannot change (the kernel refuses).
_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}
SIGNALS = tuple(sorted(s for s in signal.valid_signals() if s not in _UNCATCHABLE))
TIMER_NAMES = {signal.ITIMER_REAL: "ITIMER_REAL, or signal.alarm",
               signal.ITIMER_VIRTUAL: "ITIMER_VIRTUAL", signal.ITIMER_PROF: "ITIMER_PROF"}
TIMERS = tuple(TIMER_NAMES)
# How long the end of a job waits for the processes it killed to be gone; past it the executor
# is retired instead (a process in uninterruptible sleep can outlive SIGKILL for a while).
KILL_TIMEOUT_S = 2.0
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
# Bound here, before any user code: a call that replaces a builtin must not change this check.
_is_not, _len, _tuple, _map, _any = operator.is_not, len, tuple, map, any
_kill, _waitpid, _listdir, _open = os.kill, os.waitpid, os.listdir, open
_monotonic, _sleep = time.monotonic, time.sleep
_NO_TIMER = (0.0, 0.0)


_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> bool:
    """Adopt every orphan of our descendants (PR_SET_CHILD_SUBREAPER), so a daemon a call
    starts stays in our tree to be killed; False where the kernel cannot."""
    return bool(_libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def _is_subreaper() -> bool:
    flag = ctypes.c_int()
    _libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
    return bool(flag.value)


class _Names:
    """The values of some names of one namespace (a dict), compared by identity."""

    def __init__(self, label: str, namespace: dict[str, Any], names: list[str]) -> None:
        self.label = label
        self.namespace = namespace
        self.names = tuple(names)
        self.size = _len(namespace)
        self._get: Callable[[dict[str, Any]], Any] = (
            operator.itemgetter(*self.names) if self.names else (lambda _d: ())
        )
        self.values = self._values()

    def _values(self) -> tuple[Any, ...]:
        got = self._get(self.namespace)
        return got if _len(self.names) != 1 else (got,)

    def changed(self, whole: bool) -> list[str]:
        """Names whose value is no longer the same object; `whole`: added names count too."""
        try:
            if not _any(_map(_is_not, self._values(), self.values)) and (
                not whole or _len(self.namespace) == self.size
            ):
                return []
        except KeyError:
            pass  # a name was deleted: find which below
        missing = object()
        found = [
            name for name, value in zip(self.names, self.values, strict=True)
            if self.namespace.get(name, missing) is not value
        ]
        if whole:
            known = set(self.names)
            found += sorted(name for name in list(self.namespace) if name not in known)
        return [f"{self.label}.{name}" for name in found]


def _runtime_names() -> list[_Names]:
    watched = []
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType):
            continue
        if name == "burla" or name.startswith("burla.") or name in RUNTIME_MODULES:
            namespace = vars(module)
            names = [key for key, value in namespace.items()
                     if callable(value) or isinstance(value, types.ModuleType)]
            watched.append(_Names(name, namespace, names))
    return watched


def _fd_identity(fd: int) -> tuple[int, int, int] | str:
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino, fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, "closed")


def _signal_state() -> tuple[Any, ...]:
    # _signal's getsignal, not signal's: that one wraps each answer in an enum, 20 times slower.
    return (*_map(_signal.getsignal, SIGNALS), frozenset(signal.pthread_sigmask(
        signal.SIG_BLOCK, ())))


def _armed_timers() -> frozenset[int]:
    return frozenset(timer for timer in TIMERS if signal.getitimer(timer) != _NO_TIMER)


def _process_state() -> dict[str, Any]:
    """The cheap facts of the process a job may change: streams, hooks, cwd, umask."""
    try:
        cwd = os.getcwd()
    except OSError as e:
        cwd = f"<{e.strerror}>"
    mask = os.umask(0o022)
    os.umask(mask)
    return {
        "sys.stdin": id(sys.stdin), "sys.stdout": id(sys.stdout), "sys.stderr": id(sys.stderr),
        "sys.excepthook": id(sys.excepthook), "sys.displayhook": id(sys.displayhook),
        "the trace function (sys.settrace)": id(sys.gettrace()),
        "the profile function (sys.setprofile)": id(sys.getprofile()),
        "the recursion limit": sys.getrecursionlimit(), "gc.isenabled()": gc.isenabled(),
        "the working directory": cwd, "the umask": mask,
        "whether the executor adopts orphans (PR_SET_CHILD_SUBREAPER)": _is_subreaper(),
    }


class Fingerprint:
    """The state at the executor's start; `changes()` names what differs now."""

    def __init__(self) -> None:
        self.builtins = _Names("builtins", vars(builtins), list(vars(builtins)))
        self.modules = _runtime_names()
        self.module_objects = {watch.label: sys.modules[watch.label] for watch in self.modules}
        self.fds = _tuple(_fd_identity(fd) for fd in (0, 1, 2))
        self.signals = _signal_state()
        self.timers = _armed_timers()
        self.process = _process_state()

    def changes(self) -> list[str]:
        """What a job changed that the next job would inherit, in words; [] when nothing."""
        try:
            return self._changes()
        except Exception as e:  # user code broke something this check itself relies on
            return [f"left the executor unable to check its state ({type(e).__name__}: {e})"]

    def _changes(self) -> list[str]:
        found = [f"changed {name}" for name in self.builtins.changed(whole=True)]
        for watch in self.modules:
            if sys.modules.get(watch.label) is not self.module_objects[watch.label]:
                found.append(f"replaced the module {watch.label} in sys.modules")
            found += [f"changed {name}" for name in watch.changed(whole=False)]
        for fd, before in enumerate(self.fds):
            if _fd_identity(fd) != before:
                found.append(f"closed or replaced fd {fd}")
        now = _signal_state()
        if now != self.signals:
            found += [f"changed the handler of {signal.Signals(sig).name}"
                      for sig, old, new in zip(SIGNALS, self.signals, now) if old != new]
            if now[-1] != self.signals[-1]:
                found.append("changed the blocked signal mask")
        found += [f"left an interval timer armed ({TIMER_NAMES[timer]})"
                  for timer in _armed_timers() - self.timers]
        process = _process_state()
        found += [f"changed {what}" for what, value in process.items()
                  if value != self.process[what]]
        return found


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


def kill_leftovers(timeout_s: float = KILL_TIMEOUT_S) -> tuple[int, bool]:
    """SIGKILL every process the job left (our subtree: its orphans were reparented to us) and
    reap them; returns (how many there were, whether all are gone)."""
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


def end_of_job(fingerprint: Fingerprint) -> list[str]:
    """Kill and reap what the job left, then say what it changed ([] keeps the executor warm)."""
    _, all_gone = kill_leftovers()
    reasons = fingerprint.changes()
    if not all_gone:
        reasons.append(f"left processes that SIGKILL did not end within {KILL_TIMEOUT_S:g} s")
    return reasons


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

"""The state of an executor that a job may change and the next job would inherit: taken once,
before any user code, compared once per job, when the job ends there (never per input or per
chunk). It runs no user code and decides nothing: the runner asks, the agent retires.

It holds identities, not copies: the values of builtins and of the runtime's modules' functions
and classes, the open files behind fds 0-2, signal handlers and mask, interval timers, the
streams and hooks of `sys`, the working directory, the umask, and the subreaper flag.
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
import types
from collections.abc import Callable
from typing import Any

from burla.exec.leftovers import is_subreaper

# Modules the executor's runtime calls into after user code ran, to send results back: a
# user's replacement of one of their functions or classes would reach the next job. Those of
# burla are found by name.
RUNTIME_MODULES = (
    "pickle", "copyreg", "cloudpickle", "cloudpickle.cloudpickle", "tblib.pickling_support",
)
# Signals whose disposition Python cannot change (the kernel refuses).
_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}
SIGNALS = tuple(sorted(s for s in signal.valid_signals() if s not in _UNCATCHABLE))
TIMER_NAMES = {signal.ITIMER_REAL: "ITIMER_REAL, or signal.alarm",
               signal.ITIMER_VIRTUAL: "ITIMER_VIRTUAL", signal.ITIMER_PROF: "ITIMER_PROF"}
TIMERS = tuple(TIMER_NAMES)
_NO_TIMER = (0.0, 0.0)
# Bound here, before any user code: a call that replaces a builtin must not change this check.
_call, _len, _tuple, _map = operator.call, len, tuple, map


class _Names:
    """Some names of one namespace (a dict) and the objects they held at the start."""

    def __init__(self, label: str, namespace: dict[str, Any], names: list[str]) -> None:
        self.label = label
        self.namespace = namespace
        self.names = tuple(names)
        self.size = _len(namespace)
        # Called on the namespace, it gives the names' values at once, in C.
        self.get: Callable[[dict[str, Any]], Any] = operator.itemgetter(*self.names)
        self.values = _tuple(self.namespace.get(name) for name in self.names)

    def changed(self, whole: bool) -> list[str]:
        """Names whose value is no longer the same object; `whole`: added names count too."""
        missing = object()
        found = [
            name for name, value in zip(self.names, self.values, strict=True)
            if self.namespace.get(name, missing) is not value
        ]
        if whole:
            known = set(self.names)
            found += sorted(name for name in list(self.namespace) if name not in known)
        return [f"{self.label}.{name}" for name in found]


class DictVersions:
    """The version numbers CPython keeps in each dict (PEP 509), bumped by every change to
    it: reading 20 of them costs less than comparing the 600 values they stand for.

    A private field, read at its offset in the dict object: used only once a probe dict
    showed that the field there moves on each kind of change; otherwise (another Python, or
    one that dropped the field) `unchanged()` is always False and the values are compared.
    """

    def __init__(self, namespaces: tuple[dict[str, Any], ...]) -> None:
        self._views = _tuple(_version_view(ns) for ns in namespaces) if _versions_work() else ()
        self._seen = self._read()

    def _read(self) -> tuple[int, ...]:
        return _tuple(_map(_VALUE, self._views))

    def unchanged(self) -> bool:
        return bool(self._views) and self._read() == self._seen

    def rebase(self) -> None:
        self._seen = self._read()


_VALUE = operator.attrgetter("value")
# ob_refcnt, ob_type and ma_used come first in a PyDictObject, then ma_version_tag.
_VERSION_OFFSET = 3 * ctypes.sizeof(ctypes.c_ssize_t)


def _version_view(namespace: dict[str, Any]) -> ctypes.c_uint64:
    return ctypes.c_uint64.from_address(id(namespace) + _VERSION_OFFSET)


def _versions_work() -> bool:
    if sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):  # debug build
        return False
    probe: dict[str, Any] = {}
    view = _version_view(probe)
    seen = [view.value]
    for change in (lambda: probe.__setitem__("k", 1), lambda: probe.__setitem__("k", 2),
                   lambda: probe.__setitem__("j", 3), lambda: probe.__delitem__("k"),
                   probe.clear):
        change()
        seen.append(view.value)
    return all(after != before for before, after in zip(seen, seen[1:]))


def _runtime_names() -> list[_Names]:
    watched = []
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType):
            continue
        if name == "burla" or name.startswith("burla.") or name in RUNTIME_MODULES:
            namespace = vars(module)
            names = [key for key, value in namespace.items()
                     if callable(value) or isinstance(value, types.ModuleType)]
            if names:
                watched.append(_Names(name, namespace, names))
    return watched


def _fd_identity(fd: int) -> tuple[int, int, int] | str:
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino, fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, "closed")


def _signal_state() -> tuple[Any, ...]:
    # _signal's functions, not signal's: those wrap each answer in an enum, 20 times slower.
    return (*_map(_signal.getsignal, SIGNALS),
            frozenset(_signal.pthread_sigmask(signal.SIG_BLOCK, ())))


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
        "whether the executor adopts orphans (PR_SET_CHILD_SUBREAPER)": is_subreaper(),
    }


class Fingerprint:
    """The state at the executor's start; `changes()` names what differs now.

    The common case, nothing changed, is a few comparisons done in C: the watched namespaces'
    version numbers (where CPython has them), else their ~600 values; then the process facts.
    Only a difference is looked at part by part, to name it.
    """

    def __init__(self) -> None:
        self.builtins = _Names("builtins", vars(builtins), list(vars(builtins)))
        self.modules = _runtime_names()
        self.module_objects = {watch.label: sys.modules[watch.label] for watch in self.modules}
        watched = (self.builtins, *self.modules)
        self._getters = _tuple(watch.get for watch in watched)
        self._namespaces = _tuple(watch.namespace for watch in watched)
        self._values = self._current_values()
        self._versions = DictVersions(self._namespaces)
        self._labels = _tuple(self.module_objects)
        self.fds = _tuple(_fd_identity(fd) for fd in (0, 1, 2))
        self.signals = _signal_state()
        self.timers = _armed_timers()
        self.process = _process_state()
        self._state = self._snapshot()

    def _current_values(self) -> tuple[Any, ...]:
        return (_len(self.builtins.namespace),
                *_map(_call, self._getters, self._namespaces))  # KeyError: a name deleted

    def _names_unchanged(self) -> bool:
        if self._versions.unchanged():
            return True
        try:
            same = self._current_values() == self._values
        except KeyError:
            return False
        if same:  # a change we do not watch (a submodule imported, a cache set): fast again
            self._versions.rebase()
        return same

    def _snapshot(self) -> tuple[Any, ...]:
        return (
            _tuple(_map(sys.modules.get, self._labels)), _tuple(_map(_fd_identity, (0, 1, 2))),
            _signal_state(), _armed_timers(), _process_state(),
        )

    def changes(self) -> list[str]:
        """What a job changed that the next job would inherit, in words; [] when nothing."""
        try:
            if self._names_unchanged() and self._snapshot() == self._state:
                return []
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

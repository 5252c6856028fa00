"""Process memory: a background RSS sampler, finding burla's coordinator, killing process trees."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import psutil

# Fast enough to catch a peak that lasts a fraction of a second, cheap enough not to disturb.
SAMPLE_INTERVAL_S = 0.05
# Re-list the watched processes this often: a cluster's workers come and go.
REFRESH_EVERY = 20
MB = 1024 * 1024


def burla_coordinators() -> list[psutil.Process]:
    """The embedded cluster's coordinator; other users' or tests' clusters may run beside it."""
    try:
        from burla.client import local_cluster

        info = local_cluster.running_info()
    except (ImportError, AttributeError):  # that module moved: fall back to the command line
        return _coordinators_by_cmdline()
    if not info:
        return []
    try:
        return [psutil.Process(info["coordinator_pid"])]
    except (psutil.Error, KeyError):
        return []


def burla_daemons() -> list[psutil.Process]:
    """The embedded cluster's coordinator, agent and the agent's descendants (executors). The
    coordinator and the agent are one process since the embedded cluster runs both in one."""
    try:
        from burla.client import local_cluster

        info = local_cluster.running_info() or {}
        pids = dict.fromkeys(info[k] for k in ("coordinator_pid", "agent_pid") if k in info)
        procs = [psutil.Process(pid) for pid in pids]
    except (ImportError, AttributeError, psutil.Error):
        return []
    return procs + list(descendants(procs[-1].pid)) if procs else []


def _coordinators_by_cmdline() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        joined = " ".join(args)
        if "coordinator" in args and "burla" in joined and "benchmarks" not in joined:
            found.append(proc)
    return found


def rss(procs: list[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakSampler:
    """Samples this process's RSS and the summed RSS of `watched()` until stopped."""

    def __init__(self, watched: Callable[[], list[psutil.Process]]) -> None:
        self._watched = watched
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.client_peak = 0
        self.cluster_peak = 0

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process(os.getpid())
        procs: list[psutil.Process] = []
        tick = 0
        while True:
            if tick % REFRESH_EVERY == 0:
                procs = self._watched()
            tick += 1
            self.client_peak = max(self.client_peak, rss([me]))
            self.cluster_peak = max(self.cluster_peak, rss(procs))
            if self._stop.wait(SAMPLE_INTERVAL_S):
                return


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)

"""How much CPU other processes took during a measurement: the suite shares this machine's cores."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _cpu_seconds(proc: psutil.Process, with_reaped_children: bool) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    total = t.user + t.system
    if with_reaped_children:  # subprocesses that ran and exited during the measurement
        total += t.children_user + t.children_system
    return total


class ForeignLoad:
    """Context manager: `cores` is the average number of cores used by processes not ours."""

    def __init__(self, ours: Callable[[], list[psutil.Process]]) -> None:
        self._ours = ours
        self.cores = 0.0

    def _sample(self) -> dict[int, float]:
        me = psutil.Process(os.getpid())
        sample = {me.pid: _cpu_seconds(me, with_reaped_children=True)}
        for proc in self._ours():
            sample.setdefault(proc.pid, _cpu_seconds(proc, with_reaped_children=False))
        return sample

    def __enter__(self) -> ForeignLoad:
        self._start = self._sample()
        self._busy = _busy_seconds()
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._began
        busy = _busy_seconds() - self._busy
        end = self._sample()
        # A process that appeared during the measurement counts from zero.
        ours = sum(max(0.0, cpu - self._start.get(pid, 0.0)) for pid, cpu in end.items())
        self.cores = max(0.0, busy - ours) / wall if wall > 0 else 0.0

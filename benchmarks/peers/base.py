"""The small interface every peer implements: start, map, stop (and what to sample for RSS)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable
from typing import Any

import psutil


class Peer:
    """One tool the suite compares; subclasses fill in start/map/stop."""

    name = "peer"
    # Top-level modules that must import for this peer to run; missing ones skip it with a note.
    requires: tuple[str, ...] = ()
    # False for tools limited to the standard pickle, which cannot ship closures (W8).
    ships_closures = True
    # Source of a script that starts this tool's cluster from nothing and runs one tiny map (W3).
    cold_start_script = ""
    # Where a task's prints go, when that is not simply the client's stdout (W5).
    output_note = ""

    def __init__(self) -> None:
        self.n_workers = 0

    @classmethod
    def missing(cls) -> list[str]:
        return [m for m in cls.requires if importlib.util.find_spec(m) is None]

    def start(self, n_workers: int) -> None:
        self.n_workers = n_workers

    def map(self, f: Callable[[Any], Any], inputs: Iterable[Any]) -> list[Any]:
        raise NotImplementedError

    def cpu_processes(self) -> list[psutil.Process]:
        """Processes whose CPU is this tool's own work (the rest is contention)."""
        return psutil.Process(os.getpid()).children(recursive=True)

    def between_runs(self) -> None:
        """Housekeeping between timed repeats (never timed)."""

    def stop(self) -> None:
        pass

    def cluster_processes(self) -> list[psutil.Process]:
        """Processes whose RSS counts as this tool's cluster: by default, all our descendants."""
        return psutil.Process(os.getpid()).children(recursive=True)

    def versions(self) -> str:
        return ""

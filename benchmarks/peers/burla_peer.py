"""burla on its embedded local cluster (started or reused by the first call)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any, cast

import psutil

from benchmarks import memory
from benchmarks.peers.base import Peer

COLD_START = '''
import time
t0 = time.perf_counter()
from burla import remote_parallel_map

def f(x):
    return x * 2

if __name__ == "__main__":
    result = remote_parallel_map(f, [1, 2, 3], spinner=False)
    print("RESULT", time.perf_counter() - t0, time.time(), result, flush=True)
'''
# Bounds `burla local down`; a stop that takes longer is a finding, reported as an error.
LOCAL_DOWN_TIMEOUT_S = 60


def local_down() -> None:
    """Stop the embedded cluster through the CLI, as a user would."""
    done = subprocess.run(
        [sys.executable, "-m", "burla", "local", "down"],
        capture_output=True,
        text=True,
        timeout=LOCAL_DOWN_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"burla local down failed ({done.returncode}): {done.stderr[-500:]}")


class BurlaPeer(Peer):
    name = "burla"
    requires = ("burla",)
    cold_start_script = COLD_START

    def start(self, n_workers: int) -> None:
        super().start(n_workers)
        import cloudpickle

        from benchmarks import tasks

        # Ship the task functions by value, like a user's own code: the embedded cluster may have
        # been started by a process that cannot import `benchmarks`.
        cloudpickle.register_pickle_by_value(tasks)
        self.map(tasks.noop, list(range(2 * n_workers)))  # start or reuse, and warm, the cluster

    def map(self, f: Callable[[Any], Any], inputs: Iterable[Any]) -> list[Any]:
        import burla

        # burla exports its API lazily, which type checkers see as `object`.
        rpm = cast(Callable[..., list[Any]], burla.remote_parallel_map)
        # Cap only when asked for fewer workers than the embedded cluster has (one per CPU).
        cap = self.n_workers if self.n_workers < (os.cpu_count() or 1) else None
        return rpm(f, inputs, spinner=False, max_parallelism=cap)

    def cluster_processes(self) -> list[psutil.Process]:
        return memory.burla_coordinators()

    def cpu_processes(self) -> list[psutil.Process]:
        return super().cpu_processes() + memory.burla_daemons()

    def versions(self) -> str:
        import burla

        return f"burla {getattr(burla, '__version__', '?')}"

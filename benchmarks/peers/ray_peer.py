"""Ray, two ways: tasks (`f.remote` per input, then `ray.get`) and ray.util.multiprocessing.Pool."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from benchmarks.peers.base import Peer

COLD_START = '''
import time
t0 = time.perf_counter()
import ray

def f(x):
    return x * 2

if __name__ == "__main__":
    ray.init(num_cpus=2, include_dashboard=False)
    remote_f = ray.remote(f)
    result = ray.get([remote_f.remote(x) for x in [1, 2, 3]])
    print("RESULT", time.perf_counter() - t0, time.time(), result, flush=True)
    ray.shutdown()
'''


def _init_ray(n_workers: int) -> None:
    # Print every worker line as is: dedup would make W5's line count meaningless.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    ray.init(num_cpus=n_workers, include_dashboard=False, log_to_driver=True)


class RayTasksPeer(Peer):
    name = "ray"
    requires = ("ray",)
    cold_start_script = COLD_START
    output_note = "worker prints reach the driver through Ray's log monitor"

    def __init__(self) -> None:
        super().__init__()
        # One RemoteFunction per function object: re-wrapping would re-export it on every call.
        self._remote: dict[int, tuple[Callable[..., Any], Any]] = {}

    def start(self, n_workers: int) -> None:
        super().start(n_workers)
        _init_ray(n_workers)

    def map(self, f: Callable[[Any], Any], inputs: Iterable[Any]) -> list[Any]:
        import ray

        entry = self._remote.get(id(f))
        if entry is None or entry[0] is not f:
            entry = (f, ray.remote(f))
            self._remote[id(f)] = entry
        remote_f = entry[1]
        return ray.get([remote_f.remote(x) for x in inputs])

    def stop(self) -> None:
        import ray

        self._remote.clear()
        ray.shutdown()

    def versions(self) -> str:
        import ray

        return f"ray {ray.__version__}"


class RayPoolPeer(Peer):
    name = "ray-pool"
    requires = ("ray",)
    output_note = "pool actors' prints reach the driver through Ray's log monitor"

    def __init__(self) -> None:
        super().__init__()
        self.pool: Any = None

    def start(self, n_workers: int) -> None:
        super().start(n_workers)
        from ray.util.multiprocessing import Pool

        _init_ray(n_workers)
        self.pool = Pool(processes=n_workers)

    def map(self, f: Callable[[Any], Any], inputs: Iterable[Any]) -> list[Any]:
        return self.pool.map(f, inputs if isinstance(inputs, list) else list(inputs))

    def stop(self) -> None:
        import ray

        if self.pool is not None:
            self.pool.terminate()
            self.pool = None
        ray.shutdown()

    def versions(self) -> str:
        import ray

        return f"ray {ray.__version__}"

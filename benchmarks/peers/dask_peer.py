"""Dask distributed: a LocalCluster of single-threaded worker processes, client.map + gather."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from benchmarks.peers.base import Peer

COLD_START = '''
import time
t0 = time.perf_counter()
from dask.distributed import Client, LocalCluster

def f(x):
    return x * 2

if __name__ == "__main__":
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    result = client.gather(client.map(f, [1, 2, 3], pure=False))
    print("RESULT", time.perf_counter() - t0, time.time(), result, flush=True)
    client.close()
    cluster.close()
'''


class DaskPeer(Peer):
    name = "dask"
    requires = ("dask", "distributed")
    cold_start_script = COLD_START
    output_note = "worker prints go to the worker processes' inherited stdout"

    def __init__(self) -> None:
        super().__init__()
        self.cluster: Any = None
        self.client: Any = None

    def start(self, n_workers: int) -> None:
        super().start(n_workers)
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        self.client = Client(self.cluster)

    def map(self, f: Callable[[Any], Any], inputs: Iterable[Any]) -> list[Any]:
        # pure=False: equal inputs across calls must run again, not hit Dask's result cache.
        futures = self.client.map(f, list(inputs), pure=False)
        try:
            return self.client.gather(futures)
        finally:
            del futures

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    def versions(self) -> str:
        import distributed

        return f"distributed {distributed.__version__}"

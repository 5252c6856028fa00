"""ipyparallel: a programmatic ipp.Cluster(n) and its load-balanced map, chunked or not."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from benchmarks.peers.base import Peer

COLD_START = '''
import time
t0 = time.perf_counter()
import ipyparallel as ipp

def f(x):
    return x * 2

if __name__ == "__main__":
    cluster = ipp.Cluster(n=2)
    client = cluster.start_and_connect_sync()
    result = client.load_balanced_view().map_sync(f, [1, 2, 3])
    print("RESULT", time.perf_counter() - t0, time.time(), list(result), flush=True)
    cluster.stop_cluster_sync()
'''
# Chunks per worker in the chunked variant: multiprocessing.Pool's default heuristic.
CHUNKS_PER_WORKER = 4


class IppPeer(Peer):
    name = "ipp"
    requires = ("ipyparallel",)
    cold_start_script = COLD_START
    output_note = "engine prints are kept on each AsyncResult, not streamed to the client"
    chunked = False

    def __init__(self) -> None:
        super().__init__()
        self.cluster: Any = None
        self.client: Any = None
        self.view: Any = None

    def start(self, n_workers: int) -> None:
        super().start(n_workers)
        import ipyparallel as ipp

        self.cluster = ipp.Cluster(n=n_workers)
        self.client = self.cluster.start_and_connect_sync()
        self.client.wait_for_engines(n_workers, timeout=60)
        self.view = self.client.load_balanced_view()

    def map(self, f: Callable[[Any], Any], inputs: Iterable[Any]) -> list[Any]:
        items = inputs if isinstance(inputs, list) else list(inputs)
        chunksize = 1
        if self.chunked:
            chunksize = max(1, math.ceil(len(items) / (CHUNKS_PER_WORKER * self.n_workers)))
        result = self.view.map(f, items, block=False, chunksize=chunksize)
        return list(result.get())

    def between_runs(self) -> None:
        # Drop the hub's and client's records of finished tasks, or memory grows run over run.
        self.client.purge_everything()

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop_cluster_sync()
        self.cluster = self.client = self.view = None

    def versions(self) -> str:
        import ipyparallel

        return f"ipyparallel {ipyparallel.__version__}"


class IppChunkedPeer(IppPeer):
    name = "ipp-chunked"
    cold_start_script = ""
    chunked = True

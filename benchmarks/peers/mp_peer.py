"""The local physical reference: multiprocessing.Pool.map with its default chunking."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from typing import Any

from benchmarks.peers.base import Peer

COLD_START = '''
import time
t0 = time.perf_counter()
import multiprocessing

def f(x):
    return x * 2

if __name__ == "__main__":
    with multiprocessing.Pool(2) as pool:
        result = pool.map(f, [1, 2, 3])
        print("RESULT", time.perf_counter() - t0, time.time(), result, flush=True)
'''


class MpPeer(Peer):
    name = "multiprocessing"
    ships_closures = False
    cold_start_script = COLD_START
    output_note = "workers write to the inherited stdout themselves, block-buffered"

    def __init__(self) -> None:
        super().__init__()
        self.pool: Any = None

    def start(self, n_workers: int) -> None:
        super().start(n_workers)
        self.pool = multiprocessing.get_context("fork").Pool(n_workers)

    def map(self, f: Callable[[Any], Any], inputs: Iterable[Any]) -> list[Any]:
        return self.pool.map(f, inputs if isinstance(inputs, list) else list(inputs))

    def stop(self) -> None:
        if self.pool is not None:
            # close+join, not terminate: workers exit normally and flush what they printed.
            self.pool.close()
            self.pool.join()
            self.pool = None

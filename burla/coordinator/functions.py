"""Pickled functions by hash, bounded in bytes: the coordinator's own cache, and its exact record
of what each agent holds (it alone tells an agent to forget one). Never unpickles."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Set
from typing import Any

# Pickled functions kept for later jobs; the least recently used beyond this go (a job that
# needs one again gets NeedFunction, one round trip and one upload). Functions of live jobs
# always stay. Only functions over the client's inline limit (256 KiB) gain from being kept,
# and a few of those are worth less than the memory: the coordinator aims at 300 MB in all.
FUNCTION_CACHE_BYTES = 128 * 1024 * 1024
# Pickled functions an agent keeps for later jobs, by the same rule; past it the coordinator
# sends Forget, and the function's next job ships it again.
AGENT_FUNCTION_BYTES = 128 * 1024 * 1024


def nbytes(data: Any) -> int:
    return len(data.buffer) if hasattr(data, "buffer") else len(data)


class SizedLru:
    """Hashes with their sizes, least recently used first, kept within a byte budget except
    for the hashes a caller says are live."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._total = 0

    def __contains__(self, function_hash: object) -> bool:
        return function_hash in self._sizes

    def __iter__(self) -> Iterator[str]:
        return iter(self._sizes)

    def add(self, function_hash: str, size: int) -> None:
        self._total += size - self._sizes.get(function_hash, 0)
        self._sizes[function_hash] = size

    def touch(self, function_hash: str, live: Callable[[], Set[str]]) -> list[str]:
        """Mark `function_hash` just used; while over the budget, drop and return the least
        recent hashes not in `live()` (asked only then: it walks every job)."""
        self._sizes.move_to_end(function_hash)
        if self._total <= self.budget:
            return []
        keep = live()
        dropped = []
        for old in list(self._sizes):
            if self._total <= self.budget:
                break
            if old not in keep and old != function_hash:
                self._total -= self._sizes.pop(old)
                dropped.append(old)
        return dropped


def agent_functions() -> SizedLru:
    """An empty record of the functions an agent holds."""
    return SizedLru(AGENT_FUNCTION_BYTES)


class FunctionCache:
    """The coordinator's pickled functions, bounded by FUNCTION_CACHE_BYTES."""

    def __init__(self) -> None:
        self._blobs: dict[str, Any] = {}
        self._order = SizedLru(FUNCTION_CACHE_BYTES)

    def __contains__(self, function_hash: object) -> bool:
        return function_hash in self._blobs

    def __getitem__(self, function_hash: str) -> Any:
        return self._blobs[function_hash]

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def put(self, function_hash: str, blob: Any) -> None:
        self._blobs[function_hash] = blob
        self._order.add(function_hash, nbytes(blob))

    def touch(self, function_hash: str, live: Callable[[], Set[str]]) -> None:
        """Mark `function_hash` just used, and drop the least recent not in `live()` if over."""
        for old in self._order.touch(function_hash, live):
            del self._blobs[old]

"""The coordinator's cache of pickled functions by hash, bounded in bytes. Never unpickles."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Set
from typing import Any

# Pickled functions kept for later jobs; the least recently used beyond this go (a job that
# needs one again gets NeedFunction, one round trip and one upload). Functions of live jobs
# always stay. Only functions over the client's inline limit (256 KiB) gain from being kept,
# and a few of those are worth less than the memory: the coordinator aims at 300 MB in all.
FUNCTION_CACHE_BYTES = 128 * 1024 * 1024


def nbytes(data: Any) -> int:
    return len(data.buffer) if hasattr(data, "buffer") else len(data)


class FunctionCache:
    def __init__(self) -> None:
        self._blobs: OrderedDict[str, Any] = OrderedDict()
        self._size = 0

    def __contains__(self, function_hash: object) -> bool:
        return function_hash in self._blobs

    def __getitem__(self, function_hash: str) -> Any:
        return self._blobs[function_hash]

    def __iter__(self) -> Iterator[str]:
        return iter(self._blobs)

    def put(self, function_hash: str, blob: Any) -> None:
        if function_hash not in self._blobs:
            self._size += nbytes(blob)
        self._blobs[function_hash] = blob

    def touch(self, function_hash: str, live: Set[str]) -> None:
        """Mark `function_hash` just used, and drop the least recent not in `live` if over."""
        self._blobs.move_to_end(function_hash)
        for old in list(self._blobs):
            if self._size <= FUNCTION_CACHE_BYTES:
                return
            if old not in live:
                self._size -= nbytes(self._blobs.pop(old))

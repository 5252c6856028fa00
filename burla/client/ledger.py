"""The client's record of one job: which results it holds, and the chunks still owed results.

Results are delivered exactly once per index because this ledger drops any index it already
holds (a resend after a reconnect, a replay on attach). Each uploaded chunk is kept until every
one of its inputs has a result, so a restarted coordinator can be given them again; memory stays
bounded because the coordinator's upload window bounds what is uploaded but unfinished.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Batch:
    """Results of consecutive inputs from `first`; `fresh` marks those not seen before
    (None: all of them), `errors` the indexes whose value is an exception."""

    first: int
    values: list[Any]
    errors: set[int]
    fresh: list[bool] | None

    def runs(self) -> list[tuple[int, list[Any]]]:
        """(first index, values) for each stretch of results new to the caller."""
        if self.fresh is None:
            return [(self.first, self.values)]
        runs: list[tuple[int, list[Any]]] = []
        for position, new in enumerate(self.fresh):
            if not new:
                continue
            index = self.first + position
            if runs and runs[-1][0] + len(runs[-1][1]) == index:
                runs[-1][1].append(self.values[position])
            else:
                runs.append((index, [self.values[position]]))
        return runs


@dataclass
class _Chunk:
    first: int
    count: int
    missing: int
    blob: bytes


class Ledger:
    def __init__(self) -> None:
        self._held = bytearray()  # one byte per input index: 1 once its result is here
        self.received = 0
        self._chunks: dict[int, _Chunk] = {}
        self._starts: list[int] = []  # sorted first indexes of kept chunks

    def uploaded(self, first: int, count: int, blob: bytes) -> None:
        self._chunks[first] = _Chunk(first, count, count, blob)
        bisect.insort(self._starts, first)
        self._grow(first + count)

    def unfinished(self) -> list[tuple[int, int, bytes]]:
        """Chunks uploaded but not complete, in index order, to upload again."""
        return [(c.first, c.count, c.blob) for c in (self._chunks[s] for s in self._starts)]

    def accept(self, first: int, count: int) -> list[bool] | None:
        """Record results for `first .. first+count-1`: None when every index is new (the usual
        case), else True for each index not held before."""
        end = first + count
        self._grow(end)
        if self._held.find(1, first, end) < 0:
            self._held[first:end] = b"\x01" * count
            self.received += count
            self._settle(first, count, None)
            return None
        fresh = [not self._held[i] for i in range(first, end)]
        for i in range(first, end):
            self._held[i] = 1
        self.received += sum(fresh)
        self._settle(first, count, fresh)
        return fresh

    def _settle(self, first: int, count: int, fresh: list[bool] | None) -> None:
        """Count new results (all of them when `fresh` is None) against their chunks."""
        position = bisect.bisect_right(self._starts, first) - 1
        index = first
        end = first + count
        while index < end and 0 <= position < len(self._starts):
            chunk = self._chunks[self._starts[position]]
            stop = min(end, chunk.first + chunk.count)
            if stop <= index:
                position += 1
                continue
            chunk.missing -= (stop - index if fresh is None
                              else sum(fresh[index - first : stop - first]))
            if chunk.missing <= 0:
                del self._chunks[chunk.first]
                del self._starts[position]
            else:
                position += 1
            index = stop

    def _grow(self, size: int) -> None:
        if size > len(self._held):
            self._held.extend(bytes(max(size - len(self._held), len(self._held))))

"""Functions the workloads ship to workers; module level so every peer can pickle them."""

from __future__ import annotations

import time
from collections.abc import Callable

# Every W5 line carries this prefix so the verifier can find it among a peer's own log noise.
LINE_PREFIX = "w5-line"
LINES_PER_TASK = 10
# Bytes of a W6 payload's head that carry its identity; the rest is zeros (cheap to build).
BLOB_HEAD = 8


def noop(x: int) -> int:
    """Do nothing; returning the input lets the caller check order for free."""
    return x


def nothing(x: int) -> None:
    """Do nothing and return nothing, so the client holds no per-result objects (W7)."""
    return None


def spin(seconds: float) -> float:
    """Burn CPU for `seconds` of wall time: a task that is work, not a sleep (W4)."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass
    return seconds


def chatty(x: int) -> int:
    """Print LINES_PER_TASK numbered lines (W5)."""
    for j in range(LINES_PER_TASK):
        print(f"{LINE_PREFIX} {x} {j}")
    return x


def silent(x: int) -> int:
    """Build the same lines as `chatty` without printing them: the W5 baseline."""
    lines = [f"{LINE_PREFIX} {x} {j}" for j in range(LINES_PER_TASK)]
    return x + len(lines) - LINES_PER_TASK


def make_blob(index: int, size: int) -> bytes:
    """A distinct payload of `size` bytes; distinct so no pickler can share one copy."""
    return index.to_bytes(BLOB_HEAD, "little") + bytes(size - BLOB_HEAD)


def echo_blob(blob: bytes) -> bytes:
    """Take one payload and return a new one of the same size and identity (W6)."""
    return blob[:BLOB_HEAD] + bytes(len(blob) - BLOB_HEAD)


def make_closure(payload: bytes) -> Callable[[int], int]:
    """A function closing over `payload`, so the payload travels with the function (W8)."""

    def closed(x: int) -> int:
        return x + len(payload)

    return closed


class PayloadHolder:
    """The same as `make_closure` for peers limited to the standard pickle (no closures)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __call__(self, x: int) -> int:
        return x + len(self.payload)

"""Turns the user's inputs, consumed lazily, into pickled chunks sized by guided self-scheduling.

A chunk holds consecutive inputs. While much work remains chunks are large (cheap to move);
near the end they shrink, so no slot is left with a long tail. The size rule is
`remaining / (GSS_FACTOR * slots)`, capped by bytes, and raised to at least MIN_CHUNK_SECONDS
of work once executors have reported how long calls take: a chunk costs a few messages on
every hop, and a chunk of fast calls is made big enough to pay for them. Remaining is known
exactly for sized inputs; for iterators it is the size of a bounded look-ahead buffer until the
iterator ends. Until its first results arrive, a repeat job of the same function sizes chunks by
the speed its calls had in this process before, but never bigger than an even split over the
slots: new inputs may be slower, and no slot may idle for a guess. This module never talks to
the network.
"""

from __future__ import annotations

import math
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from burla.config import MAX_INPUT_BYTES
from burla.errors import InputTooBig

# Chunks per slot the remaining work is cut into (2 is the classic guided self-scheduling).
GSS_FACTOR = 2
# Pickled size a chunk aims at: big enough to amortise per-message cost, small enough to spread.
TARGET_CHUNK_BYTES = 1024 * 1024
# Most inputs in one chunk, so results of a huge chunk of tiny inputs still stream back.
MAX_CHUNK_INPUTS = 32768
# Inputs read ahead of the upload from an iterator of unknown length.
LOOKAHEAD_INPUTS = 4 * MAX_CHUNK_INPUTS
# Least work (executor time) in one chunk once the calls' speed is known.
MIN_CHUNK_SECONDS = 0.01
# A cluster wider than this gets one small chunk first, and the rest waits for its timing (at
# most PROBE_SECONDS): otherwise a fast function's inputs leave as thousands of tiny chunks
# before the first result can say that they should be bigger.
PROBE_SLOTS = 64
PROBE_SECONDS = 0.05
FIRST_CHUNK_INPUTS = 64
# Functions whose speed is remembered (the most recently used).
REMEMBERED_FUNCTIONS = 1024


class CallSpeeds:
    """Nanoseconds per call of each function hash, as its last job in this process measured
    them, for the most recently used functions. Job threads share it, so it is locked."""

    def __init__(self, size: int = REMEMBERED_FUNCTIONS) -> None:
        self.size = size
        self._ns: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, function_hash: str) -> float | None:
        with self._lock:
            ns = self._ns.get(function_hash)
            if ns is not None:
                self._ns.move_to_end(function_hash)
            return ns

    def put(self, function_hash: str, ns_per_call: float) -> None:
        with self._lock:
            self._ns[function_hash] = ns_per_call
            self._ns.move_to_end(function_hash)
            while len(self._ns) > self.size:
                self._ns.popitem(last=False)

    def known(self) -> list[str]:
        """The remembered hashes, least recently used first."""
        with self._lock:
            return list(self._ns)


SPEEDS = CallSpeeds()


def dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # lambdas, local classes, closures: cloudpickle handles them
        from burla import pickling  # here, not at the top: a cold first call imports it later

        return pickling.dumps(value)


class Chunker:
    """Yields `(first_index, count, blob)` for the inputs, one chunk per `next_chunk` call."""

    def __init__(self, inputs: Iterable[Any], slots: int = 1) -> None:
        self.slots = max(1, slots)
        self._known_total = len(inputs) if hasattr(inputs, "__len__") else None  # type: ignore[arg-type]
        # Inputs read but not yet in a chunk are `_buffer[_pos:]`; chunks are cut by slicing.
        self._pos = 0
        if type(inputs) is list:  # read in place: no copy, never changed
            self._buffer: list[Any] = inputs
            self._iterator: Iterator[Any] = iter(())
            self._exhausted = True
        else:
            self._buffer = []
            self._iterator = iter(inputs)
            self._exhausted = False
        self.next_index = 0
        self._bytes_per_input = 0.0  # running estimate, 0 until the first chunk is pickled
        self._timed_inputs = 0  # inputs whose compute time executors reported
        self._timed_ns = 0
        self._probe_at: float | None = None  # when the first chunk was cut
        self._function_hash = ""
        self._remembered_ns: float | None = None  # per call, from an earlier job

    def remember_speed_of(self, function_hash: str) -> None:
        """Use the speed calls of `function_hash` had before, and keep this job's for next time."""
        self._function_hash = function_hash
        self._remembered_ns = SPEEDS.get(function_hash)

    @property
    def total(self) -> int | None:
        """The input count, once known."""
        if self._known_total is not None:
            return self._known_total
        return self.next_index + self._held() if self._exhausted else None

    def _held(self) -> int:
        return len(self._buffer) - self._pos

    def _fill(self) -> None:
        if not self._exhausted and self._held() < LOOKAHEAD_INPUTS:
            del self._buffer[: self._pos]
            self._pos = 0
            want = LOOKAHEAD_INPUTS - len(self._buffer)
            before = len(self._buffer)
            self._buffer.extend(islice(self._iterator, want))
            if len(self._buffer) - before < want:
                self._exhausted = True

    def observe(self, count: int, compute_ns: int) -> None:
        """Learn from a result batch: `count` calls took `compute_ns` on their executor."""
        if count > 0 and compute_ns >= 0:
            self._timed_inputs += count
            self._timed_ns += compute_ns
            if self._function_hash:
                SPEEDS.put(self._function_hash, self._timed_ns / self._timed_inputs)

    def holding(self, now: float) -> bool:
        """True while a wide cluster waits for the probe chunk's timing."""
        return (self.slots > PROBE_SLOTS and not self._timed_inputs
                and self._probe_at is not None and now - self._probe_at < PROBE_SECONDS)

    def _least_inputs(self, remaining: int) -> int:
        """Inputs that make MIN_CHUNK_SECONDS of work, from the timings so far (1: unknown)."""
        if self._timed_inputs:
            return _inputs_for_least_work(self._timed_ns / self._timed_inputs)
        if self._remembered_ns is not None:  # a guess: at most an even split of what is left
            return min(_inputs_for_least_work(self._remembered_ns), -(-remaining // self.slots))
        return 1

    def done(self) -> bool:
        self._fill()
        return self._exhausted and not self._held()

    def chunk_size(self) -> int:
        self._fill()
        total = self.total
        remaining = total - self.next_index if total is not None else self._held()
        size = max(1, -(-remaining // (GSS_FACTOR * self.slots)), self._least_inputs(remaining))
        if self._bytes_per_input:
            size = min(size, max(1, int(TARGET_CHUNK_BYTES / self._bytes_per_input)))
        else:
            size = min(size, FIRST_CHUNK_INPUTS)  # first chunk: learn how big inputs are
        return min(size, MAX_CHUNK_INPUTS, self._held())

    def next_chunk(self) -> tuple[int, int, bytes] | None:
        if self.done():
            return None
        count = self.chunk_size()
        if self._probe_at is None:
            self._probe_at = time.monotonic()
        items = self._buffer[self._pos : self._pos + count]
        first = self.next_index
        blob = dumps(items)
        if len(blob) > MAX_INPUT_BYTES:
            _check_each(items, first, len(blob))  # raises InputTooBig naming the index
            # Several big inputs together: leave them and send fewer at a time.
            self._bytes_per_input = len(blob) / count
            return self.next_chunk()
        self._pos += count
        self.next_index += count
        estimate = len(blob) / count
        self._bytes_per_input = (
            estimate if not self._bytes_per_input else 0.5 * (self._bytes_per_input + estimate)
        )
        return first, count, blob


def _inputs_for_least_work(ns_per_call: float) -> int:
    if ns_per_call <= 0:
        return MAX_CHUNK_INPUTS
    return min(MAX_CHUNK_INPUTS, math.ceil(MIN_CHUNK_SECONDS * 1e9 / ns_per_call))


def _check_each(items: list[Any], first: int, chunk_bytes: int) -> None:
    for offset, item in enumerate(items):
        size = chunk_bytes if len(items) == 1 else len(dumps(item))
        if size > MAX_INPUT_BYTES:
            raise InputTooBig(
                f"input at index {first + offset} pickles to {size / 2**20:.0f} MB, over the "
                f"{MAX_INPUT_BYTES // 2**20} MB limit. Pass a path or URL to the data "
                f"instead, and load it inside the function.",
                first + offset,
            )

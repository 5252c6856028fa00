"""Last words: output an executor captured but had not sent, read by its zygote once it died.

A SIGKILL or a segfault ends the executor without unwinding, so its link thread cannot send
what it holds. Two things outlive it. Its capture pipes (fds 1 and 2): the zygote makes them
before the fork and keeps their read ends, which it reads only once the executor is reaped,
never while it lives. And a journal, a small shared-memory file in which the executor's capture
records what the link thread took (from the pipes, or Python's writes) and has not yet handed
to ZeroMQ. The zygote reads both, attributes pipe bytes to inputs by the capture's separators,
and passes the entries on with the executor's `exited` message. Text Python code printed and
did not flush within the last few milliseconds (still in the capture's lists) is not here.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

# Journal layout: a header, then two halves. Appends go to the live half; `reset` writes the
# other one and then flips the header's state word (live half and its length in one native
# 32-bit store, written last), so a process killed in the middle leaves the previous state.
HALF_BYTES = 128 * 1024
_HEADER = struct.Struct("II")  # native: each word one store, never torn by a signal
JOURNAL_BYTES = _HEADER.size + 2 * HALF_BYTES
_LIVE_HALF = 1 << 31
# Most output passed on with an executor's exit, in UTF-8 and counting ENTRY_OVERHEAD_BYTES
# for each entry: the newest part is kept. With the crash report it must fit one packet of the
# zygote's socket (about 208 KiB).
MAX_LAST_WORDS_BYTES = 64 * 1024
ENTRY_OVERHEAD_BYTES = 16
# Most bytes read from a dead executor's pipe (a process that escaped it could write on).
MAX_LEFTOVER_BYTES = 1 << 20
# Record kinds: bytes read from a pipe, entries made from Python's writes, and the
# unterminated line Python wrote that the link thread holds back (empty: none any more).
PIPE, ENTRY, HELD = 0, 1, 2


def new_separator() -> bytes:
    """What the capture writes into its pipes to end an input's output (then the index, \\n)."""
    return b"\0burla-" + os.urandom(6).hex().encode() + b":"


@dataclass(frozen=True)
class Pipes:
    """fds 1 and 2 of an executor, made by its zygote before the fork, and its journal."""

    read_fds: tuple[int, int]
    write_fds: tuple[int, int]
    journal_fd: int
    separator: bytes

    @staticmethod
    def make() -> Pipes:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):  # the executor's reader polls; the zygote's read never waits
            os.set_blocking(fd, False)
        journal = os.memfd_create("burla-last-words", os.MFD_CLOEXEC)
        os.ftruncate(journal, JOURNAL_BYTES)
        return Pipes((out_r, err_r), (out_w, err_w), journal, new_separator())

    def fds(self) -> tuple[int, ...]:
        return (*self.read_fds, *self.write_fds, self.journal_fd)

    def close(self, fds: Iterable[int]) -> None:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def pipe_record(stream: int, data: bytes) -> bytes:
    if len(data) > HALF_BYTES - 64:  # keep the end, from a line start if there is one
        data = data[-(HALF_BYTES - 64):]
        data = data[data.find(b"\n") + 1:]
    return msgpack.packb([PIPE, stream, data])


def entries_record(entries: Sequence[Sequence[object]]) -> bytes:
    """A record of entries `[index, stream, text]` made from Python's writes."""
    return msgpack.packb([ENTRY, entries])


def held_record(index: int, stream: int, text: str) -> bytes:
    """The unterminated line of `stream` that is held back now ("": none)."""
    return msgpack.packb([HELD, index, stream, text])


class Journal:
    """The executor's side: records what its link thread holds unsent. Callers serialise."""

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, JOURNAL_BYTES)  # shared: the zygote reads the same pages
        os.close(fd)
        self._half = 0
        self._length = 0
        self._lost_lines = 0

    def append(self, record: bytes) -> None:
        if self._length + len(record) > HALF_BYTES:  # full: the newest output is kept
            start = _HEADER.size + self._half * HALF_BYTES
            lost = self._lost_lines + _lines(self._map[start:start + self._length])
            self._rewrite([record], lost)
            return
        start = _HEADER.size + self._half * HALF_BYTES + self._length
        self._map[start:start + len(record)] = record
        self._length += len(record)
        self._commit()

    def reset(self, records: list[bytes]) -> None:
        """From now on the journal holds only `records` (what is still held after a send)."""
        self._rewrite(records, 0)

    def _rewrite(self, records: list[bytes], lost: int) -> None:
        """Write the newest `records` that fit into the other half, then make it the live one."""
        kept, size = [], 0
        for position in range(len(records) - 1, -1, -1):
            if size + len(records[position]) > HALF_BYTES:
                lost += _lines(b"".join(records[:position + 1]))
                break
            kept.append(records[position])
            size += len(records[position])
        data = b"".join(reversed(kept))
        half = 1 - self._half
        start = _HEADER.size + half * HALF_BYTES
        self._map[start:start + len(data)] = data
        self._half, self._length, self._lost_lines = half, len(data), lost
        self._commit()

    def _commit(self) -> None:
        _HEADER.pack_into(self._map, 0, (_LIVE_HALF if self._half else 0) | self._length,
                          self._lost_lines)


def collect(pipes: Pipes) -> tuple[list[list[Any]], int]:
    """The zygote's side, once the executor is reaped: its unsent output as entries
    `[index, stream, text]` (index -1: the input it died in), and how many lines of it were
    lost. Closes the zygote's fds of `pipes`. What a dead process left is not trusted: a
    journal that does not parse yields what parsed before the damage."""
    try:
        records, lost = _read_journal(pipes.journal_fd)
        leftovers = [_drain(fd) for fd in pipes.read_fds]
    finally:
        pipes.close((*pipes.read_fds, pipes.journal_fd))
    entries: list[list[Any]] = []
    pending = {1: b"", 2: b""}
    held: dict[int, list[Any]] = {}
    for record in records:
        kind = record[0]
        if kind == PIPE:
            stream, data = record[1], record[2]
            pending[stream] = _split(pending[stream] + data, pipes.separator, stream, entries)
        elif kind == ENTRY:
            entries.extend(list(entry) for entry in record[1] if _valid_entry(entry))
        else:  # HELD
            if record[3]:
                held[record[2]] = record[1:]
            else:
                held.pop(record[2], None)
    for stream, leftover in zip((1, 2), leftovers, strict=True):
        rest = _split(pending[stream] + leftover, pipes.separator, stream, entries)
        if rest:
            entries.append([-1, stream, rest.decode("utf-8", "replace")])
    entries.extend(held.values())
    return _last(entries, lost)


def _read_journal(fd: int) -> tuple[list[list[Any]], int]:
    header = os.pread(fd, _HEADER.size, 0)
    if len(header) < _HEADER.size:
        return [], 0
    state, lost = _HEADER.unpack(header)
    half, length = int(bool(state & _LIVE_HALF)), min(state & ~_LIVE_HALF, HALF_BYTES)
    if not length:  # the usual end: everything was sent
        return [], int(lost)
    return _records(os.pread(fd, length, _HEADER.size + half * HALF_BYTES)), int(lost)


def _records(data: bytes) -> list[list[Any]]:
    """The well-formed records in `data`, up to any damage."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    records: list[list[Any]] = []
    try:
        for record in unpacker:
            if _valid(record):
                records.append(record)
    except Exception:  # msgpack's errors for damaged data have no common base
        pass
    return records


def _lines(data: bytes) -> int:
    """Lines of output the records in `data` hold (a partial line counts as one)."""
    return sum(
        sum(_text_lines(entry[2]) for entry in record[1] if _valid_entry(entry))
        if record[0] == ENTRY else _text_lines(record[-1])
        for record in _records(data)
    )


def _text_lines(text: str | bytes) -> int:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text.count("\n") + (0 if not text or text.endswith("\n") else 1)


def _valid(record: Any) -> bool:
    if not isinstance(record, list) or not record:
        return False
    if record[0] == PIPE:
        return len(record) == 3 and record[1] in (1, 2) and isinstance(record[2], bytes)
    if record[0] == ENTRY:
        return len(record) == 2 and isinstance(record[1], list)
    return record[0] == HELD and len(record) == 4 and _valid_entry(record[1:])


def _valid_entry(entry: Any) -> bool:
    return (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], int)
            and entry[1] in (1, 2) and isinstance(entry[2], str))


def _drain(fd: int) -> bytes:
    """What is left unread in a dead executor's pipe (its read end does not block)."""
    chunks, size = [], 0
    while size < MAX_LEFTOVER_BYTES:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not data:
            break
        chunks.append(data)
        size += len(data)
    return b"".join(chunks)


def _split(data: bytes, separator: bytes, stream: int, out: list[list[Any]]) -> bytes:
    """Append each input's output that a separator ends to `out`; return the rest."""
    while True:
        cut = data.find(separator)
        if cut < 0:
            return data
        end = data.find(b"\n", cut)
        if end < 0:  # a separator cut short: wait for its end
            return data
        try:
            index = int(data[cut + len(separator):end])
        except ValueError:
            index = -1
        if cut:
            out.append([index, stream, data[:cut].decode("utf-8", "replace")])
        data = data[end + 1:]


def _last(entries: list[list[Any]], lost: int) -> tuple[list[list[Any]], int]:
    """The newest entries within MAX_LAST_WORDS_BYTES of UTF-8 (with ENTRY_OVERHEAD_BYTES for
    each: they travel in one packet), consecutive ones of an input's stream merged; the lines
    of the others count as lost."""
    merged: list[list[Any]] = []
    for index, stream, text in entries:
        if merged and merged[-1][0] == index and merged[-1][1] == stream:
            merged[-1][2] += text
        elif text:
            merged.append([index, stream, text])
    kept: list[list[Any]] = []
    size = 0
    for position in range(len(merged) - 1, -1, -1):
        index, stream, text = merged[position]
        data = text.encode("utf-8", "replace")
        if size + ENTRY_OVERHEAD_BYTES + len(data) > MAX_LAST_WORDS_BYTES:
            lost += sum(_text_lines(e[2]) for e in merged[:position])
            room = MAX_LAST_WORDS_BYTES - size - ENTRY_OVERHEAD_BYTES
            if room > 0:  # its end is kept; the lines its cut head held are lost
                kept.append([index, stream, data[-room:].decode("utf-8", "ignore")])
                lost += data[:-room].count(b"\n")
            else:
                lost += _text_lines(text)
            break
        kept.append([index, stream, text])
        size += ENTRY_OVERHEAD_BYTES + len(data)
    kept.reverse()
    return kept, lost

"""Capture of an executor's stdout and stderr, tagged by input index.

Python-level writes (print, sys.stdout.write) are kept in memory as (index, stream, text) and
turned into entries by the executor's link thread: no syscall per print, line or input. fds 1
and 2 are pipes as well, so output of C extensions and subprocesses is captured too; once such
a writer shows up (`exact`), Python's writes go through the pipes as well, in order with it,
and the runner marks the end of every input that printed with a separator written into the
pipes. Either way the reader yields `[index, stream, text]` entries, one per block of complete
lines; a line left unterminated for a while (a progress bar, `print(..., end="")`) goes as it
stands when asked (`take_partial`). With a journal (`lastwords`), every entry the link thread
takes is recorded there until it is sent, so output survives a SIGKILL or a segfault; so does
Python's text once flushed (`print(..., flush=True)`, `sys.stdout.flush()`). This module never
sends anything and never runs user code.
"""

from __future__ import annotations

import fcntl
import io
import os
import struct
import sys
import termios
import threading
import time

from burla.exec import lastwords
from burla.exec.lastwords import Journal, Pipes, entries_record, held_record, pipe_record

# Largest single log entry (a block of lines); a longer line is cut into pieces of this size.
MAX_ENTRY_BYTES = 16 * 1024
_FIONREAD_BUF = b"\0\0\0\0"


def _pending_bytes(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, _FIONREAD_BUF))[0])


class _StreamParser:
    """Splits one pipe's bytes into lines, attributing them to input indexes via separators."""

    def __init__(self, stream: int, separator: bytes) -> None:
        self.stream = stream
        self.separator = separator
        self.buffer = b""
        self.buffer_index = -1  # input that wrote the first byte still in `buffer`
        self.open_since: float | None = None  # when the unterminated line in `buffer` began

    def feed(self, data: bytes, running_index: int, out: list[list[object]]) -> bool:
        """Parse `data`; True when it ends with output no separator has claimed yet."""
        had_output = False
        while data:
            cut = data.find(self.separator)
            if cut < 0:
                had_output = True
                self._append(data, running_index, out)
                return had_output
            end = data.find(b"\n", cut)
            if end < 0:  # a separator never spans reads (one atomic pipe write), but be safe
                end = len(data)
            index = int(data[cut + len(self.separator) : end] or b"-1")
            if cut:
                self._append(data[:cut], index, out)
            self._flush_partial(out)
            data = data[end + 1 :]
        return had_output

    def _append(self, data: bytes, index: int, out: list[list[object]]) -> None:
        """Buffer `data`; every complete line held leaves as part of one entry per block (an
        entry per line cost more than the printing), a partial line waits for its end."""
        if not self.buffer:
            self.buffer_index = index
        self.buffer += data
        while len(self.buffer) >= MAX_ENTRY_BYTES:
            newline = self.buffer.rfind(b"\n", 0, MAX_ENTRY_BYTES)
            self._emit(newline + 1 if newline >= 0 else MAX_ENTRY_BYTES, out)
            self.buffer_index = index
        newline = self.buffer.rfind(b"\n")
        if newline >= 0:
            self._emit(newline + 1, out)
            self.buffer_index = index
        if not self.buffer:
            self.open_since = None
        elif newline >= 0 or self.open_since is None:
            self.open_since = time.monotonic()

    def take_partial(self, opened_before: float, out: list[list[object]]) -> None:
        """Emit the unterminated line held if it began before `opened_before`, less any UTF-8
        character it ends inside of. Its end, when it comes, is a line like any other."""
        if self.buffer and self.open_since is not None and self.open_since < opened_before:
            cut = _utf8_whole(self.buffer)
            if cut:
                self._emit(cut, out)
                self.open_since = time.monotonic()  # the rest of the line waits its turn

    def _emit(self, cut: int, out: list[list[object]]) -> None:
        block, self.buffer = self.buffer[:cut], self.buffer[cut:]
        out.append([self.buffer_index, self.stream, block.decode("utf-8", "replace")])

    def _flush_partial(self, out: list[list[object]]) -> None:
        self.open_since = None
        if self.buffer:
            out.append([self.buffer_index, self.stream, self.buffer.decode("utf-8", "replace")])
            self.buffer = b""


class _Stream(io.TextIOWrapper):
    """sys.stdout/sys.stderr. Until fd-level writers appear, `write` is an instance attribute:
    the C `append` of a list of texts (`Capture.texts`), so a print costs no Python call. Once
    they appear it is this method, through the pipe, in order with them."""

    capture: Capture

    def write(self, text: str) -> int:
        self.capture.python_wrote = True
        return super().write(text)

    def flush(self) -> None:
        """Hand what Python wrote to the link thread now (and record it in the journal), or,
        once writes go through the pipes, into them: flushed text outlives a crash."""
        if not self.capture.exact:
            self.capture.flush_texts()
        super().flush()


class Capture:
    """Owns fds 1 and 2 of the executor. The runner calls `end` after each input that printed.

    Python's writes wait in `texts` (one list per stream) until `end` turns them into entries
    tagged with the input's index, or until the link thread takes the complete lines of a call
    still running. An input whose output went through the pipes is closed by a separator, so
    its lines carry its index exactly. Knowing whether it did costs nothing for output the
    reader already saw; output still in the pipe needs a syscall, so that check runs only once
    fd-level writers have shown up (`exact`), keeping silent inputs free.
    """

    def __init__(self, pipes: Pipes | None = None) -> None:
        """`pipes`: fds 1 and 2 and the journal, made by the zygote (which reads them after a
        crash); None makes plain pipes, whose unsent output dies with the process."""
        self.separator = pipes.separator if pipes else lastwords.new_separator()
        self.journal = Journal(pipes.journal_fd) if pipes else None
        self._lock = threading.Lock()  # the pipes' parsers, and `texts` against `finished`
        self.dirty = False  # the reader saw output no separator has claimed yet
        self.python_wrote = False  # Python wrote into the pipes (only once `exact`)
        self.exact = False  # fd-level writers (C code, subprocesses) were seen
        self.running_index = -1
        # Python's writes not yet made entries: appended by any thread, stream 1 then 2.
        self.texts: tuple[list[str], list[str]] = ([], [])
        self.finished: list[list[object]] = []  # entries of ended inputs, for the link thread
        self._journaled = 0  # how many of `finished` are in the journal (flushed ones)
        # Per stream, the input whose unterminated line waits in `texts`, and since when.
        self._open: list[tuple[int, float] | None] = [None, None]
        # Per stream, the unterminated line take_texts put back in `texts` (journaled).
        self._held: list[tuple[int, str] | None] = [None, None]
        self.read_fds: list[int] = []
        self._parsers: dict[int, _StreamParser] = {}
        for stream in (1, 2):
            if pipes:
                read_fd, write_fd = pipes.read_fds[stream - 1], pipes.write_fds[stream - 1]
            else:
                read_fd, write_fd = os.pipe()
            os.dup2(write_fd, stream)
            os.close(write_fd)
            os.set_blocking(read_fd, False)
            self.read_fds.append(read_fd)
            self._parsers[read_fd] = _StreamParser(stream, self.separator)
        self._wrappers = []
        for fd, texts in zip((1, 2), self.texts, strict=True):
            # Used once fd-level writers appeared. stdout is block-buffered, as Python's is on
            # a pipe (a write per line cost more than the printing); stderr stays line-buffered.
            # The link thread flushes stdout every 50 ms while a call runs.
            wrapper = _Stream(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                              errors="replace", line_buffering=fd == 2)
            wrapper.capture = self
            wrapper.write = texts.append  # type: ignore[method-assign,assignment]
            self._wrappers.append(wrapper)
        sys.stdout, sys.stderr = self._wrappers

    def flush_python(self) -> None:
        """Push what Python code printed into the pipes (the link thread calls this while a
        call runs, so its output streams without a write per line)."""
        if self.python_wrote:
            sys.stdout.flush()
            sys.stderr.flush()

    def begin(self, index: int) -> None:
        self.running_index = index

    def end(self, index: int) -> None:
        """Close input `index`'s output, if it printed anything (the runner calls this)."""
        if self.texts[0] or self.texts[1]:
            with self._lock:
                self._finish_texts(index)
        if not self.exact:  # (`dirty` implies `exact`: the reader switched to the pipes)
            return  # the common case: no output through the pipes, no syscall
        if self.python_wrote:
            self.python_wrote = False
            sys.stdout.flush()
            sys.stderr.flush()
        with self._lock:
            printed = (
                self.dirty
                or _pending_bytes(self.read_fds[0]) > 0
                or _pending_bytes(self.read_fds[1]) > 0
            )
            self.dirty = False
        if printed:
            # Written outside the lock: a full pipe blocks this write until the reader drains
            # it, and the reader needs the lock to do so. Output the reader takes in between
            # still ends before this separator, so it is still claimed by `index`.
            mark = self.separator + str(index).encode() + b"\n"
            os.write(1, mark)
            os.write(2, mark)

    def _finish_texts(self, index: int) -> None:
        """Make all of Python's writes entries of `index` in `finished` (with `_lock` held).
        The link thread records them in the journal as it takes them (within milliseconds),
        not here: that would cost every input that prints."""
        for stream, texts in enumerate(self.texts, 1):
            if texts:
                _add_entries(index, stream, _take_text(texts, len(texts)), self.finished)
            self._open[stream - 1] = None

    def flush_texts(self) -> None:
        """Python's writes so far go to the link thread, unterminated lines too, and into the
        journal at once (a flush: they outlive a crash from now on)."""
        if self.texts[0] or self.texts[1]:
            with self._lock:
                self._finish_texts(self.running_index)
                if self.journal is not None:
                    self.journal.append(entries_record(self.finished[self._journaled:]))
                    self._journaled = len(self.finished)
                    self._hold(0, None)  # the held lines' text is in those entries
                    self._hold(1, None)

    def _hold(self, position: int, held: tuple[int, str] | None) -> None:
        """Record the unterminated line take_texts holds back for a stream (None: none)."""
        if self.journal is not None and held != self._held[position]:
            index, text = held or (-1, "")
            self.journal.append(held_record(index, position + 1, text))
        self._held[position] = held

    def shipped(self) -> None:
        """The link thread handed every entry it took to ZeroMQ: the journal keeps only what
        is still held here (unterminated lines, entries of ended inputs not yet taken)."""
        if self.journal is None:
            return
        with self._lock:
            records = [pipe_record(p.stream, p.buffer) for p in self._parsers.values()
                       if p.buffer]
            if self.finished:
                records.append(entries_record(self.finished))
            self._journaled = len(self.finished)
            records += [held_record(held[0], position + 1, held[1])
                        for position, held in enumerate(self._held) if held]
            self.journal.reset(records)

    def take_texts(self, out: list[list[object]], opened_before: float = -1.0) -> None:
        """Append entries of ended inputs, and the complete lines of the running one, to `out`
        (the link thread calls this). The line it is writing waits for its end, unless it
        began before `opened_before` (a monotonic time): then it goes as it stands."""
        if not (self.finished or self.texts[0] or self.texts[1]):
            return
        with self._lock:
            taken = self.finished[self._journaled:]  # not in the journal yet
            out.extend(self.finished)
            self.finished.clear()
            self._journaled = 0
            helds: list[tuple[int, str] | None] = [None, None]
            for position, texts in enumerate(self.texts):
                count = len(texts)
                if not count:
                    continue
                # Read after `count`: those writes are the running input's, because `end` of
                # that input needs the lock we hold to take them.
                index = self.running_index
                text = _take_text(texts, count)  # a line held back before comes first
                cut = text.rfind("\n") + 1
                if cut == len(text):
                    self._open[position] = None
                else:
                    opened = self._open[position]
                    if cut or opened is None or opened[0] != index:  # a new line began
                        opened = self._open[position] = (index, time.monotonic())
                    if opened[1] < opened_before:  # it waited long enough: it goes, and
                        self._open[position] = (index, time.monotonic())  # its rest waits
                    elif len(text) - cut < MAX_ENTRY_BYTES:
                        texts.insert(0, text[cut:])  # the line being written waits for its end
                        helds[position] = (index, text[cut:])
                        text = text[:cut]
                start = len(out)
                _add_entries(index, position + 1, text, out)
                taken += out[start:]
            if self.journal is not None:
                if taken:
                    self.journal.append(entries_record(taken))
                self._hold(0, helds[0])  # after the entries that hold any line held before
                self._hold(1, helds[1])

    def take_partial(self, opened_before: float, out: list[list[object]]) -> None:
        """Append everything captured, and the lines the running call began before
        `opened_before` and has not ended (the link thread calls this while a call runs, so
        `print(..., end="")`, `\\r` progress lines and tqdm bars show, as on a terminal)."""
        self.take_texts(out, opened_before)
        if any(parser.buffer for parser in self._parsers.values()):
            with self._lock:
                for parser in self._parsers.values():
                    parser.take_partial(opened_before, out)

    def partial_due(self, opened_before: float) -> bool:
        """Whether a stream holds a line unterminated since before `opened_before` (cheap: the
        link thread asks at every wake-up)."""
        return any(
            texts and opened is not None and opened[1] < opened_before
            for texts, opened in zip(self.texts, self._open, strict=True)
        ) or any(
            parser.buffer and parser.open_since is not None and parser.open_since < opened_before
            for parser in self._parsers.values()
        )

    def read(self, fd: int, out: list[list[object]]) -> None:
        """Read what `fd` holds now and append its entries to `out` (the link thread calls this)."""
        with self._lock:
            chunks = []
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not data:
                    break
                chunks.append(data)
            if not chunks:
                return
            data = b"".join(chunks)
            parser = self._parsers[fd]
            if self.journal is not None:  # before parsing: a crash may come at any moment
                self.journal.append(pipe_record(parser.stream, data))
            if parser.feed(data, self.running_index, out):
                self.dirty = True
                if not self.python_wrote:  # nobody in Python wrote it: C code or a subprocess
                    self.use_pipes()

    def read_all(self, out: list[list[object]]) -> None:
        """Everything captured so far (before a result leaves, and at exit)."""
        self.take_texts(out)
        for fd in self.read_fds:
            self.read(fd, out)

    def use_pipes(self) -> None:
        """From now on Python writes through the pipes, in order with the fd-level writers."""
        if not self.exact:
            self.exact = True
            for wrapper in self._wrappers:
                del wrapper.write  # back to _Stream.write


def _take_text(texts: list[str], count: int) -> str:
    """Join and remove the first `count` writes (writers only append: none is lost)."""
    taken = texts[:count]
    del texts[:count]
    try:
        return "".join(taken)
    except TypeError:  # print() gives str; a direct write of something else is shown as str
        return "".join(t if isinstance(t, str) else str(t) for t in taken)


def _utf8_whole(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:  # ASCII: what precedes it is whole
            return len(data)
        if byte >= 0xC0:  # a lead byte: whole if its sequence is complete
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= needed else len(data) - back
    return len(data)  # not UTF-8: sent as it is, decoded with replacement


def _add_entries(index: int, stream: int, text: str, out: list[list[object]]) -> None:
    """Append `text` as entries of at most MAX_ENTRY_BYTES, cut at line ends where possible."""
    while len(text) > MAX_ENTRY_BYTES:
        cut = text.rfind("\n", 0, MAX_ENTRY_BYTES) + 1 or MAX_ENTRY_BYTES
        out.append([index, stream, text[:cut]])
        text = text[cut:]
    if text:
        out.append([index, stream, text])

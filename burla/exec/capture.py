"""File-descriptor-level capture of an executor's stdout and stderr, tagged by input index.

fds 1 and 2 become pipes, so output of C extensions and subprocesses is captured too. The
runner marks the end of every input that printed with a separator written into the pipes; the
reader (the executor's link thread) turns the byte stream into `[index, stream, text]` entries,
one per block of complete lines.
This module never sends anything and never runs user code.
"""

from __future__ import annotations

import fcntl
import io
import os
import struct
import sys
import termios
import threading

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

    def _emit(self, cut: int, out: list[list[object]]) -> None:
        block, self.buffer = self.buffer[:cut], self.buffer[cut:]
        out.append([self.buffer_index, self.stream, block.decode("utf-8", "replace")])

    def _flush_partial(self, out: list[list[object]]) -> None:
        if self.buffer:
            out.append([self.buffer_index, self.stream, self.buffer.decode("utf-8", "replace")])
            self.buffer = b""


class _Stream(io.TextIOWrapper):
    """sys.stdout/sys.stderr: notes that Python code wrote, so a silent input costs nothing."""

    capture: Capture

    def write(self, text: str) -> int:
        self.capture.python_wrote = True
        return super().write(text)


class Capture:
    """Owns fds 1 and 2 of the executor. The runner calls `begin`/`end` around each input.

    An input that printed is closed by a separator, so its lines carry its index exactly.
    Knowing whether it printed costs nothing for Python-level output (a flag) and for output the
    reader already saw; fd-level output still in the pipe needs a syscall, so that check runs
    only once fd-level writers have shown up (`exact`), keeping silent inputs free.
    """

    def __init__(self) -> None:
        self.separator = b"\0burla-" + os.urandom(6).hex().encode() + b":"
        self._lock = threading.Lock()
        self.dirty = False  # the reader saw output no separator has claimed yet
        self.python_wrote = False
        self.exact = False  # fd-level writers (C code, subprocesses) were seen
        self.running_index = -1
        self.read_fds: list[int] = []
        self._parsers: dict[int, _StreamParser] = {}
        for stream in (1, 2):
            read_fd, write_fd = os.pipe()
            os.dup2(write_fd, stream)
            os.close(write_fd)
            os.set_blocking(read_fd, False)
            self.read_fds.append(read_fd)
            self._parsers[read_fd] = _StreamParser(stream, self.separator)
        wrappers = []
        for fd in (1, 2):
            # stdout is block-buffered, as Python's is on a pipe (a write per line cost more
            # than the printing); stderr stays line-buffered so a call's last words survive
            # its crash. The link thread flushes stdout every 50 ms while a call runs.
            wrapper = _Stream(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                              errors="replace", line_buffering=fd == 2)
            wrapper.capture = self
            wrappers.append(wrapper)
        sys.stdout, sys.stderr = wrappers

    def flush_python(self) -> None:
        """Push what Python code printed into the pipes (the link thread calls this while a
        call runs, so its output streams without a write per line)."""
        if self.python_wrote:
            sys.stdout.flush()
            sys.stderr.flush()

    def begin(self, index: int) -> None:
        self.running_index = index

    def end(self, index: int) -> None:
        """Mark the end of input `index`'s output, if it printed anything."""
        if not (self.python_wrote or self.dirty or self.exact):
            return  # the common case: a silent input, no syscall
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
            if self._parsers[fd].feed(b"".join(chunks), self.running_index, out):
                self.dirty = True
                if not self.python_wrote:  # nobody in Python wrote it: C code or a subprocess
                    self.exact = True

    def read_all(self, out: list[list[object]]) -> None:
        for fd in self.read_fds:
            self.read(fd, out)

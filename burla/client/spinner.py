"""What the caller sees while a job runs: remote output as it comes, and a status line.

The status line is drawn on stderr only when stderr is an interactive terminal (never in pipes
or notebooks). While it shows, sys.stdout and sys.stderr go through the display too, so the
caller's own prints and the remote output never land on the status line. It is drawn only
where a line starts, so it never wipes text that has no newline yet: the caller's
`print("before:", end=" ")`, or a remote progress bar. This module never talks to the cluster.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import unicodedata
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, TextIO

SPINNER_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
DONE_MARK = "✓"
# 8 frames a second: the spinner looks alive, and bursts of output cost at most 8 redraws.
FRAME_SECONDS = 0.125
ERASE_LINE = "\r\x1b[2K"  # back to the line's start, and clear it: only ever our own line
DEFAULT_WIDTH = 80
# Where the cursor stands on the terminal, as far as the display knows.
_UNKNOWN, _LINE_START, _MID_LINE = "unknown", "line start", "mid-line"


class Display:
    """Remote output and the status line of one job.

    `enabled` is the caller's `spinner=`; the line shows only if stderr is a terminal.
    `terminal`, `clock`, `width` and `animate` are for tests: a fake terminal, a fake clock,
    a fixed width, and no drawing thread (the test calls `tick`).
    """

    _drawing: ClassVar[Display | None] = None  # one status line at a time (nested jobs)
    _drawing_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, enabled: bool, function_name: str, *, terminal: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, width: int | None = None,
                 animate: bool = True) -> None:
        self.terminal = sys.stderr if terminal is None else terminal
        self.enabled = enabled and _is_terminal(self.terminal)
        self.function_name = function_name
        self.done = 0
        self.total: int | None = None
        self.running = 0  # slots the job holds
        self.status = ""  # what the cluster's growth says, e.g. "booting 3× n2-standard-8"
        self._clock = clock
        self.started = clock()
        self._width = width
        self._animate = animate
        # Reentrant: a signal handler that prints may interrupt a write of this thread.
        self._lock = threading.RLock()
        self._active = False  # drawing now: between __enter__ and __exit__
        self._cursor = _UNKNOWN
        self._drawn = ""  # the frame on screen, "" when none is
        self._shown = False  # a frame was drawn: a job done sooner leaves the terminal alone
        self._ticks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._streams: dict[int, TextIO] = {}  # 1, 2: the caller's own stdout and stderr
        self._on_terminal: dict[int, bool] = {}
        self._proxies: dict[int, _Through] = {}

    def __enter__(self) -> Display:
        if not self.enabled:
            return self
        with Display._drawing_lock:
            if Display._drawing is not None:  # a job inside a job: the outer one draws
                self.enabled = False
                return self
            Display._drawing = self
        with self._lock:
            for stream, original in ((1, sys.stdout), (2, sys.stderr)):
                original.flush()  # what the caller printed before the job shows first
                self._streams[stream] = original
                self._on_terminal[stream] = original is self.terminal or _isatty(original)
                self._proxies[stream] = _Through(self, stream, original)
            sys.stdout, sys.stderr = self._proxies[1], self._proxies[2]
            self._active = True
        if self._animate:
            self._thread = threading.Thread(target=self._animate_loop, name="burla-spinner",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._active:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._erase()
            self._active = False
            if sys.stdout is self._proxies[1]:
                sys.stdout = self._streams[1]
            if sys.stderr is self._proxies[2]:
                sys.stderr = self._streams[2]
            for stream in self._streams.values():
                stream.flush()
        with Display._drawing_lock:
            Display._drawing = None

    def update(self, *, done: int | None = None, total: int | None = None,
               running: int | None = None, status: str | None = None) -> None:
        """New counts from the job, and growth's words (`status`). Once a frame has shown,
        the one that shows the job complete is drawn at once: the last frame is true."""
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total
        if running is not None:
            self.running = running
        if status is not None:
            self.status = status
        if self._shown and self.total is not None and self.done >= self.total:
            with self._lock:
                self._draw()

    def tick(self) -> None:
        """Draw the next frame, where a line starts (the drawing thread calls this)."""
        with self._lock:
            self._draw()
            self._ticks += 1

    def frame(self) -> str:
        """The status line's text for the counts now."""
        elapsed = max(self._clock() - self.started, 0.0)
        complete = self.total is not None and self.done >= self.total
        mark = DONE_MARK if complete else SPINNER_FRAMES[self._ticks % len(SPINNER_FRAMES)]
        total = "?" if self.total is None else str(self.total)
        parts = [f"{mark} {self.function_name}: {self.done}/{total} done"]
        if self.done and elapsed > 0:
            parts.append(rate_text(self.done, elapsed))
        # The job's slots, less what no slot can still be running: never more calls than remain.
        running = self.running if self.total is None else min(self.running,
                                                               self.total - self.done)
        parts.append(f"{max(running, 0)} running")
        parts.append(duration_text(elapsed))
        if self.status and not complete:  # last: a narrow terminal cuts it, not the counts
            parts.append(self.status)
        return " · ".join(parts)

    def write_logs(self, entries: list[list[Any]]) -> None:
        """Write remote output to this process's stdout/stderr as it comes, unterminated lines
        included (called by the job thread)."""
        runs = _runs(entries)
        with self._lock:
            if self._active:
                for stream, text in runs:
                    self._write(stream, text)
                for original in self._streams.values():
                    original.flush()
                return
        out, err = sys.stdout, sys.stderr  # no status line: straight through
        for stream, text in runs:
            (err if stream == 2 else out).write(text)
        out.flush()
        err.flush()

    # --- with self._lock held --------------------------------------------------------------

    def _write(self, stream: int, text: str) -> None:
        if not text:
            return
        if self._on_terminal[stream]:
            self._erase()
            self._cursor = _LINE_START if text.endswith("\n") else _MID_LINE
        self._streams[stream].write(text)

    def _draw(self) -> None:
        if not self._active:
            return
        if self._cursor == _UNKNOWN:
            self._streams[1].flush()
            # The caller may have left a line without its newline, and nothing tells where
            # the cursor is. A full line of spaces then a carriage return ends on a fresh line
            # either way (a line already started wraps; an empty one stays put): their text
            # is kept, never wiped (zsh's PROMPT_SP).
            self.terminal.write(" " * self._columns() + "\r")
            self._cursor = _LINE_START
        if self._cursor != _LINE_START:
            return  # a line without its newline yet: drawing here would wipe it
        text = _fit(self.frame(), self._columns() - 1)  # never wraps: it can be erased
        if text == self._drawn:
            return
        self._streams[1].flush()  # buffered stdout first, or it would land on the status line
        self.terminal.write(ERASE_LINE + text)
        self.terminal.flush()
        self._drawn = text
        self._shown = True

    def _erase(self) -> None:
        if self._drawn:
            self.terminal.write(ERASE_LINE)
            self.terminal.flush()
            self._drawn = ""

    def _columns(self) -> int:
        if self._width is not None:
            return self._width
        try:
            return os.get_terminal_size(self.terminal.fileno()).columns or DEFAULT_WIDTH
        except (OSError, ValueError, AttributeError):
            return DEFAULT_WIDTH

    def _animate_loop(self) -> None:
        while not self._stop.wait(FRAME_SECONDS):
            self.tick()


class _Through:
    """sys.stdout or sys.stderr while the status line shows: every write goes through the
    display, which takes the line away first and knows where the cursor is left."""

    def __init__(self, display: Display, stream: int, original: TextIO) -> None:
        self._display = display
        self._stream = stream
        self._original = original

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        display = self._display
        with display._lock:
            if display._active:
                display._write(self._stream, text)
                return len(text)
        return self._original.write(text)

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, buffer, ...
        return getattr(self._original, name)


def _runs(entries: list[list[Any]]) -> list[tuple[int, str]]:
    """(stream, text) for each run of one stream's entries: one write each."""
    runs: list[tuple[int, list[str]]] = []
    for _index, stream, text in entries:
        stream = 2 if stream == 2 else 1
        if runs and runs[-1][0] == stream:
            runs[-1][1].append(text)
        else:
            runs.append((stream, [text]))
    return [(stream, "".join(texts)) for stream, texts in runs]


def rate_text(done: int, seconds: float) -> str:
    """Calls finished per second, per minute or per hour: whichever gives a number >= 1."""
    per_second = done / seconds
    for per_unit, unit in ((per_second, "s"), (per_second * 60, "min")):
        if per_unit >= 1:
            return f"{per_unit:,.0f}/{unit}" if per_unit >= 10 else f"{per_unit:.1f}/{unit}"
    return f"{per_second * 3600:.1f}/h"


def duration_text(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole // 60 % 60:02d}m"


def _fit(text: str, columns: int) -> str:
    """`text` cut to at most `columns` terminal cells."""
    used = 0
    for position, char in enumerate(text):
        width = 0 if unicodedata.combining(char) else (
            2 if unicodedata.east_asian_width(char) in ("W", "F") else 1)
        if used + width > columns:
            return text[:position]
        used += width
    return text


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _is_terminal(stream: Any) -> bool:
    """A terminal a person watches: not a pipe, a file, a notebook or a dumb terminal."""
    return _isatty(stream) and os.environ.get("TERM") != "dumb"

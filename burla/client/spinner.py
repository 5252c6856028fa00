"""What the caller sees while a job runs: remote output lines, and a status line on a terminal.

The status line (rich, on stderr) appears only on an interactive terminal, never in pipes or
notebooks; remote output is written through the same console so the two never garble.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner


class Display:
    def __init__(self, enabled: bool, function_name: str) -> None:
        console = Console(file=sys.stderr) if enabled else None  # (a Console costs 50 us)
        self.enabled = console is not None and console.is_terminal and not console.is_jupyter
        self.function_name = function_name
        self.done = 0
        self.total: int | None = None
        self.running = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._live: Live | None = None
        if self.enabled:
            self._spinner = Spinner("dots", text=self._text())
            self._live = Live(
                self._spinner, console=console, refresh_per_second=8, transient=True,
                redirect_stdout=True, redirect_stderr=True,
            )

    def __enter__(self) -> Display:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.stop()

    def update(self, *, done: int | None = None, total: int | None = None,
               running: int | None = None) -> None:
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total
        if running is not None:
            self.running = running
        if self._live is not None:
            self._spinner.update(text=self._text())

    def _text(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        total = "?" if self.total is None else str(self.total)
        return (f"{self.function_name}: {self.done}/{total} done · "
                f"{self.done / elapsed:,.0f}/s · {self.running} running")

    def write_logs(self, entries: list[list[Any]]) -> None:
        """Write remote output lines to this process's stdout/stderr (called by the job thread)."""
        with self._lock:
            out, err = sys.stdout, sys.stderr
            run: list[str] = []
            run_stream = 0
            for _index, stream, text in entries:  # one write per run of one stream's text
                if stream != run_stream and run:
                    (err if run_stream == 2 else out).write("".join(run))
                    run = []
                run_stream = stream
                run.append(text)
            if run:
                (err if run_stream == 2 else out).write("".join(run))
            out.flush()
            err.flush()

"""Structured logging set-up for the daemons: JSON lines off a TTY, readable lines on one."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


class UnfailingStream:
    """A stream that drops what it cannot write (its disk is full) instead of raising: a log
    line must never fail the work it reports on, or stop a daemon. `lost` counts the drops."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lost = 0

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError:
            self.lost += 1
            return 0

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            self.lost += 1


def configure(role: str, level: str = "info", json: bool | None = None) -> None:
    """Route structlog to stderr for `role`; called once by the CLI before a daemon runs."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(
            file=UnfailingStream(sys.stderr)),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(role=role)

"""Tracebacks that travel: pickled flat, one entry per frame, and rebuilt as real tracebacks.

Each rebuilt frame runs stand-in code that carries the remote frame's file, function name and
line, so `traceback` prints it, source line included, like a local one. The stand-in has no
column positions: with them (tblib's stand-in has its own) every remote frame was printed with
carets under the wrong part of its line. Flat, a traceback of any depth pickles without
recursion.
"""

from __future__ import annotations

import ast
from types import CodeType, TracebackType
from typing import Any

# (file name, function name, line, module name) of one frame.
Entry = tuple[str, str, int, Any]


class _Rebuilding(Exception):
    """Raised by the stand-in code, only to capture its frame."""


def _stand_in() -> CodeType:
    tree = ast.parse("raise _Rebuilding")
    for node in ast.walk(tree):
        if isinstance(node, ast.expr | ast.stmt):
            node.col_offset = node.end_col_offset = -1  # compiled as "no column information"
    return compile(tree, "<burla>", "exec")


_STAND_IN = _stand_in()


def reduce_traceback(tb: TracebackType) -> tuple[Any, tuple[list[Entry]]]:
    """A pickler's reduction of `tb`: `rebuild_traceback` and the frames' entries."""
    entries: list[Entry] = []
    current: TracebackType | None = tb
    while current is not None:
        code = current.tb_frame.f_code
        entries.append((code.co_filename, code.co_name, current.tb_lineno,
                        current.tb_frame.f_globals.get("__name__")))
        current = current.tb_next
    return rebuild_traceback, (entries,)


def rebuild_traceback(entries: list[Entry]) -> TracebackType | None:
    """A traceback with one real frame per entry, outermost first."""
    head: TracebackType | None = None
    last: TracebackType | None = None
    for filename, name, lineno, module in entries:
        line = lineno if isinstance(lineno, int) and lineno > 0 else 1
        code = _STAND_IN.replace(co_firstlineno=line, co_filename=str(filename),
                                 co_name=str(name))
        try:
            exec(code, {"__name__": module, "__file__": filename, "_Rebuilding": _Rebuilding})
        except _Rebuilding as marker:
            assert marker.__traceback__ is not None
            tb = marker.__traceback__.tb_next  # the stand-in's frame, below this one
        assert tb is not None
        if last is None:
            head = tb
        else:
            last.tb_next = tb
        last = tb
    return head


"""What an executor sends home: result batches, and exceptions that arrive as their own type.

Every exception travels the way tblib pickles it, with its traceback (flat, as
burla/tracebacks.py writes it), cause, context and notes. That holds for every class, including
those user code defines after the executor started (tblib's `install` registers only the
classes that exist when it runs). A class whose `__init__` takes other arguments than it passes
to `Exception.__init__` (`MyError(msg, code)`) is rebuilt without calling `__init__`, from its
`args` and attributes. The rest is cut down in steps, each checked by a pickle round trip:

- a traceback deeper than TRACEBACK_HEAD + TRACEBACK_TAIL frames (a RecursionError's) keeps
  its first and last frames, and a note says how many were cut;
- attributes that cannot be pickled are left out, and a note names them;
- an exception whose class or `args` cannot be pickled becomes a RemoteError with its text.
"""

from __future__ import annotations

import io
import pickle
import traceback
from types import TracebackType
from typing import Any

from tblib.pickling_support import pickle_exception

from burla import pickling
from burla.errors import RemoteError
from burla.tracebacks import reduce_traceback

# Frames kept from the top and from the bottom of a deeper traceback.
TRACEBACK_HEAD = 20
TRACEBACK_TAIL = 20


class Pickler(pickling.Pickler):
    """cloudpickle, keeping code file names, that pickles every exception the tblib way, and
    tracebacks flat (burla/tracebacks.py)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException):
            return pickle_exception(obj)
        if isinstance(obj, TracebackType):
            return reduce_traceback(obj)
        return super().reducer_override(obj)


def dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def dump_batch(values: list[Any], errors: list[int], first: int) -> bytes:
    """One pickle of `values`; a value that cannot travel becomes a RemoteError in `errors`.

    `errors` are the indexes whose value is an exception (made portable already)."""
    if not errors:  # the common case: plain data, at the C pickler's speed
        try:
            return pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass
    try:  # exceptions, and functions, lambdas and classes made in user code
        return dumps(values)
    except Exception:
        pass
    for position, value in enumerate(values):
        try:
            dumps(value)
        except Exception as exc:
            values[position] = unpicklable_result(value, exc, first + position)
            errors.append(first + position)
    errors.sort()
    return dumps(values)


def unpicklable_result(value: Any, exc: Exception, index: int) -> RemoteError:
    """What the caller gets for a result that cannot be pickled: which input, what it returned,
    and what pickling it said."""
    why = "".join(traceback.format_exception_only(exc)).strip()
    return RemoteError(
        type(exc).__name__,
        f"the result of input {index} could not be pickled to send it back: {exc}. Return plain "
        f"data (numbers, strings, lists, arrays) instead.",
        f"input {index} returned {type(value).__qualname__}, which cannot be pickled to send it "
        f"back:\n{why}\n",
    )


def portable_exception(exc: BaseException) -> BaseException:
    """`exc`, or the nearest stand-in that the client can rebuild (see the module docstring)."""
    _trim_tracebacks(exc, set())
    if _round_trips(exc):
        return exc
    return _rebuilt(exc, set())


def _round_trips(exc: BaseException) -> bool:
    try:
        pickle.loads(dumps(exc))
        return True
    except Exception:  # whatever the user's class does when pickled or rebuilt
        return False


def _rebuilt(exc: BaseException, seen: set[int]) -> BaseException:
    seen.add(id(exc))
    try:
        clone = _without_unpicklable_parts(exc, seen)
        if _round_trips(clone):
            return clone
    except Exception:  # e.g. a __new__ that needs other arguments than `args`
        pass
    return _as_text(exc)


def _without_unpicklable_parts(exc: BaseException, seen: set[int]) -> BaseException:
    """A copy of `exc`, made without calling `__init__`, keeping only attributes that pickle,
    with its cause and context made portable in turn."""
    cls = type(exc)
    clone = cls.__new__(cls, *exc.args)
    clone.args = exc.args
    dropped = []
    for name, value in vars(exc).items():
        if name == "__notes__" or _pickles(value):
            clone.__dict__[name] = list(value) if name == "__notes__" else value
        else:
            dropped.append(name)
    clone.__cause__ = _linked(exc.__cause__, seen)
    clone.__context__ = _linked(exc.__context__, seen)
    clone.__suppress_context__ = exc.__suppress_context__
    clone.__traceback__ = exc.__traceback__
    if dropped:
        clone.add_note(f"[burla] {', '.join(dropped)}: attributes of this {cls.__qualname__} "
                       f"that could not be pickled to send it home; they are left out")
    return clone


def _linked(link: BaseException | None, seen: set[int]) -> BaseException | None:
    if link is None or id(link) in seen:  # a cycle is cut, not followed forever
        return None
    return link if _round_trips(link) else _rebuilt(link, seen)


def _pickles(value: Any) -> bool:
    try:
        dumps(value)
        return True
    except Exception:
        return False


def _as_text(exc: BaseException) -> RemoteError:
    text = "".join(traceback.format_exception(exc))
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__qualname__} whose str() failed>"
    return RemoteError(type(exc).__qualname__, message, text)


def _trim_tracebacks(exc: BaseException | None, seen: set[int]) -> None:
    """Cut the middle out of every traceback deeper than the head and tail kept, in `exc` and
    the exceptions chained to it: a RecursionError's thousand frames repeat one line, and the
    client rebuilds each frame it gets."""
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        _trim(exc)
        _trim_tracebacks(exc.__cause__, seen)
        exc = exc.__context__


def _trim(exc: BaseException) -> None:
    entries: list[TracebackType] = []
    tb = exc.__traceback__
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    if len(entries) <= TRACEBACK_HEAD + TRACEBACK_TAIL:
        return
    entries[TRACEBACK_HEAD - 1].tb_next = entries[-TRACEBACK_TAIL]
    cut = len(entries) - TRACEBACK_HEAD - TRACEBACK_TAIL
    try:
        exc.add_note(f"[burla] {cut} frames of the remote traceback were cut from its middle: "
                     f"of {len(entries)}, the first {TRACEBACK_HEAD} and the last "
                     f"{TRACEBACK_TAIL} are kept")
    except TypeError:  # __notes__ set to something that is not a list
        pass

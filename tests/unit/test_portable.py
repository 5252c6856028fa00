"""Exceptions made to travel home from an executor arrive as their own type, attributes and
traceback included, or as the nearest stand-in that can."""

from __future__ import annotations

import pickle
import sys
import threading
import traceback
import types
from typing import Any

import pytest

from burla.errors import RemoteError
from burla.exec import portable
from burla.exec.portable import dump_batch, portable_exception
from burla.exec.runner import _note_unpacking

pytestmark = pytest.mark.timeout(10)


class CodedError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)  # args == (message,): CodedError(*args) cannot rebuild it
        self.code = code


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def travel(exc: BaseException) -> Any:
    """What the client unpickles from a batch holding `exc` as the failure of input 0."""
    errors = [0]
    return pickle.loads(dump_batch([portable_exception(exc)], errors, 0))[0]


def test_an_exception_with_extra_init_arguments_keeps_type_attributes_and_frames() -> None:
    home = travel(raised(CodedError("failed", code=3)))
    assert type(home) is CodedError and home.args == ("failed",) and home.code == 3
    assert [f.name for f in traceback.extract_tb(home.__traceback__)] == ["raised"]


def test_a_class_pickled_by_value_comes_back_as_the_same_class() -> None:
    def make() -> type[Exception]:
        class Local(Exception):  # a local class: cloudpickle sends it by value
            def __init__(self, message: str, code: int) -> None:
                super().__init__(message)
                self.code = code

        return Local

    local = make()
    home = travel(raised(local("x", 1)))
    assert type(home) is local and home.code == 1


def test_cause_context_and_notes_travel_too() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise CodedError("outer", 2) from inner
    except CodedError as exc:
        exc.add_note("a note")
        home = travel(exc)
    assert type(home.__cause__) is KeyError and home.__notes__ == ["a note"]


def test_attributes_that_do_not_pickle_are_left_out_and_named() -> None:
    exc = raised(CodedError("locked", 4))
    exc.lock = threading.Lock()  # type: ignore[attr-defined]
    home = travel(exc)
    assert type(home) is CodedError and home.code == 4 and not hasattr(home, "lock")
    assert any(n.startswith("[burla] lock: attributes of this CodedError") for n in home.__notes__)
    assert hasattr(exc, "lock")  # the executor's own exception is left as it was


def test_an_unpicklable_cause_is_replaced_by_its_stand_in() -> None:
    exc = raised(CodedError("outer", 5))
    exc.__cause__ = raised(ValueError(threading.Lock()))
    home = travel(exc)
    assert type(home) is CodedError and type(home.__cause__) is RemoteError


def test_args_that_do_not_pickle_make_a_remote_error_with_the_traceback_text() -> None:
    home = travel(raised(ValueError(threading.Lock())))
    assert type(home) is RemoteError and home.type_name == "ValueError"
    assert "in raised" in home.remote_traceback and "ValueError" in home.remote_traceback


def test_a_cycle_of_chained_exceptions_ends() -> None:
    first, second = raised(ValueError(threading.Lock())), raised(KeyError("k"))
    first.__context__, second.__context__ = second, first
    home = travel(first)
    assert type(home) is RemoteError


def recurse(n: int) -> int:
    return recurse(n + 1)


def test_a_deep_traceback_keeps_its_first_and_last_frames_and_says_how_many_were_cut() -> None:
    try:
        recurse(0)
    except RecursionError as exc:
        depth = len(traceback.extract_tb(exc.__traceback__))
        home = travel(exc)
    assert depth > sys.getrecursionlimit() // 2
    frames = traceback.extract_tb(home.__traceback__)
    assert len(frames) == portable.TRACEBACK_HEAD + portable.TRACEBACK_TAIL
    assert frames[0].name == "test_a_deep_traceback_keeps_its_first_and_last_frames_and_says_how_" \
        "many_were_cut" and frames[-1].name == "recurse"
    cut = depth - len(frames)
    assert f"[burla] {cut} frames of the remote traceback were cut from its middle" in \
        home.__notes__[0]


def test_an_unpicklable_result_names_the_input_and_what_it_returned() -> None:
    values: list[Any] = [1, threading.Lock(), 3]
    errors: list[int] = []
    home = pickle.loads(dump_batch(values, errors, 10))
    assert errors == [11] and home[0] == 1 and home[2] == 3
    assert home[1].remote_traceback.startswith("input 11 returned lock, which cannot be pickled")
    assert "TypeError: cannot pickle '_thread.lock' object" in home[1].remote_traceback


def one(x: object) -> object:
    return x


def concat(a: str, b: int) -> str:
    return a + b  # type: ignore[operator]


def call_error(function: Any, arg: tuple[Any, ...]) -> TypeError:
    try:
        function(*arg)
    except TypeError as exc:
        _note_unpacking(exc, function, arg, 4)
        return exc
    raise AssertionError("no TypeError")


def test_a_tuple_that_does_not_bind_gets_the_unpacking_note() -> None:
    notes = call_error(one, (1, 2)).__notes__
    assert notes[0].startswith("[burla] input 4 is a tuple, so burla called one(*input) with "
                               "its 2 items as arguments")
    assert "inputs=[(t,) for t in inputs]" in notes[0]
    assert call_error(len, (1, 2)).__notes__  # a builtin with a signature


def test_a_type_error_from_inside_the_function_gets_no_note() -> None:
    assert not hasattr(call_error(concat, ("a", 1)), "__notes__")


def test_results_that_cannot_be_unpickled_here_say_why() -> None:
    from burla import protocol
    from burla.client.results import decode_results

    module = types.ModuleType("no_such_module_x")  # importable only while it is made
    exec("class Thing: pass", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        missing = pickle.dumps([module.Thing()])
    finally:
        del sys.modules[module.__name__]
    [home] = decode_results(protocol.Results("j", 0, 0, 3, 1, [], True, 0, 0, missing))
    assert isinstance(home, RemoteError) and "inputs 3..3" in str(home)
    assert "ModuleNotFoundError: No module named 'no_such_module_x'" in home.remote_traceback


def test_a_rebuilt_traceback_prints_like_the_original_without_stand_in_carets() -> None:
    try:
        concat("a", 1)  # two frames: this one and concat's
    except TypeError as caught:
        exc = caught
    home = travel(exc)
    local = traceback.extract_tb(exc.__traceback__)
    rebuilt = traceback.extract_tb(home.__traceback__)
    assert [(f.filename, f.name, f.lineno, f.line) for f in rebuilt] == [
        (f.filename, f.name, f.lineno, f.line) for f in local]
    assert all(f.colno is None for f in rebuilt)
    assert "^" not in "".join(traceback.format_exception(home))


def test_a_thousand_frames_pickle_flat() -> None:
    from burla.tracebacks import reduce_traceback

    try:
        recurse(0)
    except RecursionError as exc:
        assert exc.__traceback__ is not None
        rebuild, (entries,) = reduce_traceback(exc.__traceback__)
        home = rebuild(pickle.loads(pickle.dumps(entries)))
    assert len(traceback.extract_tb(home)) == len(entries) > 900
    assert traceback.extract_tb(home)[-1].name == "recurse"

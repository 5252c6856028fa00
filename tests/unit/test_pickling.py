"""Pickled code keeps its file name, whatever cloudpickle version is installed."""

from __future__ import annotations

import pickle

from burla import pickling


def outer(x: int):  # type: ignore[no-untyped-def]
    def inner() -> int:
        return x + 1

    return inner


def test_a_function_pickled_by_value_keeps_its_file_name_and_runs() -> None:
    restored = pickle.loads(pickling.dumps(lambda y: outer(y)()))
    assert restored.__code__.co_filename == __file__
    assert restored(2) == 3


def test_nested_code_keeps_its_file_name_too() -> None:
    restored_outer = pickle.loads(pickling.dumps(outer.__code__))
    inner_code = next(c for c in restored_outer.co_consts if hasattr(c, "co_filename"))
    assert restored_outer.co_filename == __file__
    assert inner_code.co_filename == __file__


def test_the_pickle_of_one_function_is_the_same_every_time() -> None:
    function = lambda z: z * 2  # noqa: E731
    assert pickling.dumps(function) == pickling.dumps(function)

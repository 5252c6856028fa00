"""What a user sees when a call goes wrong: tuple unpacking, exceptions with extra `__init__`
arguments, deep recursion, unpicklable results, and tracebacks free of burla's own frames."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import traceback
from pathlib import Path

import pytest

import burla
from burla import remote_parallel_map

pytestmark = pytest.mark.timeout(60)
BURLA_DIR = os.path.dirname(burla.__file__) + os.sep


def identity(x):
    return x


def add(a, b):
    return a + b


class CodedError(Exception):
    def __init__(self, message, code):  # two required arguments, one passed on: args == (msg,)
        super().__init__(message)
        self.code = code


def raise_coded(x):
    raise CodedError(f"failed on {x}", code=x * 10)


class LockedError(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")
        self.kept = a
        self.lock = threading.Lock()  # cannot be pickled


def raise_locked(x):
    raise LockedError(x, "b")


def raise_lock_in_args(x):
    raise ValueError(threading.Lock())


def recurse(n):
    return recurse(n + 1)


def return_a_lock(x):
    return threading.Lock()


def fail_deep(x):
    return _fail_deeper(x)


def _fail_deeper(x):
    raise ValueError(f"deep failure {x}")


def test_a_tuple_input_to_a_one_argument_function_says_tuples_are_unpacked(cluster):
    with pytest.raises(TypeError) as caught:
        remote_parallel_map(identity, [1, (2, 3)], spinner=False)
    notes = "\n".join(caught.value.__notes__)
    assert "input 1 is a tuple" in notes and "identity(*input)" in notes
    assert "[(t,) for t in inputs]" in notes


def test_a_type_error_inside_the_function_gets_no_unpacking_note(cluster):
    with pytest.raises(TypeError, match="can only concatenate str") as caught:
        remote_parallel_map(add, [("a", 1)], spinner=False)
    assert not any("tuple" in note for note in caught.value.__notes__)


def test_a_dict_maps_over_its_keys(cluster):
    assert remote_parallel_map(identity, {"a": 1, "b": 2}, spinner=False) == ["a", "b"]


def test_an_exception_with_extra_init_arguments_arrives_as_its_own_type(cluster):
    with pytest.raises(CodedError) as caught:
        remote_parallel_map(raise_coded, [4], spinner=False)
    exc = caught.value
    assert type(exc) is CodedError and str(exc) == "failed on 4" and exc.code == 40
    assert exc.burla_input_index == 0
    assert "raise_coded" in [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


def test_attributes_that_cannot_travel_are_left_out_and_the_type_kept(cluster):
    with pytest.raises(LockedError) as caught:
        remote_parallel_map(raise_locked, [5], spinner=False)
    exc = caught.value
    assert str(exc) == "5/b" and exc.kept == 5 and not hasattr(exc, "lock")
    assert any("lock" in note and "left out" in note for note in exc.__notes__)


def test_an_exception_whose_args_cannot_travel_is_a_remote_error(cluster):
    with pytest.raises(burla.RemoteError) as caught:
        remote_parallel_map(raise_lock_in_args, [1], spinner=False)
    err = caught.value
    assert err.type_name == "ValueError" and "raise_lock_in_args" in err.remote_traceback


def test_a_recursion_error_arrives_as_itself_with_its_deep_traceback_cut(cluster):
    with pytest.raises(RecursionError) as caught:
        remote_parallel_map(recurse, [0], spinner=False)
    exc = caught.value
    frames = traceback.extract_tb(exc.__traceback__)
    assert frames[-1].name == "recurse" and 20 < len(frames) < 100
    assert any("frames of the remote traceback were cut" in n for n in exc.__notes__)


def test_an_unpicklable_result_says_why_after_remote_traceback(cluster):
    with pytest.raises(burla.RemoteError) as caught:
        remote_parallel_map(return_a_lock, [1], spinner=False)
    err = caught.value
    assert "lock" in err.remote_traceback and "return_a_lock" not in err.remote_traceback
    assert "input 0 returned lock" in err.remote_traceback
    after = str(err).split("Remote traceback:\n", 1)[1]
    assert after.strip(), str(err)


def _assert_reads_like_a_local_traceback(exc: BaseException, caller_line: str) -> None:
    frames = traceback.extract_tb(exc.__traceback__)
    text = "".join(traceback.format_exception(exc))
    assert not [f for f in frames if f.filename.startswith(BURLA_DIR)], text
    assert frames[0].filename == __file__ and frames[0].line == caller_line, text
    assert [(f.filename, f.name) for f in frames[1:]] == [
        (__file__, "fail_deep"), (__file__, "_fail_deeper")], text
    assert frames[-1].line == 'raise ValueError(f"deep failure {x}")', text
    assert "^" not in text, text  # no carets placed by the stand-in code of rebuilt frames


def test_a_remote_traceback_reads_like_a_local_one(cluster):
    with pytest.raises(ValueError) as caught:
        remote_parallel_map(fail_deep, [1], spinner=False)
    _assert_reads_like_a_local_traceback(
        caught.value, "remote_parallel_map(fail_deep, [1], spinner=False)")


def test_a_streamed_remote_traceback_reads_like_a_local_one(cluster):
    results = remote_parallel_map(fail_deep, [1], generator=True, spinner=False)
    with pytest.raises(ValueError) as caught:
        next(results)
    _assert_reads_like_a_local_traceback(caught.value, "next(results)")


def test_an_exception_class_of_a_main_script_is_caught_by_its_type(cluster, tmp_path: Path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        from burla import remote_parallel_map

        class CodedError(Exception):
            def __init__(self, message, code):
                super().__init__(message)
                self.code = code

        def f(x):
            raise CodedError("no", code=x)

        try:
            remote_parallel_map(f, [7], spinner=False)
        except CodedError as exc:
            print("caught", type(exc).__name__, exc.code)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, **cluster.env()}, timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "caught CodedError 7"


@pytest.mark.parametrize("generator", [False, True])
def test_a_remote_sys_exit_ends_the_caller_with_its_code_and_says_which_input(
    cluster, tmp_path: Path, generator: bool
):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from burla import remote_parallel_map

        def leave(x):
            sys.exit(3)

        results = remote_parallel_map(leave, [0], generator={generator}, spinner=False)
        list(results)
        print("not reached")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, **cluster.env()}, timeout=50)
    assert done.returncode == 3, done.stderr
    assert "not reached" not in done.stdout
    assert "[burla] failed on input index 0: the call raised SystemExit(3) in leave" \
        in done.stderr, done.stderr
    assert f'file "{script}", line 6' in done.stderr, done.stderr

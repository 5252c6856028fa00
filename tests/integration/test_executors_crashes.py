"""A call that kills its executor (os._exit, SIGKILL, segfault) is retried on a fresh one; the
third crash on one input fails it with NodeDisconnected naming the cause; the cluster goes on."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

import burla
from burla import remote_parallel_map

pytestmark = pytest.mark.timeout(60)

CAUSES = {"exit": "exited with code 3", "sigkill": "signal SIGKILL", "segfault": "signal SIGSEGV"}


def crash(kind: str) -> None:
    import ctypes
    import signal

    if kind == "exit":
        os._exit(3)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def crash_first_time(kind: str, marker: str) -> int:
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        crash(kind)
    return os.getpid()


def identity(x: int) -> int:
    return x


class ExitOnUnpickle:
    def __reduce__(self) -> tuple[object, tuple[int]]:
        return os._exit, (7,)


def closes_over_exit(x: int) -> int:
    return x + len([EXIT_ON_LOAD])


EXIT_ON_LOAD = ExitOnUnpickle()


@pytest.mark.parametrize("kind", sorted(CAUSES))
def test_crash_is_retried_on_a_fresh_executor(cluster, tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "crashed"
    [pid] = remote_parallel_map(crash_first_time, [(kind, str(marker))], spinner=False)
    assert marker.exists(), "the first attempt did not run"
    assert pid != int(marker.read_text()), "the retry ran in the executor that crashed"


@pytest.mark.parametrize("kind", sorted(CAUSES))
def test_third_crash_fails_the_input_naming_the_cause_and_cluster_goes_on(
    cluster, kind: str
) -> None:
    with pytest.raises(burla.NodeDisconnected) as caught:
        remote_parallel_map(crash, [kind], spinner=False)
    message = str(caught.value)
    assert CAUSES[kind] in message, message
    assert "3 times in a row" in message
    assert caught.value.burla_input_index == 0
    assert remote_parallel_map(identity, [1, 2, 3], spinner=False) == [1, 2, 3]


def test_function_that_kills_its_executor_on_load_fails_instead_of_looping(cluster) -> None:
    with pytest.raises(burla.NodeDisconnected) as caught:
        remote_parallel_map(closes_over_exit, [1], spinner=False)
    assert "exited with code 7, 3 times in a row" in str(caught.value)
    assert remote_parallel_map(identity, [1, 2], spinner=False) == [1, 2]


class RaiseOnUnpickle:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return importlib.import_module, ("burla_module_not_on_the_cluster",)


RAISE_ON_LOAD = RaiseOnUnpickle()


def closes_over_missing_module(x: int) -> int:
    return x + len([RAISE_ON_LOAD])


def test_function_that_cannot_load_fails_each_input_with_why_and_no_executor_dies(
    cluster,
) -> None:
    given_up_before = cluster.logs().count('"input_failed"')
    with pytest.raises(ModuleNotFoundError) as caught:
        remote_parallel_map(closes_over_missing_module, range(500), spinner=False)
    assert "burla_module_not_on_the_cluster" in str(caught.value)
    assert any("could not be loaded on the cluster" in note
               for note in getattr(caught.value, "__notes__", []))
    assert remote_parallel_map(identity, [1, 2], spinner=False) == [1, 2]
    # No crash-and-retry loop per input: the agent gave up on none.
    assert cluster.logs().count('"input_failed"') == given_up_before


def test_inputs_that_cannot_load_fail_with_why_and_the_cluster_goes_on(cluster) -> None:
    given_up_before = cluster.logs().count('"input_failed"')
    with pytest.raises(ModuleNotFoundError) as caught:
        remote_parallel_map(identity, [RAISE_ON_LOAD] * 50, spinner=False)
    assert caught.value.burla_input_index in range(50)
    assert any("inputs could not be loaded on the cluster" in note
               for note in getattr(caught.value, "__notes__", []))
    assert remote_parallel_map(identity, [1, 2], spinner=False) == [1, 2]
    assert cluster.logs().count('"input_failed"') == given_up_before


def print_then_exit(x: int) -> None:
    print(f"last words of {x}")
    os.write(1, f"and from fd 1 of {x}\n".encode())
    os._exit(3)


def test_output_printed_right_before_os_exit_still_arrives(cluster, capfd) -> None:
    with pytest.raises(burla.NodeDisconnected):
        remote_parallel_map(print_then_exit, [5], spinner=False)
    out = capfd.readouterr().out
    assert "last words of 5" in out and "and from fd 1 of 5" in out, out


def test_a_segfault_shows_where_the_call_crashed(cluster, capfd) -> None:
    with pytest.raises(burla.NodeDisconnected, match="SIGSEGV"):
        remote_parallel_map(crash, ["segfault"], spinner=False)
    err = capfd.readouterr().err
    assert "Fatal Python error: Segmentation fault" in err, err
    assert 'in crash' in err and "test_executors_crashes.py" in err, err

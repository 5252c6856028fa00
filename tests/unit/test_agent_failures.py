"""The agent's rule for an executor dying under a call: retry, one executor fewer, or fail."""

from __future__ import annotations

import dataclasses

import pytest

from burla.agent.failures import MAX_CRASHES_PER_INPUT, Death, Verdict, judge
from burla.errors import NodeDisconnected, OutOfMemory

pytestmark = pytest.mark.timeout(10)

CRASH = Death(index=7, cause="was killed by signal SIGSEGV", oom=False, func_ram=0, crashes=0,
              others=1, node="agent0", budget_bytes=3 << 30)


def test_a_crash_is_retried_and_counted_until_the_limit() -> None:
    for earlier in range(MAX_CRASHES_PER_INPUT - 1):
        verdict = judge(dataclasses.replace(CRASH, crashes=earlier))
        assert verdict == Verdict(None, crashed=True, lower_parallelism=False)


def test_the_third_crash_fails_the_input_naming_the_cause() -> None:
    verdict = judge(dataclasses.replace(CRASH, crashes=MAX_CRASHES_PER_INPUT - 1))
    assert type(verdict.fail) is NodeDisconnected and verdict.crashed
    assert "input 7 was killed by signal SIGSEGV, 3 times in a row" in str(verdict.fail)


def test_oom_under_integer_func_ram_fails_at_once_naming_the_limit() -> None:
    verdict = judge(dataclasses.replace(CRASH, oom=True, func_ram=2, crashes=0))
    assert isinstance(verdict.fail, OutOfMemory)
    assert not verdict.crashed and not verdict.lower_parallelism
    assert verdict.fail.func_ram == 2 and verdict.fail.limit_bytes == 2 << 30
    assert "func_ram=2 GB (2147483648 bytes)" in str(verdict.fail)
    assert "input 7 ran out of memory" in str(verdict.fail)


def test_dynamic_oom_with_other_executors_lowers_parallelism_and_retries() -> None:
    verdict = judge(dataclasses.replace(CRASH, oom=True, func_ram=0, others=3))
    assert verdict == Verdict(None, crashed=False, lower_parallelism=True)


def test_dynamic_oom_of_the_last_executor_is_terminal_and_says_so() -> None:
    verdict = judge(dataclasses.replace(CRASH, oom=True, func_ram=0, others=0, crashes=2))
    assert isinstance(verdict.fail, OutOfMemory) and not verdict.lower_parallelism
    assert verdict.fail.func_ram == "dynamic" and verdict.fail.limit_bytes == 3 << 30
    assert "needs more memory than node agent0 can give one call" in str(verdict.fail)
    assert "3.0 GB" in str(verdict.fail)


def test_out_of_memory_is_a_node_disconnected_that_pickles_with_its_limit() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(OutOfMemory("ran out", func_ram=4, limit_bytes=4 << 30)))
    assert isinstance(error, NodeDisconnected) and type(error) is OutOfMemory
    assert (str(error), error.func_ram, error.limit_bytes) == ("ran out", 4, 4 << 30)

"""Which input an executor's death counts against: only the one surely running."""

from __future__ import annotations

import pytest

from burla import protocol
from burla.agent.blame import Blame, blame, settle
from burla.agent.failures import Verdict

pytestmark = pytest.mark.timeout(10)


def chunk(count: int, report_each: bool) -> protocol.Chunk:
    return protocol.Chunk("job", 1, 0, 100, count, 0, report_each, b"")


def test_a_death_in_a_batched_chunk_is_blamed_on_no_input() -> None:
    # Inputs 100..102 reported in one batch, then the executor died somewhere in 103..149.
    assert blame(chunk(50, report_each=False), 3, before_start=False) == Blame(103, False)


def test_a_death_while_reporting_each_input_is_blamed_on_the_next_one() -> None:
    assert blame(chunk(50, report_each=True), 3, before_start=False) == Blame(103, True)


def test_a_death_with_one_input_left_can_only_be_that_input() -> None:
    assert blame(chunk(50, report_each=False), 49, before_start=False) == Blame(149, True)
    assert blame(chunk(1, report_each=False), 0, before_start=False) == Blame(100, True)


def test_a_death_before_the_chunk_started_is_blamed_on_its_next_input() -> None:
    # So a start that always fails ends through the crash limit instead of forking forever.
    assert blame(chunk(50, report_each=False), 0, before_start=True) == Blame(100, True)


def test_an_uncertain_death_fails_and_counts_nothing_but_still_lowers_parallelism() -> None:
    failing = Verdict("input 103 ...", crashed=True, lower_parallelism=False)
    assert settle(failing, certain=True) is failing
    assert settle(failing, certain=False) == Verdict(None, crashed=False,
                                                     lower_parallelism=False)
    oom = Verdict(None, crashed=False, lower_parallelism=True)
    assert settle(oom, certain=False) == oom

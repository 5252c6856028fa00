"""Job ids: what the client makes passes; anything else is refused in words that quote it short."""

from __future__ import annotations

import uuid

import pytest

from burla.job_ids import SHOWN_CHARS, is_job_id, job_id_problem, shown

pytestmark = pytest.mark.timeout(10)


def test_the_ids_the_client_makes_pass() -> None:
    for _ in range(100):
        job_id = uuid.uuid4().hex
        assert is_job_id(job_id) and job_id_problem(job_id) is None


@pytest.mark.parametrize("bad", [
    "", "f" * 31, "f" * 33, "F" * 32, str(uuid.uuid4()), "g" * 32, " " + "f" * 31,
    "f" * 32 + "\n", 123, None, b"f" * 32,
])
def test_anything_else_is_not_a_job_id(bad: object) -> None:
    assert not is_job_id(bad)
    problem = job_id_problem(bad)
    assert problem is not None and "is not a burla job id" in problem


@pytest.mark.parametrize("bad", ["x" * 100_000, "\0" * 1000, ["a"] * 1000])
def test_a_long_value_is_quoted_short_with_its_length(bad: object) -> None:
    assert len(shown(bad)) <= SHOWN_CHARS + 30
    problem = job_id_problem(bad)
    assert problem is not None and len(problem) < 200
    if isinstance(bad, str):
        assert f"({len(bad)} characters)" in problem

"""A crash counts against the input that was running, not the first unreported input of its
batch: a function that kills its executor once at each of several inputs of a chunk succeeds."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import burla
from burla import remote_parallel_map

pytestmark = pytest.mark.timeout(90)


def kill_once_at_multiples_of_five(x: int, marks: str) -> int:
    mark = Path(marks) / str(x)
    if x % 5 == 0 and not mark.exists():
        mark.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def kill_always_at_seven(x: int) -> int:
    if x == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_crashes_at_many_inputs_of_one_chunk_each_count_once_and_the_job_succeeds(
    make_cluster, tmp_path: Path
) -> None:
    cluster = make_cluster(agents=1, cpus=2)
    marks = tmp_path / "marks"
    marks.mkdir()
    inputs = [(x, str(marks)) for x in range(50)]
    results = remote_parallel_map(kill_once_at_multiples_of_five, inputs, spinner=False)
    assert results == [x * x for x in range(50)]
    assert sorted(int(p.name) for p in marks.iterdir()) == list(range(0, 50, 5))
    assert '"input_failed"' not in cluster.logs()


def test_an_input_that_always_crashes_is_the_one_named(make_cluster) -> None:
    make_cluster(agents=1, cpus=1)
    with pytest.raises(burla.NodeDisconnected) as caught:
        remote_parallel_map(kill_always_at_seven, range(20), spinner=False)
    assert caught.value.burla_input_index == 7
    assert "input 7 was killed by signal SIGKILL, 3 times in a row" in str(caught.value)

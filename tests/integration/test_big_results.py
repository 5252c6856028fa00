"""Results of any size either arrive or fail their own input with ResultTooBig; none hangs."""

from __future__ import annotations

import re

import pytest

import burla
from burla import remote_parallel_map
from burla.config import MAX_RESULT_BYTES

pytestmark = pytest.mark.timeout(90)

MB = 1000 * 1000


def sized(megabytes: int) -> bytes:
    return bytes(megabytes * MB)  # calloc'd: cheap to make, every byte still travels


def test_fast_results_that_together_pass_the_message_limit_all_arrive(cluster) -> None:
    sizes = [180, 180, 180]  # 540 MB: one batch of them was over ZeroMQ's message limit
    results = remote_parallel_map(sized, sizes, max_parallelism=1, spinner=False)
    assert [len(r) for r in results] == [size * MB for size in sizes]


def test_one_result_over_the_limit_fails_its_input_and_the_others_arrive(cluster) -> None:
    over = 340  # MB, over the result limit and over ZeroMQ's message limit
    assert over * MB > MAX_RESULT_BYTES
    arrived = []
    with pytest.raises(burla.ResultTooBig) as caught:
        for value in remote_parallel_map(sized, [1, 2, 3, over], max_parallelism=1,
                                         generator=True, spinner=False):
            arrived.append(len(value))
    assert sorted(arrived) == [1 * MB, 2 * MB, 3 * MB]
    message = str(caught.value)
    assert caught.value.burla_input_index == 3 and caught.value.index == 3
    assert re.search(r"input 3 pickles to 340,000,\d{3} bytes", message), message  # + framing
    assert f"{MAX_RESULT_BYTES:,}" in message, message
    assert remote_parallel_map(sized, [1], spinner=False) == [bytes(MB)]  # the cluster goes on

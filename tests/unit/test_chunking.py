"""Chunk sizes: guided self-scheduling, raised to a least amount of work once calls are timed."""

from __future__ import annotations

import pickle
import threading

import pytest

from burla.client import chunking
from burla.client.chunking import Chunker

pytestmark = pytest.mark.timeout(30)


def _sizes(chunker: Chunker) -> list[int]:
    sizes = []
    while (chunk := chunker.next_chunk()) is not None:
        first, count, blob = chunk
        assert pickle.loads(blob) == list(range(first, first + count))
        sizes.append(count)
    return sizes


def test_without_timings_chunks_shrink_to_single_inputs_at_the_end() -> None:
    sizes = _sizes(Chunker(range(10_000), slots=4))
    assert sum(sizes) == 10_000
    assert sizes[0] == chunking.FIRST_CHUNK_INPUTS and sizes[-1] == 1


def test_fast_calls_get_chunks_of_at_least_min_chunk_seconds_of_work() -> None:
    chunker = Chunker(range(1_000_000), slots=32_000)
    probe = chunker.next_chunk()
    assert probe is not None and probe[1] == 16  # 1M / (2 x 32,000): tiny
    chunker.observe(16, 16 * 20_000)  # 20 us a call: 10 ms is 500 calls
    sizes = _sizes(chunker)
    assert sum(sizes) == 1_000_000 - 16
    assert min(sizes[:-1]) == 500 and max(sizes) <= 500  # GSS alone would cut ~16-input chunks


def test_calls_reported_as_free_get_the_largest_chunks() -> None:
    chunker = Chunker(range(100_000), slots=32_000)
    chunker.next_chunk()
    chunker.observe(64, 0)
    assert chunker.chunk_size() == min(chunking.MAX_CHUNK_INPUTS, 100_000 - 64)


def test_slow_calls_keep_guided_self_scheduling() -> None:
    chunker = Chunker(range(1_000), slots=4)
    chunker.next_chunk()
    chunker.observe(64, 64 * 1_000_000_000)  # a second a call
    assert chunker.chunk_size() == -(-(1_000 - 64) // (chunking.GSS_FACTOR * 4))


def test_a_wide_cluster_waits_for_the_probe_timing_but_not_forever(monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr(chunking.time, "monotonic", lambda: now[0])
    chunker = Chunker(range(10_000), slots=chunking.PROBE_SLOTS + 1)
    assert not chunker.holding(now[0])  # nothing sent yet
    chunker.next_chunk()
    assert chunker.holding(now[0])
    now[0] += chunking.PROBE_SECONDS + 0.001
    assert not chunker.holding(now[0])  # a slow function: go on without its timing
    narrow = Chunker(range(10_000), slots=chunking.PROBE_SLOTS)
    narrow.next_chunk()
    assert not narrow.holding(now[0])
    wide = Chunker(range(10_000), slots=chunking.PROBE_SLOTS + 1)
    wide.next_chunk()
    wide.observe(64, 1_000)
    assert not wide.holding(now[0])



def test_a_repeat_job_starts_from_its_functions_last_speed(monkeypatch) -> None:
    monkeypatch.setattr(chunking, "SPEEDS", chunking.CallSpeeds())
    first = Chunker([0, 1, 2], slots=2)
    first.remember_speed_of("fast")
    assert _sizes(first) == [1, 1, 1]  # unknown speed: spread over the slots
    first.observe(3, 3 * 5_000)  # 5 us a call
    again = Chunker([0, 1, 2], slots=2)
    again.remember_speed_of("fast")
    # Bigger chunks, but no bigger than an even split: these inputs may be slower, and each
    # slot gets work.
    assert _sizes(again) == [2, 1]
    wide = Chunker(list(range(10_000)), slots=4)
    wide.remember_speed_of("fast")
    sizes = _sizes(wide)
    assert sizes[1] == 2_000  # 10 ms of 5 us calls; GSS alone would cut an eighth, 1,242
    other = Chunker([0, 1, 2], slots=2)
    other.remember_speed_of("another function")
    assert _sizes(other) == [1, 1, 1]


def test_a_remembered_speed_gives_way_to_the_jobs_own(monkeypatch) -> None:
    monkeypatch.setattr(chunking, "SPEEDS", chunking.CallSpeeds())
    chunker = Chunker(range(100_000), slots=4)
    chunking.SPEEDS.put("was fast", 1_000.0)
    chunker.remember_speed_of("was fast")
    chunker.next_chunk()
    chunker.observe(64, 64 * 1_000_000_000)  # now a second a call
    assert chunker.chunk_size() == -(-(100_000 - 64) // (chunking.GSS_FACTOR * 4))
    assert chunking.SPEEDS.get("was fast") == 1_000_000_000  # and the next job knows it


def test_only_so_many_functions_are_remembered(monkeypatch) -> None:
    monkeypatch.setattr(chunking, "SPEEDS", chunking.CallSpeeds(size=3))
    for n in range(5):
        chunker = Chunker([0], slots=1)
        chunker.remember_speed_of(f"f{n}")
        chunker.observe(1, 1_000)
    assert chunking.SPEEDS.known() == ["f2", "f3", "f4"]


def test_job_threads_share_the_remembered_speeds_safely() -> None:
    speeds = chunking.CallSpeeds(size=8)
    failures: list[BaseException] = []

    def churn(thread: int) -> None:
        try:
            for n in range(5_000):
                speeds.put(f"f{(thread + n) % 20}", float(n))
                speeds.get(f"f{n % 20}")
        except BaseException as exc:  # noqa: BLE001 - any error in a thread fails the test
            failures.append(exc)

    threads = [threading.Thread(target=churn, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and len(speeds.known()) == 8

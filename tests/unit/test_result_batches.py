"""Result batches cut by bytes: one pickle when it fits, halves when not, and a single result
over the limit failed as its input's ResultTooBig while its neighbours keep their values."""

from __future__ import annotations

import pickle
from types import SimpleNamespace
from typing import Any

import pytest

from burla import ResultTooBig, protocol
from burla.exec import batches
from burla.exec.batches import Batch, pack
from burla.exec.runner import Runner

pytestmark = pytest.mark.timeout(10)


def unpacked(parts: list[Batch]) -> dict[int, Any]:
    """index -> value over all batches, checking they are consecutive and counted right."""
    values: dict[int, Any] = {}
    for part in parts:
        loaded = pickle.loads(part.blob)
        assert len(loaded) == part.count
        assert part.first == (parts[0].first + len(values))
        values.update(enumerate(loaded, part.first))
    return values


def test_a_batch_that_fits_is_one_pickle_of_the_list() -> None:
    values = [b"x" * 100, 2, "three"]
    [part] = pack(list(values), [], 10, limit=1000)
    assert (part.first, part.count, part.errors) == (10, 3, [])
    assert part.blob == pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)


def test_a_batch_over_the_limit_is_cut_and_every_value_and_error_kept() -> None:
    error = KeyError("seven")
    values: list[Any] = [bytes([i]) * 300 for i in range(10)]
    values[7] = error
    parts = pack(list(values), [107], 100, limit=1000)
    assert len(parts) > 1 and all(len(p.blob) <= 1000 for p in parts)
    got = unpacked(parts)
    assert [got[100 + i] for i in range(10) if i != 7] == [v for i, v in enumerate(values)
                                                          if i != 7]
    assert isinstance(got[107], KeyError)
    assert [i for p in parts for i in p.errors] == [107]
    assert all(p.first <= i < p.first + p.count for p in parts for i in p.errors)


def test_one_result_over_the_limit_fails_alone_naming_index_size_and_limit() -> None:
    values = [b"a" * 10, b"b" * 5000, b"c" * 10]
    parts = pack(list(values), [], 40, limit=1000)
    got = unpacked(parts)
    assert got[40] == b"a" * 10 and got[42] == b"c" * 10
    too_big = got[41]
    assert isinstance(too_big, ResultTooBig) and too_big.index == 41
    size = len(pickle.dumps([values[1]], protocol=pickle.HIGHEST_PROTOCOL))
    assert f"input 41 pickles to {size:,} bytes" in str(too_big)
    assert "limit of 1,000 bytes" in str(too_big)
    assert [i for p in parts for i in p.errors] == [41]


def test_results_sharing_one_object_stay_one_batch_when_their_pickle_fits() -> None:
    shared = b"s" * 800  # a thousand references: one copy in a single pickle, over it if cut
    [part] = pack([shared] * 1000, [], 0, limit=10_000)
    assert part.count == 1000


def test_result_too_big_survives_pickling() -> None:
    error = batches.result_too_big(3, 5 << 30, 1 << 28)
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is ResultTooBig and back.index == 3 and str(back) == str(error)


class FakeLink:
    """The runner's view of its link thread: records what it sends; `recv` gives ResultsNoted
    for the batch just sent, as the agent would for a report_each chunk."""

    def __init__(self) -> None:
        self.job_id = "job"
        self.due = self.busy = False
        self.sent: list[protocol.Results] = []
        self.waits: list[int] = []  # results sent each time the runner waited

    def send(self, msg: protocol.Message) -> None:
        assert isinstance(msg, protocol.Results)
        self.sent.append(msg)

    def recv(self) -> protocol.Message:
        self.waits.append(len(self.sent))
        reported = sum(m.count for m in self.sent)
        return protocol.ResultsNoted(self.sent[-1].chunk_id, reported)


def run(values: list[Any], report_each: bool, skip: int = 0) -> FakeLink:
    link = FakeLink()
    capture = SimpleNamespace(texts=([], []), exact=False, running_index=-1)
    runner = Runner(link, capture)  # type: ignore[arg-type]
    runner.job_id, runner.function = "job", lambda x: x
    data = pickle.dumps(values)
    runner.run_chunk(protocol.Chunk("job", 1, 0, 20, len(values), skip, report_each, data))
    return link


def test_a_retried_chunk_reports_each_input_and_waits_for_the_agent_before_the_next() -> None:
    link = run(list(range(6)), report_each=True, skip=2)
    assert [(m.first_index, m.count) for m in link.sent] == [(22, 1), (23, 1), (24, 1), (25, 1)]
    assert [m.chunk_done for m in link.sent] == [False, False, False, True]
    assert link.waits == [1, 2, 3]  # after each input but the last


def test_a_first_run_batches_its_results_and_never_waits() -> None:
    link = run(list(range(6)), report_each=False)
    assert [(m.first_index, m.count, m.chunk_done) for m in link.sent] == [(20, 6, True)]
    assert link.waits == []


def test_results_too_big_together_leave_in_several_batches(monkeypatch) -> None:
    monkeypatch.setattr(batches, "MAX_RESULT_BYTES", 1000)
    link = run([b"x" * 600, b"y" * 600, b"z" * 600], report_each=False)
    assert [(m.first_index, m.count) for m in link.sent] == [(20, 1), (21, 1), (22, 1)]
    assert [m.chunk_done for m in link.sent] == [False, False, True]
    assert b"".join(pickle.loads(m.data)[0] for m in link.sent) == b"x" * 600 + b"y" * 600 + \
        b"z" * 600


def test_the_largest_batch_allowed_fits_in_one_message() -> None:
    from burla.config import MAX_RESULT_BYTES
    from burla.exec.runner import RESULT_FLUSH_COUNT
    from burla.transport import MAX_MESSAGE_BYTES

    every_index_an_error = list(range(2**40, 2**40 + RESULT_FLUSH_COUNT))
    header = protocol.encode(protocol.Results(
        "j" * 64, 2**40, 2**20, 2**40, RESULT_FLUSH_COUNT, every_index_an_error, True, 2**40,
        2**60, b""))[0]
    assert MAX_RESULT_BYTES + len(header) < MAX_MESSAGE_BYTES

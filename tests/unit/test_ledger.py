"""The client ledger: exactly-once results by index, and unfinished chunks kept for resend."""

from __future__ import annotations

from burla.client.ledger import Ledger
from burla.client.session import Batch


def test_new_results_count_and_duplicates_are_flagged():
    ledger = Ledger()
    ledger.uploaded(0, 4, b"a")
    assert ledger.accept(0, 2) is None  # all new
    assert ledger.accept(1, 3) == [False, True, True]  # index 1 came again after a retry
    assert ledger.received == 4
    assert ledger.accept(0, 4) == [False] * 4
    assert ledger.received == 4


def test_chunks_are_kept_until_every_input_has_a_result():
    ledger = Ledger()
    ledger.uploaded(0, 3, b"first")
    ledger.uploaded(3, 2, b"second")
    ledger.uploaded(5, 1, b"third")
    ledger.accept(3, 2)
    assert ledger.unfinished() == [(0, 3, b"first"), (5, 1, b"third")]
    ledger.accept(0, 2)
    assert [c[0] for c in ledger.unfinished()] == [0, 5]
    ledger.accept(2, 1)
    ledger.accept(5, 1)
    assert ledger.unfinished() == []


def test_results_spanning_chunks_settle_each():
    ledger = Ledger()
    ledger.uploaded(0, 2, b"a")
    ledger.uploaded(2, 2, b"b")
    ledger.accept(1, 3)
    assert ledger.unfinished() == [(0, 2, b"a")]


def test_attach_results_without_uploads_are_accepted():
    ledger = Ledger()
    assert ledger.accept(10, 2) is None
    assert ledger.received == 2


def test_batch_runs_skip_duplicates():
    batch = Batch(5, ["a", "b", "c", "d"], set(), [False, True, True, False])
    assert batch.runs() == [(6, ["b", "c"])]
    assert Batch(0, [1, 2], set(), None).runs() == [(0, [1, 2])]
    assert Batch(0, [1, 2, 3], set(), [True, False, True]).runs() == [(0, [1]), (2, [3])]

"""Pickling a run of results into batches that can travel: cut by bytes, too-big results failed.

A batch is one pickle of a list of values (a pickle per value cost more than most calls). The
runner pickles what it holds once; only a pickle over MAX_RESULT_BYTES is cut, in halves, so the
common batch costs one length check, and values that share objects keep sharing them in their
batch. A single result over the limit becomes that input's ResultTooBig. Pure: no I/O.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from burla.config import MAX_RESULT_BYTES
from burla.errors import ResultTooBig
from burla.exec.portable import dump_batch


@dataclass(slots=True)  # not frozen: one is made per batch sent, and frozen cost 1 us more
class Batch:
    """Results of inputs `first .. first+count-1`; `errors` the indexes that are exceptions."""

    first: int
    count: int
    errors: list[int]
    blob: bytes


def pack(values: list[Any], errors: list[int], first: int,
         limit: int | None = None) -> list[Batch]:
    """`values` (of inputs from `first`) as batches of at most `limit` pickled bytes each
    (MAX_RESULT_BYTES by default)."""
    limit = MAX_RESULT_BYTES if limit is None else limit
    blob = dump_batch(values, errors, first)
    if len(blob) <= limit:
        return [Batch(first, len(values), errors, blob)]
    if len(values) == 1:
        too_big = result_too_big(first, len(blob), limit)
        return [Batch(first, 1, [first], pickle.dumps([too_big], pickle.HIGHEST_PROTOCOL))]
    del blob  # before the halves are pickled: it may be most of the memory in use
    middle = len(values) // 2
    split = first + middle
    return (pack(values[:middle], [i for i in errors if i < split], first, limit)
            + pack(values[middle:], [i for i in errors if i >= split], split, limit))


def result_too_big(index: int, size: int, limit: int) -> ResultTooBig:
    return ResultTooBig(
        f"the result of input {index} pickles to {size:,} bytes ({size / 2**20:.1f} MiB), over "
        f"the limit of {limit:,} bytes ({limit / 2**20:.0f} MiB) for one result. Write large "
        f"results to a file or bucket and return its path instead.",
        index,
    )

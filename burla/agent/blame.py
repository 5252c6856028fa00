"""Which input an executor's death counts against. Pure decisions: no I/O, no clock.

Results travel in batches, so when an executor dies the agent knows only which inputs of its
chunk have reported, not which one was running. The first unreported input is surely the one
only when the chunk reports each input in step with the agent (`Chunk.report_each`, every retry
after a death), when a single input was left, or when the executor died before taking the chunk.
Otherwise the death is counted against no input and fails none: the retry finds the culprit.
"""

from __future__ import annotations

from dataclasses import dataclass

from burla import protocol
from burla.agent.failures import Verdict


@dataclass(frozen=True)
class Blame:
    index: int  # the first input of the chunk without a result
    certain: bool  # that input was surely the one running when the executor died


def blame(chunk: protocol.Chunk, reported: int, before_start: bool) -> Blame:
    """`reported`: inputs of `chunk` with a result; `before_start`: the executor died starting
    or loading the function, so the chunk's next input takes the blame (the crash limit then
    ends a start that always fails)."""
    index = chunk.first_index + reported
    certain = chunk.report_each or before_start or reported + 1 >= chunk.count
    return Blame(index, certain)


def settle(verdict: Verdict, certain: bool) -> Verdict:
    """The verdict for a death that may belong to another input than the one judged: it fails
    and counts against nothing. Fewer executors for a dynamic-RAM OOM still holds: that part is
    about the node's memory, whichever call used it."""
    if certain:
        return verdict
    return Verdict(None, crashed=False, lower_parallelism=verdict.lower_parallelism)

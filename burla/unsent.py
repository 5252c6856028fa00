"""What a daemon sends in place of a message it could not send, so its job hears of the loss.

A Results batch that cannot go on becomes an error for each of its inputs (`ResultTooBig` when
it was too big for the wire, `NodeDisconnected` otherwise); a Logs batch becomes a count of the
lines dropped. The daemons' channels call this; it never unpickles user data.
"""

from __future__ import annotations

import pickle

import msgpack

from burla import protocol
from burla.errors import BurlaError, NodeDisconnected, ResultTooBig


def replacement(msg: protocol.Message, reason: str, too_big: bool) -> protocol.Message | None:
    """A small message that tells `msg`'s job it was lost, or None if `msg` belongs to no job's
    data (a lost control message is recovered by heartbeats and reconnects instead)."""
    if isinstance(msg, protocol.Results):
        first, last = msg.first_index, msg.first_index + msg.count - 1
        text = f"the results of inputs {first}..{last} could not be sent on: {reason}."
        error: BurlaError = (
            ResultTooBig(f"{text} Write large results to a file or bucket and return its path "
                         f"instead.", first) if too_big else
            NodeDisconnected(f"{text} Retry the job.")
        )
        blob = pickle.dumps([error] * msg.count, protocol=pickle.HIGHEST_PROTOCOL)
        return protocol.Results(msg.job_id, msg.chunk_id, msg.attempt, first, msg.count,
                                list(range(first, last + 1)), msg.chunk_done, msg.seq,
                                msg.compute_ns, blob)
    if isinstance(msg, protocol.Logs):
        return protocol.Logs(msg.job_id, 0, msg.count + msg.dropped, msgpack.packb([]))
    return None

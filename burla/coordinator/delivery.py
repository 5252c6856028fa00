"""One job's stream of result batches to its client: window, acknowledgements, resend, replay.

Pure bookkeeping: it returns the messages to send and never touches a socket or the store
itself (replayed batches come from an iterator the scheduler hands in).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from burla import protocol

# Result bytes sent to a client but not yet acknowledged.
RESULT_WINDOW_BYTES = 32 * 1024 * 1024


def nbytes(msg: protocol.Results) -> int:
    return len(msg.data.buffer) if hasattr(msg.data, "buffer") else len(msg.data)


@dataclass
class ResultStream:
    job_id: str
    client: bytes  # b"" while no client is connected
    seq: int = 0
    unacked: deque[tuple[int, int, protocol.Results]] = field(default_factory=deque)
    unacked_bytes: int = 0
    backlog: deque[protocol.Results] = field(default_factory=deque)
    backlog_bytes: int = 0
    replay: Iterator[protocol.Results] | None = None

    @property
    def settled(self) -> bool:
        """Everything sent has been acknowledged and nothing waits."""
        return not self.unacked and not self.backlog and self.replay is None

    def deliver(self, msg: protocol.Results) -> list[tuple[bytes, protocol.Message]]:
        if not self.client:
            return []  # nobody to send to: a detached job's results wait in the store
        self.backlog.append(msg)
        self.backlog_bytes += nbytes(msg)
        return self.pump()

    def pump(self) -> list[tuple[bytes, protocol.Message]]:
        """Send held batches while the window allows, replayed ones first."""
        out: list[tuple[bytes, protocol.Message]] = []
        while self.client and self.unacked_bytes < RESULT_WINDOW_BYTES:
            if self.replay is not None:
                held = next(self.replay, None)
                if held is None:
                    self.replay = None
                    continue
            elif self.backlog:
                held = self.backlog.popleft()
                self.backlog_bytes -= nbytes(held)
            else:
                break
            out.append(self._send(held))
        return out

    def _send(self, msg: protocol.Results) -> tuple[bytes, protocol.Message]:
        self.seq += 1
        size = nbytes(msg)
        sent = protocol.Results(
            self.job_id, msg.chunk_id, 0, msg.first_index, msg.count, msg.errors,
            msg.chunk_done, self.seq, msg.compute_ns, msg.data)
        self.unacked.append((self.seq, size, sent))
        self.unacked_bytes += size
        return (self.client, sent)

    def ack(self, seq: int) -> list[tuple[bytes, protocol.Message]]:
        while self.unacked and self.unacked[0][0] <= seq:
            self.unacked_bytes -= self.unacked.popleft()[1]
        return self.pump()

    def reattach(
        self, client: bytes, replay: Iterator[protocol.Results] | None
    ) -> list[tuple[bytes, protocol.Message]]:
        """A (re)connected client: resend what it may have missed, from the start of its seq.

        With `replay` (a stored job), everything comes from the store; otherwise batches sent
        but never acknowledged go again. The client drops indexes it already holds.
        """
        resend = [msg for _, _, msg in self.unacked]
        self.unacked.clear()
        self.unacked_bytes = 0
        self.seq = 0
        self.client = client
        if replay is not None:
            self.backlog.clear()
            self.backlog_bytes = 0
            self.replay = replay
        else:
            self.backlog.extendleft(reversed(resend))
            self.backlog_bytes += sum(nbytes(m) for m in resend)
        return self.pump()

    def detach(self) -> None:
        """The client is gone; stop sending until one attaches again."""
        self.client = b""
        self.unacked.clear()
        self.unacked_bytes = 0
        self.backlog.clear()
        self.backlog_bytes = 0
        self.replay = None

"""The executor's one I/O thread: the agent socket, the captured output pipes, the runner's outbox.

The runner (main thread) runs user code and talks to this thread over an inproc pair. Before the
thread forwards anything the runner sends, it drains the output pipes and sends their lines, so
an input's log lines always reach the agent before its result. It never unpickles user data.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from burla import protocol, transport
from burla.exec.capture import Capture

# Longest a captured line waits before it is sent while a call is still running. A line left
# unterminated this long (a progress bar, `print(..., end="")`) is sent as it stands, at once:
# it shows within about 100 ms, as on a terminal, while a print's text and its newline, written
# microseconds apart, stay one line (unless the writer stalls this long between the two).
LOG_FLUSH_SECONDS = 0.05
# While the runner is in a chunk, `due` is raised this often: its partial result batch leaves.
RESULT_FLUSH_SECONDS = 0.005
# Most log bytes held in one Logs message.
LOG_BATCH_BYTES = 256 * 1024
# Entries held while the agent link is congested before lines are dropped (and counted).
MAX_PENDING_ENTRIES = 50_000
# How long a process calling os._exit waits for its last output to leave.
EXIT_FLUSH_SECONDS = 2.0


class AgentLink:
    """Starts the I/O thread; `send`/`recv` are for the runner thread only."""

    def __init__(self, endpoint: str, executor_id: str, capture: Capture) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.capture = capture
        self.job_id = ""
        self.dropped_lines = 0
        self._runner_side = self.ctx.socket(zmq.PAIR)
        self._thread_side = self.ctx.socket(zmq.PAIR)
        address = f"inproc://runner-{executor_id}"
        self._thread_side.bind(address)
        self._runner_side.connect(address)
        self._agent = transport.dealer_socket(self.ctx, endpoint, executor_id.encode())
        self._entries: list[list[object]] = []
        self._entries_since = 0.0
        self._stop = False
        self._exiting = False  # os._exit was called: send what was captured, then stop
        self._exit_flushed = threading.Event()
        # The runner sets `busy` for a chunk's length, and sends its batch once `due` is raised:
        # reading a flag per input costs less than reading the clock per input.
        self.busy = False
        self.due = False
        self._thread = threading.Thread(target=self._run, name="burla-link", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, msg: protocol.Message) -> None:
        self._runner_side.send_multipart(protocol.encode(msg), copy=False)

    def recv(self) -> protocol.Message:
        return protocol.decode(self._runner_side.recv_multipart(copy=False))

    def close(self) -> None:
        self._stop = True
        self._runner_side.send(b"")  # wakes the thread; an empty frame means "stop"
        self._thread.join(timeout=2)

    def flush_before_exit(self) -> None:
        """Send every line captured so far and wait until it left: the process is about to end
        without unwinding (os._exit, from any thread but this link's)."""
        if not self._thread.is_alive() or threading.current_thread() is self._thread:
            return
        self._exiting = True  # the thread looks at least every LOG_FLUSH_SECONDS
        self._exit_flushed.wait(EXIT_FLUSH_SECONDS)

    # --- the I/O thread ---------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._agent, zmq.POLLIN)
        poller.register(self._thread_side, zmq.POLLIN)
        for fd in self.capture.read_fds:
            poller.register(fd, zmq.POLLIN)
        due_at = time.monotonic()
        while not self._stop and not self._exiting:
            busy = self.busy
            timeout_ms = int((RESULT_FLUSH_SECONDS if busy else LOG_FLUSH_SECONDS) * 1000)
            ready = dict(poller.poll(timeout_ms))
            if busy:
                now = time.monotonic()
                if now - due_at >= RESULT_FLUSH_SECONDS:
                    self.due, due_at = True, now
            else:
                due_at = time.monotonic()
            if not ready:
                self.capture.flush_python()  # a long call's prints stream every timeout
            self._gather(self.capture.take_texts)
            for fd in self.capture.read_fds:
                if fd in ready:
                    self._gather(functools.partial(self.capture.read, fd))
            if self._agent in ready:
                self._forward_incoming()
            if self._thread_side in ready:
                self._forward_outgoing()
            now = time.monotonic()
            if self.capture.partial_due(now - LOG_FLUSH_SECONDS):
                # That line has waited long enough: it goes now, with all held ahead of it.
                self._gather(functools.partial(self.capture.take_partial,
                                               now - LOG_FLUSH_SECONDS))
                self._entries_since = 0.0
            if self._entries and now - self._entries_since >= LOG_FLUSH_SECONDS:
                self._flush_logs()
        if self._exiting:
            self.capture.flush_python()
        self._gather(self.capture.read_all)
        self._gather(functools.partial(self.capture.take_partial, float("inf")))
        self._flush_logs()
        # Exiting, the last lines must reach the agent before the process ends: closing with a
        # linger and terminating the context returns once they are on the wire.
        linger = int(EXIT_FLUSH_SECONDS * 1000) if self._exiting else 0
        for sock in (self._agent, self._thread_side, self._runner_side):
            sock.close(linger=linger)
        if self._exiting:
            self.ctx.term()
            self._exit_flushed.set()

    def _gather(self, read: Callable[[list[list[object]]], None]) -> None:
        """Run `read` to append captured entries; drop the oldest past MAX_PENDING_ENTRIES."""
        before = len(self._entries)
        read(self._entries)
        if before == 0 and self._entries:
            self._entries_since = time.monotonic()
        if len(self._entries) > MAX_PENDING_ENTRIES:
            excess = len(self._entries) - MAX_PENDING_ENTRIES
            del self._entries[:excess]
            self.dropped_lines += excess

    def _forward_incoming(self) -> None:
        while True:
            try:
                frames = self._agent.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._thread_side.send_multipart(frames, copy=False)

    def _forward_outgoing(self) -> None:
        while True:
            try:
                frames = self._thread_side.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) == 1 and not frames[0].bytes:
                self._stop = True
                return
            # Output printed before this message was sent belongs before it on the wire.
            self._gather(self.capture.read_all)
            self._flush_logs()
            self._agent.send_multipart(frames, copy=False)

    def _flush_logs(self) -> None:
        if not (self._entries or self.dropped_lines):
            return
        while self._entries or self.dropped_lines:
            batch, self._entries = _split_batch(self._entries)
            dropped, self.dropped_lines = self.dropped_lines, 0
            try:
                transport.send_sync(self._agent, protocol.Logs.pack(self.job_id, batch, dropped))
            except transport.TransportError:
                # The agent is not reading; losing lines beats blocking user code. Counted.
                self.dropped_lines += len(batch) + dropped
                return
        self.capture.shipped()  # what the journal kept for a crash has left


def _split_batch(entries: list[list[object]]) -> tuple[list[list[object]], list[list[object]]]:
    """The longest prefix of `entries` under LOG_BATCH_BYTES (at least one entry), and the rest.

    An entry longer than that on its own (one huge print) is first cut into pieces of that
    size, each with its index and stream, so that no message outgrows MAXMSGSIZE (ZeroMQ would
    drop it, and the call would hang); the text reads the same at the other end."""
    size = 0
    for position, entry in enumerate(entries):
        text = str(entry[2])
        if len(text) > LOG_BATCH_BYTES:
            pieces: list[list[object]] = [
                [entry[0], entry[1], text[start:start + LOG_BATCH_BYTES]]
                for start in range(0, len(text), LOG_BATCH_BYTES)
            ]
            if position:
                return entries[:position], pieces + entries[position + 1:]
            return pieces[:1], pieces[1:] + entries[1:]
        size += len(text)
        if size >= LOG_BATCH_BYTES:
            return entries[: position + 1], entries[position + 1 :]
    return entries, []

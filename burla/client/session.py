"""One job on the wire, run by a background thread: submit, upload, receive, acknowledge.

The caller's thread only reads `events` and calls `consumed`/`cancel`; everything that touches
the socket happens here, so uploading continues while the caller is busy with results. Log lines
are written to the caller's stdout/stderr from this thread, in the order they arrive, and always
before the result of the input that printed them.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from burla import __version__, protocol, transport
from burla.client.chunking import Chunker
from burla.client.results import decode_results, error_for
from burla.config import PEER_TIMEOUT_SECONDS, PING_INTERVAL_SECONDS, ClusterAddress
from burla.errors import ClusterUnreachable

# Uploads sent per loop turn before incoming results are read again.
UPLOADS_PER_TURN = 8
# Function pickles up to this size ride in the first Submit; bigger ones wait to be asked for.
INLINE_FUNCTION_BYTES = 256 * 1024
_POLL_MS = 100


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    function: bytes
    function_hash: str
    function_name: str
    func_cpu: int
    func_ram: int
    func_gpu: str | None
    image: str | None
    max_parallelism: int | None
    grow: bool
    detach: bool
    python_version: str


class JobSession:
    """Events put on `events`: ("accepted", slots), ("progress", running), ("total", n),
    ("results", [(index, ok, value), ...]), ("error", exception)."""

    def __init__(
        self,
        address: ClusterAddress,
        spec: JobSpec,
        chunker: Chunker,
        write_logs: Callable[[list[list[Any]]], None],
        connect_timeout: float,
    ) -> None:
        self.address = address
        self.spec = spec
        self.chunker = chunker
        self.write_logs = write_logs
        self.connect_timeout = connect_timeout
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._ctx: zmq.Context[Any] = zmq.Context.instance()
        self._wake_address = f"inproc://burla-wake-{uuid.uuid4().hex}"
        self._wake_rx = self._ctx.socket(zmq.PAIR)
        self._wake_rx.bind(self._wake_address)
        self._wake_tx = self._ctx.socket(zmq.PAIR)
        self._wake_tx.connect(self._wake_address)
        self._cancel_reason: str | None = None
        self._consumed_seq = 0
        self._thread = threading.Thread(target=self._run, name="burla-job", daemon=True)

    # --- the caller's side -----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def consumed(self, seq: int) -> None:
        """The caller holds every result batch up to `seq`; the window may move on."""
        self._consumed_seq = max(self._consumed_seq, seq)

    def cancel(self, reason: str) -> None:
        """Cancel the job on the cluster and stop; waits briefly for the Cancel to leave."""
        self._cancel_reason = reason
        try:
            self._wake_tx.send(b"", flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self._thread.join(timeout=2)

    def close(self) -> None:
        self._thread.join(timeout=2)
        self._wake_tx.close(linger=0)

    # --- the I/O thread --------------------------------------------------------------------

    def _run(self) -> None:
        identity = f"client-{uuid.uuid4().hex}".encode()
        sock = transport.dealer_socket(self._ctx, self.address.endpoint, identity)
        try:
            self._serve(sock)
        except Exception as exc:  # anything unexpected reaches the caller, never a hang
            self.events.put(("error", exc))
        finally:
            # A closing Ack or Cancel must leave before the socket goes; a dead peer must not
            # hold us, hence a bounded linger.
            sock.close(linger=1000)
            self._wake_rx.close(linger=0)

    def _serve(self, sock: zmq.Socket[Any]) -> None:
        spec = self.spec
        self._send(sock, protocol.Hello("client", protocol.PROTOCOL_VERSION, __version__,
                                        self.address.token, spec.job_id, {"pid": os.getpid()}))
        inline = spec.function if len(spec.function) <= INLINE_FUNCTION_BYTES else b""
        self._send(sock, self._submit(inline))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_rx, zmq.POLLIN)
        started = last_heard = time.monotonic()
        self.welcomed = self.accepted = self.sent_all = False
        self.window = self.acked_seq = self.received = self.last_seq = 0
        self.total: int | None = None
        while True:
            busy = self.accepted and not self.sent_all and self.window > 0
            ready = dict(poller.poll(0 if busy else _POLL_MS))
            now = time.monotonic()
            if self._wake_rx in ready:
                while self._wake_rx.poll(0):
                    self._wake_rx.recv()
            if self._cancel_reason is not None:
                self._send(sock, protocol.Cancel(spec.job_id, self._cancel_reason))
                return
            if sock in ready:
                last_heard = now
                while sock.poll(0):
                    _, msg = transport.recv_sync(sock)
                    if self._handle(sock, msg):
                        return
            if self.accepted and not self.sent_all:
                self._upload(sock)
            if self._consumed_seq > self.acked_seq:
                self.acked_seq = self._consumed_seq
                self._send(sock, protocol.Ack(spec.job_id, self.acked_seq))
            if self.total is not None and self.received >= self.total:
                self._send(sock, protocol.Ack(spec.job_id, self.last_seq))
                return
            if now - self._last_sent >= PING_INTERVAL_SECONDS:
                self._send(sock, protocol.Ping())
            limit = self.connect_timeout if not self.welcomed else PEER_TIMEOUT_SECONDS * 2
            silent = now - (last_heard if self.welcomed else started)
            if silent > limit:
                what = "did not answer" if not self.welcomed else "went silent"
                raise ClusterUnreachable(
                    f"the cluster at {self.address.endpoint} (chosen by {self.address.source}) "
                    f"{what} for {silent:.1f}s. Check that it runs (`burla status`), or set "
                    f"BURLA_CLUSTER / run `burla login` to use another."
                )

    def _submit(self, function: bytes) -> protocol.Submit:
        spec = self.spec
        return protocol.Submit(
            spec.job_id, spec.function_hash, spec.function_name, spec.func_cpu, spec.func_ram,
            spec.func_gpu, spec.image, spec.max_parallelism, spec.grow, spec.detach,
            self.chunker.total if self.chunker.total is not None else -1,
            spec.python_version, os.environ.get("BURLA_PARENT_JOB"), function,
        )

    def _send(self, sock: zmq.Socket[Any], msg: protocol.Message) -> None:
        self._last_sent = time.monotonic()
        transport.send_sync(sock, msg)

    def _handle(self, sock: zmq.Socket[Any], msg: protocol.Message) -> bool:
        """React to one message; True when the session is over."""
        if isinstance(msg, protocol.Results):
            items = decode_results(msg)
            self.received += len(items)
            self.last_seq = msg.seq
            self.events.put(("results", (msg.seq, items)))
        elif isinstance(msg, protocol.Logs):
            self.write_logs(msg.entries)
            if msg.dropped:
                self.write_logs([[-1, 2, f"[burla] {msg.dropped} output lines were dropped: "
                                           f"the output was faster than it could be sent\n"]])
        elif isinstance(msg, protocol.UploadCredit):
            self.window += msg.nbytes
        elif isinstance(msg, protocol.Progress):
            self.events.put(("progress", msg.running))
        elif isinstance(msg, protocol.Welcome):
            self.welcomed = True
        elif isinstance(msg, protocol.Accept):
            self.accepted = True
            self.window = msg.upload_window
            self.chunker.slots = max(1, msg.parallelism)
            self.events.put(("accepted", msg.parallelism))
        elif isinstance(msg, protocol.NeedFunction):
            self._send(sock, self._submit(self.spec.function))
        elif isinstance(msg, (protocol.Refuse, protocol.JobFailed)):
            self.events.put(("error", error_for(msg.kind, msg.message)))
            return True
        return False

    def _upload(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(UPLOADS_PER_TURN):
            if self.window <= 0:
                return
            chunk = self.chunker.next_chunk()
            if chunk is None:
                self.total = self.chunker.next_index
                self.sent_all = True
                self._send(sock, protocol.InputsDone(self.spec.job_id, self.total))
                self.events.put(("total", self.total))
                return
            first, count, blob = chunk
            self.window -= len(blob)
            self._send(sock, protocol.InputChunk(self.spec.job_id, first, count, blob))

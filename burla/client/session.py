"""One job on the wire, run by a background thread: submit, upload, receive, acknowledge.

The caller's thread only reads `events` and calls `consumed`/`cancel`; everything that touches
the socket happens here, so uploading continues while the caller is busy with results. Log lines
are written to the caller's stdout/stderr from this thread, in the order they arrive, and always
before the result of the input that printed them. A lost coordinator is reconnected to (and the
embedded one restarted) with bounded backoff; unfinished chunks are uploaded again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from burla import __version__, protocol, transport
from burla.client import local_cluster
from burla.client.chunking import Chunker
from burla.client.connections import CLOSE_LINGER_MS, CONNECTIONS, new_connection
from burla.client.ledger import Batch, Ledger
from burla.client.results import decode_results, error_for
from burla.client.waker import Waker
from burla.config import PEER_TIMEOUT_SECONDS, PING_INTERVAL_SECONDS, ClusterAddress
from burla.errors import ClusterUnreachable, JobCanceled

# Uploads sent per loop turn before incoming results are read again.
UPLOADS_PER_TURN = 8
# Function pickles up to this size ride in the first Submit; bigger ones wait to be asked for.
INLINE_FUNCTION_BYTES = 256 * 1024
# How long to keep trying to get a lost cluster back before ClusterUnreachable.
RECONNECT_SECONDS = float(os.environ.get("BURLA_RECONNECT_TIMEOUT", "60"))
# How often the embedded cluster's processes are checked (and restarted if dead).
EMBEDDED_CHECK_SECONDS = 2.0
_POLL_MS = 100
_HOLD_POLL_MS = 5  # while the chunker waits for the probe chunk's timing
# Input bytes sent right behind Submit, before Accept, to a cluster this process has used.
EARLY_WINDOW_BYTES = 1024 * 1024
# Results consumed are acknowledged once this many bytes came since the last Ack, or this long
# passed, and at the end: an Ack per batch was a third of a small job's messages. A quarter of
# the coordinator's 32 MB result window keeps its sending going.
ACK_BYTES = 8 * 1024 * 1024
ACK_SECONDS = 0.1
# A grow=True job's chunks are cut for at most this many slots (the coordinator's bound on
# what one job with an unknown input count asks growth for: demand.UNKNOWN_DEMAND_CALLS).
GROW_SIZING_SLOTS = 1000
# Parallelism each cluster last granted, so early chunks are sized for it.
_LAST_GRANT: dict[str, int] = {}
# Job threads are kept between calls: starting a thread costs more than a small job's round trip.
_IO_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=256,
                                                    thread_name_prefix="burla-job")


class _Reconnect(Exception):
    """The connection is gone; start a new one (carries why, for the error if that fails)."""


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
    """Events put on `events`: ("accepted", slots), ("progress", (running, growth status)),
    ("total", n), ("results", (generation, seq, Batch)), ("error", exception)."""

    def __init__(
        self,
        address: ClusterAddress,
        spec: JobSpec | None,
        chunker: Chunker | None,
        write_logs: Callable[[list[list[Any]]], None],
        connect_timeout: float,
        attach_job_id: str = "",
    ) -> None:
        self.address = address
        self.spec = spec
        self.job_id = spec.job_id if spec is not None else attach_job_id
        self.chunker = chunker
        self.write_logs = write_logs
        self.connect_timeout = connect_timeout
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.ledger = Ledger()
        self._ctx: zmq.Context[Any] = zmq.Context.instance()
        self._waker: Waker | None = None  # made by start(), closed by the job thread
        self._cancel_reason: str | None = None
        self._consumed_seq = 0
        self._running: concurrent.futures.Future[None] | None = None
        self.sent_all = chunker is None  # an attach uploads nothing
        self.total: int | None = None
        self.resend: deque[tuple[int, int, bytes]] = deque()
        self._last_sent = 0.0
        self._done_sent = False
        self.generation = 0
        self._ack_lock = threading.Lock()
        self._ended_cleanly = False  # every result in and acked: the connection is kept
        self._leaving = False
        self.stored = False
        self.reconnecting = False

    # --- the caller's side -----------------------------------------------------------------

    def start(self) -> None:
        self._waker = Waker()
        self._running = _IO_THREADS.submit(self._run)

    def _join(self, timeout: float) -> None:
        if self._running is not None:
            concurrent.futures.wait([self._running], timeout=timeout)

    def consumed(self, generation: int, seq: int) -> None:
        """The caller holds every result batch up to `seq`; the window may move on."""
        with self._ack_lock:
            if generation == self.generation:
                self._consumed_seq = max(self._consumed_seq, seq)

    def cancel(self, reason: str) -> None:
        """Cancel the job on the cluster and stop; waits briefly for the Cancel to leave."""
        self._cancel_reason = reason
        self._wake_and_join()

    @property
    def detached(self) -> bool:
        """True when the job runs on without this process (attached to, or detached and stored)."""
        return self.spec is None or (self.spec.detach and self.stored)

    def leave(self) -> None:
        """Stop following the job without cancelling it."""
        self._leaving = True
        self._wake_and_join()

    def _wake_and_join(self) -> None:
        if self._waker is not None:
            self._waker.wake()
        self._join(timeout=2)

    def close(self) -> None:
        self._join(timeout=2)

    # --- the I/O thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._connect_and_serve()
        except Exception as exc:  # anything unexpected reaches the caller, never a hang
            self.events.put(("error", exc))
        finally:
            assert self._waker is not None
            self._waker.close()

    def _connect_and_serve(self) -> None:
        lost_at = 0.0
        tried: list[str] = []
        first = True
        while True:
            endpoint = self.address.endpoint
            token = self.address.token
            if first:
                sock, welcomed = CONNECTIONS.take(self._ctx, endpoint, token)
            else:  # after a lost connection, a fresh one: a kept one may be what went wrong
                sock, welcomed = new_connection(self._ctx, endpoint), False
            self._ended_cleanly = False
            try:
                self._serve(sock, first, welcomed)
                return
            except _Reconnect as why:
                first = False
                now = time.monotonic()
                lost_at = lost_at or now
                tried.append(f"{self.address.endpoint}: {why}")
                if self.address.embedded:
                    self._end_if_stopped_on_purpose()
                if now - lost_at > RECONNECT_SECONDS:
                    raise ClusterUnreachable(
                        f"lost the cluster and could not get it back in {RECONNECT_SECONDS:.0f}s "
                        f"(BURLA_RECONNECT_TIMEOUT); tried: {'; '.join(tried[-5:])}"
                    ) from None
                time.sleep(min(2.0, 0.1 * 2 ** min(len(tried), 5)))
                if self.address.embedded:
                    self.address = local_cluster.ensure_running(lost=True)
            except Exception as exc:
                # An aborted job (an input too big, the inputs' iterator raised) frees its slots
                # now, not after the coordinator's client-silence timeout. A detached job whose
                # inputs are all stored runs on without us.
                if self.spec is not None and not self.detached:
                    with contextlib.suppress(transport.TransportError):  # the error says more
                        self._send(sock, protocol.Cancel(
                            self.job_id, f"the client stopped: {type(exc).__name__}"))
                raise
            finally:
                if self._ended_cleanly:
                    CONNECTIONS.give_back(endpoint, sock, token)
                else:
                    sock.close(linger=CLOSE_LINGER_MS)

    def _end_if_stopped_on_purpose(self) -> None:
        """Raise JobCanceled if the embedded cluster is gone because `burla local down` stopped
        it: that must not start it again and re-run the inputs (a crash does, and resumes)."""
        stopped = local_cluster.deliberate_stop(self.address)
        if stopped is None:
            return
        if self.detached:  # its inputs are stored: the job comes back with the cluster
            raise JobCanceled(f"{stopped}. Detached job {self.job_id} is kept in its store: "
                              f"`burla local up` resumes it, and burla.attach('{self.job_id}') "
                              f"collects its results.")
        raise JobCanceled(f"{stopped}, so this job's calls were stopped; run it again to "
                          f"finish it.")

    def _serve(self, sock: zmq.Socket[Any], first: bool, welcomed: bool) -> None:
        """Run the job on `sock`; `welcomed`: the coordinator knows this connection already (if
        it has forgotten it after all, it refuses the Submit and we reconnect)."""
        self.reconnecting = not first
        if not welcomed:
            self._send(sock, protocol.Hello("client", protocol.PROTOCOL_VERSION, __version__,
                                            self.address.token, self.job_id,
                                            {"pid": os.getpid()}))
        if self.spec is None:
            self._send(sock, protocol.Attach(self.job_id))
        else:
            inline = len(self.spec.function) <= INLINE_FUNCTION_BYTES or not first
            self._send(sock, self._submit(self.spec.function if inline else b""))
            self.resend.extend(self.ledger.unfinished())  # after a reconnect: send again
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        assert self._waker is not None
        poller.register(self._waker.read_fd, zmq.POLLIN)
        started = last_heard = checked = time.monotonic()
        self.welcomed, self.accepted = welcomed, False
        self.window = self.acked_seq = self.last_seq = self.unacked_bytes = 0
        self.acked_at = started
        # A known cluster gets the first inputs with the Submit: one round trip fewer.
        self.early = self.chunker is not None and self.address.endpoint in _LAST_GRANT
        if self.early and self.chunker is not None:
            self.window = EARLY_WINDOW_BYTES
            self.chunker.slots = _LAST_GRANT[self.address.endpoint]
        self.sent_early = 0
        self._done_sent = False
        with self._ack_lock:  # acks of batches from an earlier connection mean nothing here
            self.generation += 1
            self._consumed_seq = 0
        while True:
            uploading = self.accepted or self.early
            holding = self.chunker is not None and self.chunker.holding(time.monotonic())
            fresh = not self.sent_all and not holding
            busy = uploading and (self.resend or fresh) and self.window > 0
            ready = dict(poller.poll(0 if busy else _HOLD_POLL_MS if holding else _POLL_MS))
            now = time.monotonic()
            if self._waker.read_fd in ready:
                self._waker.drain()
            if self._leaving:
                return
            if self._cancel_reason is not None:
                self._send(sock, protocol.Cancel(self.job_id, self._cancel_reason))
                return
            if sock in ready:
                last_heard = now
                while sock.poll(0):
                    _, msg = transport.recv_sync(sock)
                    if self._handle(sock, msg):
                        return
            if uploading:
                self._upload(sock)
            if self._consumed_seq > self.acked_seq and self._consumed_seq <= self.last_seq and (
                    self.unacked_bytes >= ACK_BYTES or now - self.acked_at >= ACK_SECONDS):
                self.acked_seq, self.acked_at, self.unacked_bytes = self._consumed_seq, now, 0
                self._send(sock, protocol.Ack(self.job_id, self.acked_seq))
            if self.total is not None and self.ledger.received >= self.total:
                self._send(sock, protocol.Ack(self.job_id, self.last_seq))
                self._ended_cleanly = True
                return
            if now - self._last_sent >= PING_INTERVAL_SECONDS:
                self._send(sock, protocol.Ping())
            if self.address.embedded and now - checked > EMBEDDED_CHECK_SECONDS:
                checked = now
                if local_cluster.running_info() is None:
                    raise _Reconnect("the embedded cluster stopped")
            self._check_silence(now, started, last_heard, first)

    def _check_silence(self, now: float, started: float, last_heard: float, first: bool) -> None:
        if not self.welcomed:
            silent = now - started
            if silent > self.connect_timeout:
                if not first:
                    raise _Reconnect(f"no answer for {silent:.1f}s")
                raise ClusterUnreachable(
                    f"the cluster at {self.address.endpoint} (chosen by {self.address.source}) "
                    f"did not answer for {silent:.1f}s. Check that it runs (`burla status`), "
                    f"or set BURLA_CLUSTER to use another."
                )
        elif now - last_heard > PEER_TIMEOUT_SECONDS:
            raise _Reconnect(f"silent for {now - last_heard:.1f}s")

    def _submit(self, function: bytes) -> protocol.Submit:
        spec = self.spec
        assert spec is not None and self.chunker is not None
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
        job_id = getattr(msg, "job_id", "")
        if job_id and job_id != self.job_id:
            return False  # an earlier job's, on a kept connection
        if isinstance(msg, protocol.Results):
            self._results(msg)
        elif isinstance(msg, protocol.Logs):
            self.write_logs(msg.entries())
            if msg.dropped:
                self.write_logs([[-1, 2, f"[burla] {msg.dropped} output lines were dropped: "
                                           f"the output was faster than it could be sent\n"]])
        elif isinstance(msg, protocol.UploadCredit):
            self.window += msg.nbytes
        elif isinstance(msg, protocol.Progress):
            self.events.put(("progress", (msg.running, msg.status)))
        elif isinstance(msg, protocol.Welcome):
            self.welcomed = True
        elif isinstance(msg, protocol.Accept):
            self.accepted, self.early = True, False
            self.window = msg.upload_window - self.sent_early
            _LAST_GRANT[self.address.endpoint] = max(1, msg.parallelism)
            if self.chunker is not None:
                self.chunker.slots = self._sizing_slots(msg.parallelism)
            if msg.total >= 0:
                self._set_total(msg.total)
            self.events.put(("accepted", msg.parallelism))
        elif isinstance(msg, protocol.Stored):
            self._set_total(msg.total)
            first_time, self.stored = not self.stored, True
            if first_time and self.spec is not None and self.spec.detach:
                self.write_logs([[-1, 1, f"[burla] all {msg.total} inputs of job {self.job_id} "
                                         f"are stored on the cluster; it keeps running if this "
                                         f"process exits: collect the results later with "
                                         f"burla.attach('{self.job_id}')\n"]])
        elif isinstance(msg, protocol.NeedFunction):
            assert self.spec is not None
            self._send(sock, self._submit(self.spec.function))
            # Chunks (and InputsDone) sent early went to a job that did not exist yet: again.
            self.early, self.window, self.sent_early = False, 0, 0
            self.resend.extend(self.ledger.unfinished())
            self._done_sent = False
        elif isinstance(msg, protocol.Refuse) and msg.kind == "unknown_peer":
            raise _Reconnect("the coordinator no longer knew this connection")
        elif isinstance(msg, protocol.Refuse) and msg.kind == "no_nodes" and self.reconnecting:
            # A restarted coordinator may hear from us before its agents are back.
            raise _Reconnect("the cluster had no nodes yet")
        elif isinstance(msg, (protocol.Refuse, protocol.JobFailed)):
            self.events.put(("error", error_for(msg.kind, msg.message)))
            return True
        return False

    def _sizing_slots(self, granted: int) -> int:
        """The slots chunks are cut for: those granted, or for a grow=True job the calls it
        may run once its nodes are up. Its inputs are cut while they boot, and chunks cut for
        the slots it has at first would leave nothing for the nodes that join."""
        slots = max(1, granted)
        if self.spec is None or not self.spec.grow or self.chunker is None:
            return slots
        bounds = [GROW_SIZING_SLOTS, self.chunker.total or GROW_SIZING_SLOTS,
                  self.spec.max_parallelism or GROW_SIZING_SLOTS]
        return max(slots, min(bounds))

    def _results(self, msg: protocol.Results) -> None:
        fresh = self.ledger.accept(msg.first_index, msg.count)
        if self.chunker is not None:
            self.chunker.observe(msg.count, msg.compute_ns)
        values = decode_results(msg)
        self.last_seq = msg.seq
        self.unacked_bytes += len(msg.data)
        batch = Batch(msg.first_index, values, set(msg.errors), fresh)
        self.events.put(("results", (self.generation, msg.seq, batch)))

    def _set_total(self, total: int) -> None:
        if self.total is None:
            self.total = total
            self.events.put(("total", total))

    def _upload(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(UPLOADS_PER_TURN):
            piece = self._next_piece()
            if piece is None:
                break
            first, count, blob = piece
            self.window -= len(blob)
            if self.early:
                self.sent_early += len(blob)
            self._send(sock, protocol.InputChunk(self.job_id, first, count, blob))
        if self.sent_all and not self.resend and not self._done_sent and self.chunker:
            self._done_sent = True
            self._send(sock, protocol.InputsDone(self.job_id, self.chunker.next_index))

    def _next_piece(self) -> tuple[int, int, bytes] | None:
        """The next chunk to upload: unfinished ones again first, then fresh ones."""
        if self.window <= 0:
            return None
        if self.resend:
            return self.resend.popleft()
        if self.sent_all or self.chunker is None or self.chunker.holding(time.monotonic()):
            return None
        chunk = self.chunker.next_chunk()
        if chunk is None:
            self.sent_all = True
            self._set_total(self.chunker.next_index)
            return None
        self.ledger.uploaded(*chunk)
        return chunk

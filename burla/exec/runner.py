"""The executor's main thread: load a job's function, run input chunks, send results in batches.

Each result is pickled on its own so the coordinator can drop a duplicate index without
unpickling; results of one chunk go out in batches, flushed by size or age, so a slow call's
result leaves as soon as it is ready. This module runs user code and nothing else talks to it.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import cloudpickle
from tblib import pickling_support

from burla import protocol
from burla.errors import RemoteError
from burla.exec.capture import Capture
from burla.exec.link import AgentLink

# A partial result batch is sent once it is this old or this large.
RESULT_FLUSH_SECONDS = 0.005
RESULT_FLUSH_BYTES = 1024 * 1024
# Functions kept loaded, for executors reused across jobs.
FUNCTION_CACHE_SIZE = 8
_PR_SET_PDEATHSIG = 1


def dump_result(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def dump_exception(exc: BaseException) -> bytes:
    """The exception pickled with its traceback, or a RemoteError when it cannot travel."""
    try:
        blob = cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(blob)  # the client must be able to rebuild it, not just us to write it
        return blob
    except Exception:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        remote = RemoteError(type(exc).__qualname__, str(exc), text)
        return pickle.dumps(remote, protocol=pickle.HIGHEST_PROTOCOL)


class Runner:
    def __init__(self, link: AgentLink, capture: Capture) -> None:
        self.link = link
        self.capture = capture
        self.functions: OrderedDict[str, Callable[..., Any]] = OrderedDict()
        self.function: Callable[..., Any] | None = None
        self.job_id = ""

    def serve(self) -> None:
        while True:
            msg = self.link.recv()
            if isinstance(msg, protocol.Chunk):
                self.run_chunk(msg)
            elif isinstance(msg, protocol.Load):
                self.load(msg)
            elif isinstance(msg, protocol.Shutdown):
                return

    def load(self, msg: protocol.Load) -> None:
        function = self.functions.get(msg.function_hash)
        if function is None:
            function = cloudpickle.loads(msg.function)
            self.functions[msg.function_hash] = function
            while len(self.functions) > FUNCTION_CACHE_SIZE:
                self.functions.popitem(last=False)
        self.functions.move_to_end(msg.function_hash)
        self.function = function
        self.job_id = self.link.job_id = msg.job_id
        os.environ.update(msg.env)

    def run_chunk(self, chunk: protocol.Chunk) -> None:
        function = self.function
        assert function is not None and chunk.job_id == self.job_id, "chunk before its Load"
        inputs = pickle.loads(chunk.data)
        capture = self.capture
        first = chunk.first_index + chunk.skip
        parts: list[bytes] = []
        sizes: list[int] = []
        errors: list[int] = []
        batch_bytes = 0
        flushed_at = time.monotonic()
        for position in range(chunk.skip, chunk.count):
            index = chunk.first_index + position
            arg = inputs[position]
            capture.begin(index)
            try:
                value = function(*arg) if type(arg) is tuple else function(arg)
                blob = dump_result(value)
            except BaseException as exc:  # user code may raise anything, SystemExit included
                blob = dump_exception(exc.with_traceback(_user_frames(exc.__traceback__)))
                errors.append(index)
            capture.end(index)
            parts.append(blob)
            sizes.append(len(blob))
            batch_bytes += len(blob)
            now = time.monotonic()
            last = position == chunk.count - 1
            full = batch_bytes >= RESULT_FLUSH_BYTES
            if last or full or now - flushed_at >= RESULT_FLUSH_SECONDS:
                self.link.send(
                    protocol.Results(
                        chunk.job_id, chunk.chunk_id, chunk.attempt, first, len(sizes),
                        errors, sizes, last, 0, b"".join(parts),
                    )
                )
                first = index + 1
                parts, sizes, errors, batch_bytes, flushed_at = [], [], [], 0, now
        if chunk.skip >= chunk.count:  # a retry of a chunk whose every input already reported
            self.link.send(
                protocol.Results(
                    chunk.job_id, chunk.chunk_id, chunk.attempt, chunk.first_index + chunk.count,
                    0, [], [], True, 0, b"",
                )
            )


def _user_frames(tb: Any) -> Any:
    """Drop the runner's own frame so the traceback starts in user code."""
    return tb.tb_next if tb is not None and tb.tb_next is not None else tb


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when our parent (agent or zygote) dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def main(endpoint: str, executor_id: str) -> None:
    """Run an executor until the agent says Shutdown (or goes away)."""
    die_with_parent()
    if os.getppid() == 1:  # the parent died before we could ask to follow it
        sys.exit(0)
    pickling_support.install()
    capture = Capture()
    link = AgentLink(endpoint, executor_id, capture)
    link.start()
    link.send(protocol.Hello("executor", protocol.PROTOCOL_VERSION, "", "", executor_id,
                             {"pid": os.getpid()}))
    try:
        Runner(link, capture).serve()
    finally:
        link.close()

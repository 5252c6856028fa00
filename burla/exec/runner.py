"""The executor's main thread: load a job's function, run input chunks, send results in batches.

Results of one chunk go out in batches (`exec/batches.py`: one pickle of a list of values, cut
by bytes), flushed by count or age so a slow call's result leaves as soon as it is ready. The
retry of a chunk whose executor died reports each input alone, in step with the agent, so the
next crash is blamed on the input that was running. This module runs user code and nothing else
talks to it.
"""

from __future__ import annotations

import ctypes
import faulthandler
import inspect
import os
import pickle
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from itertools import islice
from typing import Any, NoReturn

import cloudpickle
from tblib import pickling_support

from burla import protocol
from burla.exec import leftovers
from burla.exec.batches import pack
from burla.exec.capture import Capture
from burla.exec.fingerprint import Fingerprint
from burla.exec.lastwords import Pipes
from burla.exec.link import AgentLink
from burla.exec.portable import portable_exception

# A partial result batch is sent once it holds this many results, or when the link thread says
# it is due (every link.RESULT_FLUSH_SECONDS while a chunk runs).
RESULT_FLUSH_COUNT = 32768
# Functions kept loaded, for executors reused across jobs: at most this many, holding at most
# this many pickled bytes (one bigger function is kept alone).
FUNCTION_CACHE_SIZE = 8
FUNCTION_CACHE_BYTES = 64 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


class Runner:
    def __init__(self, link: AgentLink, capture: Capture,
                 fingerprint: Fingerprint | None = None) -> None:
        self.link = link
        self.capture = capture
        self.functions: OrderedDict[str, Callable[..., Any]] = OrderedDict()
        self.function_bytes: dict[str, int] = {}  # pickled size, standing in for loaded size
        self.function: Callable[..., Any] | None = None
        self.job_id = ""
        # The state before any user code ran (None: no checks, for tests without an agent).
        self.fingerprint = fingerprint
        self.retired = False  # told the agent to replace us: run nothing more
        self.pid_limit = leftovers.PidLimit()

    def serve(self) -> None:
        while True:
            msg = self.link.recv()
            if isinstance(msg, protocol.Shutdown):
                return
            if self.retired:
                continue  # the agent takes back what it sent and kills us
            if isinstance(msg, protocol.Chunk):
                self.run_chunk(msg)
            elif isinstance(msg, protocol.Load):
                self.load(msg)
            elif isinstance(msg, protocol.Release) and msg.job_id == self.job_id:
                self.end_job()

    def end_job(self) -> None:
        """The job is over here: kill what it left running, and ask to be retired if it changed
        what the next job relies on. Once per job, when it ends, never per input or chunk."""
        self.job_id = ""
        if self.fingerprint is None:
            return
        _, all_gone = leftovers.kill_leftovers()
        reasons = self.fingerprint.changes()
        if not all_gone:
            reasons.append(f"left processes that SIGKILL did not end within "
                           f"{leftovers.KILL_TIMEOUT_S:g} s")
        if reasons:
            self.retired = True
            self.link.send(protocol.Retire("; ".join(reasons)))

    def load(self, msg: protocol.Load) -> None:
        if self.job_id and msg.job_id != self.job_id:  # the agent's Release did not come first
            self.end_job()
            if self.retired:
                return
        self.job_id = self.link.job_id = msg.job_id
        os.environ.update(msg.env)
        function = self.functions.get(msg.function_hash)
        if function is None:
            self.make_room(len(msg.function))
            try:
                function = cloudpickle.loads(msg.function)
            except Exception as exc:  # e.g. a module the function needs is not installed here
                # Every input fails with this error at once: no executor dies, none loops.
                exc.add_note("[burla] the function could not be loaded on the cluster")
                self.function = _raiser(portable_exception(exc))
                return
            self.functions[msg.function_hash] = function
            self.function_bytes[msg.function_hash] = len(msg.function)
        self.functions.move_to_end(msg.function_hash)
        self.function = function

    def make_room(self, size: int) -> None:
        """Drop the least recently used functions until one of `size` pickled bytes fits.

        Before unpickling, not after: the memory a big closure frees then holds the next one.
        """
        self.function = None  # its job is over: a Load comes only between chunks
        while self.functions and (
            len(self.functions) >= FUNCTION_CACHE_SIZE
            or sum(self.function_bytes.values()) + size > FUNCTION_CACHE_BYTES
        ):
            oldest, _ = self.functions.popitem(last=False)
            del self.function_bytes[oldest]

    def run_chunk(self, chunk: protocol.Chunk) -> None:
        function = self.function
        assert function is not None and chunk.job_id == self.job_id, "chunk before its Load"
        try:
            inputs = pickle.loads(chunk.data)
            if not isinstance(inputs, list) or len(inputs) != chunk.count:
                raise ValueError(f"a chunk of {chunk.count} inputs held {type(inputs).__name__}"
                                 f" of {len(inputs) if isinstance(inputs, list) else '?'}")
        except Exception as exc:  # e.g. an input's class lives in a module not installed here
            # Every input of the chunk fails with this error: the executor lives on.
            exc.add_note("[burla] the inputs could not be loaded on the cluster")
            inputs, function = [None] * chunk.count, _raiser(portable_exception(exc))
        capture = self.capture
        out_texts, err_texts = capture.texts
        monotonic = time.monotonic
        first = chunk.first_index + chunk.skip
        last = chunk.first_index + chunk.count - 1
        values: list[Any] = []
        append = values.append
        errors: list[int] = []
        # A batch leaves at `stop` (its last index) or once the link thread says it is due.
        link = self.link
        link.due, link.busy = False, True
        flushed_at = monotonic()
        per_batch = 1 if chunk.report_each else RESULT_FLUSH_COUNT
        stop = min(last, first + per_batch - 1)
        # The hot loop: every operation here is paid once per input.
        for index, arg in zip(range(first, last + 1), islice(inputs, chunk.skip, None)):
            capture.running_index = index
            try:
                append(function(*arg) if type(arg) is tuple else function(arg))
            except BaseException as exc:  # user code may raise anything, SystemExit included
                if type(arg) is tuple and isinstance(exc, TypeError):
                    _note_unpacking(exc, function, arg, index)
                exc = exc.with_traceback(_user_frames(exc.__traceback__))
                self.pid_limit.explain(exc)
                append(portable_exception(exc))
                errors.append(index)
            if out_texts or err_texts or capture.exact:  # output to close for this input
                capture.end(index)
            if index >= stop or link.due:
                now = monotonic()
                link.due = False
                compute_ns = int((now - flushed_at) * 1e9)  # the calls, not the pickling
                self.send_results(chunk, first, values, errors, index == last, compute_ns)
                if chunk.report_each and index != last:
                    self.await_noted(chunk.chunk_id)
                    now = monotonic()  # the wait is not compute time
                first, values, errors, flushed_at = index + 1, [], [], now
                append = values.append
                stop = min(last, first + per_batch - 1)
        link.busy = False
        if chunk.skip >= chunk.count:  # a retry of a chunk whose every input already reported
            self.link.send(protocol.Results(
                chunk.job_id, chunk.chunk_id, chunk.attempt, chunk.first_index + chunk.count,
                0, [], True, 0, 0, pickle.dumps([])))

    def send_results(self, chunk: protocol.Chunk, first: int, values: list[Any],
                     errors: list[int], chunk_done: bool, compute_ns: int) -> None:
        """Send the results of inputs from `first`, in as many batches as their size needs."""
        batches = pack(values, errors, first)
        for batch in batches:
            self.link.send(protocol.Results(
                chunk.job_id, chunk.chunk_id, chunk.attempt, batch.first, batch.count,
                batch.errors, chunk_done and batch is batches[-1], 0,
                compute_ns * batch.count // len(values), batch.blob))

    def await_noted(self, chunk_id: int) -> None:
        """Wait until the agent holds the results just sent (a `report_each` chunk)."""
        while True:
            msg = self.link.recv()
            if isinstance(msg, protocol.ResultsNoted) and msg.chunk_id == chunk_id:
                return
            if isinstance(msg, protocol.Shutdown):
                # Nothing else arrives mid-chunk; stop as serve would, with the chunk unfinished.
                raise SystemExit(0)


def _raiser(exc: BaseException) -> Callable[..., Any]:
    """A stand-in for a function that failed to load: each call raises why (with the same
    traceback each time: a raise adds a frame to the traceback it is given)."""
    tb = exc.__traceback__

    def function_failed_to_load(*args: Any, **kwargs: Any) -> Any:
        raise exc.with_traceback(tb)

    return function_failed_to_load


def _note_unpacking(exc: TypeError, function: Callable[..., Any], arg: tuple[Any, ...],
                    index: int) -> None:
    """Say that a tuple input was unpacked, when that is why the call failed: the TypeError
    came from binding the arguments (no frame of the function ran), and they do not bind."""
    if exc.__traceback__ is None or exc.__traceback__.tb_next is not None:
        return  # raised inside the function, not by the call
    try:
        inspect.signature(function).bind(*arg)
        return
    except TypeError:
        pass
    except ValueError:  # no signature to check against (some builtins)
        return
    name = getattr(function, "__name__", "function")
    exc.add_note(f"[burla] input {index} is a tuple, so burla called {name}(*input) with its "
                 f"{len(arg)} items as arguments. To pass each tuple whole, as one argument, "
                 f"wrap it in a 1-tuple: inputs=[(t,) for t in inputs]")


def _user_frames(tb: Any) -> Any:
    """Drop the runner's own frame so the traceback starts in user code."""
    return tb.tb_next if tb is not None and tb.tb_next is not None else tb


def flush_output_on_exit(link: AgentLink) -> None:
    """Make os._exit in user code send the output captured so far before the process ends
    (without this, lines printed right before it were lost with the process). A process the
    user's code forked keeps the plain os._exit: it has no link."""
    real_exit = os._exit
    executor_pid = os.getpid()

    def _exit(status: int) -> NoReturn:
        if os.getpid() == executor_pid:
            link.flush_before_exit()
        real_exit(status)

    os._exit = _exit


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when our parent (zygote, sandbox reaper or agent) dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def main(endpoint: str, executor_id: str, parent: int | None = None,
         crash_fd: int | None = None, pipes: Pipes | None = None) -> None:
    """Run an executor until the agent says Shutdown (or goes away).

    `parent` is the pid that must still be our parent once the death signal is armed (the
    zygote, or 1 inside a sandbox's pid namespace); None means the parent we started under.
    `crash_fd` is where the Python traceback of a fatal signal (a segfault) goes: a pipe the
    zygote reads once we are dead, so the user sees where the call crashed. `pipes` are the
    capture pipes and journal the zygote made, and reads after a crash (`lastwords`).
    """
    expected = os.getppid() if parent is None else parent
    die_with_parent()
    if os.getppid() != expected:  # the parent died before we could ask to follow it
        sys.exit(0)
    if crash_fd is not None:
        faulthandler.enable(file=crash_fd, all_threads=False)  # the crashing thread: small
    pickling_support.install()
    leftovers.become_subreaper()  # a daemon a call starts stays ours, to be killed at job end
    capture = Capture(pipes)
    link = AgentLink(endpoint, executor_id, capture)
    link.start()
    flush_output_on_exit(link)
    fingerprint = Fingerprint()  # last: what user code finds, and must leave
    link.send(protocol.Hello("executor", protocol.PROTOCOL_VERSION, "", "", executor_id,
                             {"pid": os.getpid()}))
    try:
        Runner(link, capture, fingerprint).serve()
    finally:
        link.close()

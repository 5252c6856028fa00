"""`remote_parallel_map`: check the arguments, ship the function, gather results for the caller.

A cold first call starts the embedded cluster before it imports what only a running job needs
(cloudpickle, ZeroMQ, the session): those imports then overlap the cluster's start. So this
module imports them inside the functions that use them, after `local_cluster.start_soon`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import platform
import queue
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from burla.client import local_cluster
from burla.client.chunking import Chunker
from burla.config import GPU_ALIASES, MAX_FUNCTION_BYTES, ClusterAddress, configured_cluster
from burla.errors import BurlaError, FunctionTooBig, JobCanceled
from burla.job_ids import job_id_problem

if TYPE_CHECKING:
    from burla.client.session import JobSession, JobSpec
    from burla.client.spinner import Display

# Seconds to wait for a first answer from the cluster before ClusterUnreachable.
CONNECT_TIMEOUT_SECONDS = float(os.environ.get("BURLA_CONNECT_TIMEOUT", "20"))
_EVENT_WAIT_SECONDS = 0.1
# A pickle at least this big is hashed by a second thread while its pieces are joined: the two
# passes over the bytes overlap (both release the GIL). Smaller ones are not worth a thread.
CONCURRENT_HASH_BYTES = 1024 * 1024


def remote_parallel_map(
    function_: Callable[..., Any],
    inputs: Iterable[Any],
    func_cpu: int = 1,
    func_ram: int | str = "dynamic",
    func_gpu: str | None = None,
    image: str | None = None,
    grow: bool = False,
    max_parallelism: int | None = None,
    detach: bool = False,
    generator: bool = False,
    spinner: bool = True,
    api_key: str | None = None,
    background: bool | None = None,
) -> list[Any] | Generator[Any, None, None]:
    """Call `function_` on every input at once across the cluster.

    Returns the results in input order, or with `generator=True` a generator yielding them as
    they finish. A tuple input is unpacked into positional arguments. Output printed remotely
    streams to this process; an exception raised remotely is raised here, with remote frames.
    `background=` is the older name of `detach=`.
    """
    if background is not None:
        detach = bool(background)
    ram_gb = _check_arguments(function_, func_cpu, func_ram, func_gpu, image, max_parallelism)
    _check_inputs(inputs)
    chunker = Chunker(inputs)
    if chunker.done():  # empty inputs: nothing to run, no cluster touched
        return _empty() if generator else []
    address = _cluster_soon(api_key)
    try:
        spec = _job_spec(function_, func_cpu, ram_gb, func_gpu, image, max_parallelism, grow,
                         detach)
        from burla.client.session import JobSession
        from burla.client.spinner import Display
    finally:
        cluster = address()
    chunker.remember_speed_of(spec.function_hash)
    display = Display(spinner, spec.function_name)
    session = JobSession(cluster, spec, chunker, display.write_logs, CONNECT_TIMEOUT_SECONDS)
    if generator:
        return _stream(session, display)
    try:
        return _collect(session, display)
    except BaseException as exc:
        _on_the_way_out(exc)
        raise  # a bare raise adds no frame: the traceback goes on from the caller's line


def attach(
    job_id: str, generator: bool = False, spinner: bool = True, api_key: str | None = None
) -> list[Any] | Generator[Any, None, None]:
    """Collect a detached job: wait for it if still running, then return what
    `remote_parallel_map` would have (the list in input order, or a generator), exceptions
    included. Ctrl-C stops waiting and leaves the job running.
    """
    problem = job_id_problem(job_id)
    if problem is not None:  # before any cluster is started or asked
        raise ValueError(f"job_id {problem}")
    from burla.client.session import JobSession
    from burla.client.spinner import Display

    address = configured_cluster(api_key) or local_cluster.ensure_running()
    display = Display(spinner, f"job {job_id}")
    session = JobSession(address, None, None, display.write_logs, CONNECT_TIMEOUT_SECONDS,
                         attach_job_id=job_id)
    if generator:
        return _stream(session, display)
    try:
        return _collect(session, display)
    except BaseException as exc:
        _on_the_way_out(exc)
        raise


def _cluster_soon(api_key: str | None) -> Callable[[], ClusterAddress]:
    """The cluster to use, as a function that gives its address: the configured one at once,
    or the embedded one, whose start (if it must start) goes on while the caller continues."""
    configured = configured_cluster(api_key)
    if configured is not None:
        return lambda: configured
    return local_cluster.start_soon()


def _empty() -> Generator[Any, None, None]:
    yield from ()


def _check_arguments(
    function_: Any, func_cpu: Any, func_ram: Any, func_gpu: Any, image: Any,
    max_parallelism: Any,
) -> int:
    """Raise ValueError/TypeError naming the bad argument; return func_ram in GB (0 = dynamic)."""
    if not callable(function_):
        raise TypeError(f"function_ must be callable, got {type(function_).__name__}: "
                        f"{function_!r:.80}")
    if not isinstance(func_cpu, int) or isinstance(func_cpu, bool) or func_cpu < 1:
        raise ValueError(f"func_cpu must be a whole number of CPUs >= 1, got {func_cpu!r}")
    if func_ram != "dynamic" and (
        not isinstance(func_ram, int) or isinstance(func_ram, bool) or func_ram < 1
    ):
        raise ValueError(f"func_ram must be a whole number of GB >= 1 or 'dynamic', "
                         f"got {func_ram!r}")
    if func_gpu is not None and func_gpu not in GPU_ALIASES:
        raise ValueError(f"func_gpu={func_gpu!r} is not a GPU type burla knows; use one of "
                         f"{', '.join(repr(g) for g in GPU_ALIASES)}, or None")
    if image is not None and (not isinstance(image, str) or not image):
        raise ValueError(f"image must be a non-empty container image name, got {image!r}")
    if max_parallelism is not None and (
        not isinstance(max_parallelism, int) or isinstance(max_parallelism, bool)
        or max_parallelism < 1
    ):
        raise ValueError(f"max_parallelism must be a whole number >= 1 or None, "
                         f"got {max_parallelism!r}")
    return 0 if func_ram == "dynamic" else int(func_ram)


def _check_inputs(inputs: Any) -> None:
    """Raise TypeError for inputs that are not an iterable, or are text or bytes (an iterable
    that is surely a mistake: one call per character or byte)."""
    if isinstance(inputs, str | bytes | bytearray):
        kind = type(inputs).__name__
        items = "character" if isinstance(inputs, str) else "byte (as an int)"
        raise TypeError(
            f"inputs is a {kind} ({inputs!r:.60}): burla would call the function once per "
            f"{items}. To call it once with the whole {kind}, pass [text]; to call it on "
            f"each {items.split()[0]}, pass list(text)."
        )
    try:
        iter(inputs)
    except TypeError:
        raise TypeError(
            f"inputs must be an iterable of the inputs to call the function on (a list, "
            f"tuple, range or generator), got {type(inputs).__name__}: {inputs!r:.80}. To "
            f"call it once with one value, pass [value]."
        ) from None


def _job_spec(
    function_: Callable[..., Any], func_cpu: int, ram_gb: int, func_gpu: str | None,
    image: str | None, max_parallelism: int | None, grow: bool, detach: bool,
) -> JobSpec:
    from burla.client.session import JobSpec

    name = getattr(function_, "__qualname__", None) or repr(function_)
    blob, function_hash = _pickle_function(function_, name)
    return JobSpec(
        job_id=uuid.uuid4().hex, function=blob, function_hash=function_hash, function_name=name,
        func_cpu=func_cpu, func_ram=ram_gb, func_gpu=GPU_ALIASES.get(func_gpu or "", None),
        image=image, max_parallelism=max_parallelism, grow=grow, detach=detach,
        python_version=".".join(platform.python_version_tuple()[:2]),
    )


def _pickle_function(function_: Callable[..., Any], name: str) -> tuple[bytes, str]:
    """The function's pickle and its content hash, the cluster's cache key for it."""
    import cloudpickle

    from burla import pickling

    module = sys.modules.get(getattr(function_, "__module__", "") or "")
    by_value = module is not None and _is_user_module(module)
    if by_value:  # the cluster may not have the user's own modules installed: ship the code
        cloudpickle.register_pickle_by_value(module)
    pieces = _Pieces()
    try:
        pickling.Pickler(pieces, protocol=pickle.HIGHEST_PROTOCOL).dump(function_)
    except Exception as exc:
        raise TypeError(f"function {name} cannot be pickled to send it to the cluster: "
                        f"{exc}") from exc
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)
    if pieces.size > MAX_FUNCTION_BYTES:
        raise FunctionTooBig(
            f"function {name} pickles to {pieces.size / 2**20:.0f} MB, over the "
            f"{MAX_FUNCTION_BYTES // 2**20} MB limit. It likely closes over large data: load "
            f"that data inside the function instead (from a file or bucket)."
        )
    return pieces.join_and_hash()


class _Pieces:
    """A pickler's output kept as the objects it wrote. A big bytes value the function closes
    over arrives as itself, not copied into a growing buffer, so joining the pieces is the only
    copy, and hashing can read them at the same time."""

    def __init__(self) -> None:
        self.pieces: list[Any] = []
        self.size = 0

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.pieces.append(data)
        self.size += size
        return size

    def join_and_hash(self) -> tuple[bytes, str]:
        # SHA-256: collision-safe, as a cache key must be, and twice blake2b's speed where the
        # CPU has SHA instructions.
        digest = hashlib.sha256()
        if self.size < CONCURRENT_HASH_BYTES:
            blob = b"".join(self.pieces)
            digest.update(blob)
            return blob, digest.hexdigest()
        hasher = threading.Thread(target=_hash_pieces, args=(digest, self.pieces),
                                  name="burla-hash")
        hasher.start()
        try:
            blob = b"".join(self.pieces)
        finally:
            hasher.join()
        return blob, digest.hexdigest()


def _hash_pieces(digest: Any, pieces: list[Any]) -> None:
    for piece in pieces:
        digest.update(piece)


def _is_user_module(module: Any) -> bool:
    """True for the user's own code (scripts, project modules), not installed packages."""
    name = module.__name__
    if name == "__main__" or name.split(".")[0] == "burla":
        return False  # __main__ is pickled by value already; burla is on every node
    path = getattr(module, "__file__", None) or ""
    return bool(path) and "site-packages" not in path and "dist-packages" not in path \
        and not path.startswith(sys.base_prefix)


def _batches(
    session: JobSession, display: Display
) -> Generator[tuple[int, list[Any]], None, None]:
    """(first index, values) for each run of new results as they arrive; raises the first
    remote exception, and turns Ctrl-C into a cancel of the job."""
    received = 0
    total: int | None = None
    session.start()
    try:
        while total is None or received < total:
            try:
                kind, payload = session.events.get(timeout=_EVENT_WAIT_SECONDS)
            except queue.Empty:  # keep the spinner fresh and wait on
                display.update()
                continue
            if kind == "results":
                generation, seq, batch = payload
                for first, values in batch.runs():
                    failed = [i for i in batch.errors if first <= i < first + len(values)]
                    if failed:
                        index = min(failed)
                        error = values[index - first]
                        session.cancel(f"input {index} raised {type(error).__name__}")
                        raise _with_remote_traceback(error, index)
                    received += len(values)
                    yield first, values
                session.consumed(generation, seq)
                display.update(done=received)
            elif kind == "total":
                total = payload
                display.update(total=total)
            elif kind == "accepted":
                display.update(running=payload)
            elif kind == "progress":
                running, status = payload
                display.update(running=running, status=status)
            elif kind == "error":
                raise payload
    except KeyboardInterrupt:
        if session.detached:
            session.leave()
            print(f"[burla] stopped waiting; job {session.job_id} keeps running: collect the "
                  f"results later with burla.attach('{session.job_id}')", file=sys.stderr)
            raise
        session.cancel("Ctrl-C in the client")
        raise JobCanceled("the job was cancelled by Ctrl-C; its calls were stopped on the "
                          "cluster") from None
    except GeneratorExit:
        session.cancel("the caller stopped reading results")
        raise
    finally:
        session.close()


def _with_remote_traceback(exc: BaseException, index: int) -> BaseException:
    from burla.client.results import mark_remote

    mark_remote(exc, index)
    if isinstance(exc, SystemExit) and exc.code is None and exc.args:
        # tblib rebuilds a SystemExit without its __init__, which sets `code` from its args:
        # without this, sys.exit(3) on the cluster would end the caller with 0.
        code: Any = exc.args[0] if len(exc.args) == 1 else exc.args  # as SystemExit's own
        exc.code = code
    return exc


_BURLA_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _on_the_way_out(exc: BaseException) -> None:
    """Ready an exception to leave burla for the caller (the status line is gone by now)."""
    _cut_burla_frames(exc)
    _say_where_it_exited(exc)


def _say_where_it_exited(exc: BaseException) -> None:
    """A remote sys.exit ends the caller as it would locally, with its code, but Python prints
    nothing for a SystemExit: say which input raised it, and where, on stderr."""
    if not isinstance(exc, SystemExit) or not hasattr(exc, "burla_input_index"):
        return
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    remote = [f for f in frames if not f.filename.startswith(_BURLA_DIR)] or frames
    if remote:
        last = remote[-1]
        where = f' in {last.name}, file "{last.filename}", line {last.lineno}'
    print(f"[burla] failed on input index {exc.burla_input_index}: the call raised "
          f"SystemExit({exc.code!r}){where}, so this process exits too", file=sys.stderr)


def _cut_burla_frames(exc: BaseException) -> None:
    """Drop the frames of burla's own code that a remote exception picked up on its way out
    (this module's loops), so its traceback reads like a local call's: the caller's frames,
    then the function's. Only for remote exceptions: burla's own errors keep their frames."""
    if not hasattr(exc, "burla_input_index"):
        return
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_BURLA_DIR):
        tb = tb.tb_next
    exc.__traceback__ = tb


def _collect(session: JobSession, display: Display) -> list[Any]:
    results: list[Any] = []
    with display:
        for first, values in _batches(session, display):
            if first == len(results):  # the usual case: results arrive in order
                results.extend(values)
                continue
            end = first + len(values)
            if end > len(results):
                results.extend([None] * (end - len(results)))
            results[first:end] = values
    return results


def _stream(session: JobSession, display: Display) -> Generator[Any, None, None]:
    try:
        with display:
            for _first, values in _batches(session, display):
                yield from values
    except BaseException as exc:
        _on_the_way_out(exc)
        raise


__all__ = ["remote_parallel_map", "attach", "BurlaError"]

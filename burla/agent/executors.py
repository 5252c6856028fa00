"""The agent's executors: fork them from the zygote into their cgroup (and sandbox), track
their state, notice when they exit and clean up after them.

An executor is owned by one job at a time and stays warm afterwards for the next job with the
same owner and resource shape. This module never talks to the coordinator and decides nothing
about which job runs where.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from burla import protocol
from burla.agent.cgroups import Cgroup, CgroupError
from burla.agent.forkserver import ForkServer
from burla.agent.gpus import Gpu
from burla.agent.limits import DYNAMIC_GROUP, LimitPolicy, Shape
from burla.exec.zygote import SETUP_FAILED_EXIT

log = structlog.get_logger("burla.agent")

DEFAULT_SHAPE: Shape = (1, 0, None)
# How long shutdown waits for killed executors to be reported gone.
SHUTDOWN_TIMEOUT_S = 5.0
# Job id of an executor being killed: no job claims it, and its exit is nobody's crash.
DYING = "-dying-"


@dataclass
class Executor:
    executor_id: str
    shape: Shape
    cgroup: Cgroup
    gpu: Gpu | None = None
    owner: str = ""  # "" until it has run someone's code
    pid: int = 0  # 0 until the zygote forked it
    pidfd: int = -1
    ready: bool = False  # sent its Hello
    job_id: str = ""  # the job it serves now, "" when idle-warm
    loaded_hash: str = ""  # the function it holds loaded
    loaded_job: str = ""  # the job whose Load it had last (sent right before its first chunk)
    proven: bool = False  # has sent a result since its last Load: the function loads there
    chunk: protocol.Chunk | None = None  # the chunk it is running
    reported: int = 0  # inputs of `chunk` whose results reached us
    exit_status: int | None = None  # exit code, or -signal; None when unknown
    exit_cause: str = ""  # why it ended when no exit status says it
    oom_killed: bool = False
    crash_report: str = ""  # faulthandler's traceback, when a fatal signal ended it
    # Output it captured and had not sent when it died ([index, stream, text], index -1: the
    # input it died in), and how many lines of it were lost; read by the zygote.
    last_words: list[list[object]] = field(default_factory=list)
    last_words_lost: int = 0
    killed: bool = False  # the agent killed it
    requested_at: float = field(default_factory=time.monotonic)

    def busy(self) -> bool:
        return self.chunk is not None


@dataclass
class ExecutorPool:
    """Starts executors and calls `on_exit(executor)` from the event loop when one is gone."""

    endpoint: str
    on_exit: Callable[[Executor], None]
    policy: LimitPolicy
    executors: dict[str, Executor] = field(default_factory=dict)
    free_gpus: list[Gpu] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _dynamic: Cgroup | None = None
    _stopping: bool = False
    _emptied: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        roots = [str(root) for root in self.policy.backend.roots()]
        self.forkserver = ForkServer(self._forked, self._exited, self._fork_failed,
                                     self._zygote_lost, roots)
        self.free_gpus = list(self.policy.gpus)

    def start(self) -> None:
        """Clear what a previous run left, make the dynamic-RAM group, start the zygote."""
        backend = self.policy.backend
        stale = backend.cleanup_stale()
        if stale:
            log.warning("stale_cgroups_removed", count=stale, backend=backend.name)
        self._dynamic = backend.create_group(DYNAMIC_GROUP, self.policy.memory_budget_bytes)
        self.forkserver.start()

    def spawn(self, shape: Shape, owner: str = "") -> Executor:
        executor_id = f"x{os.getpid()}-{next(self._ids)}"
        gpu = self._take_gpu(shape[2]) if shape[2] else None
        limits, parent = self.policy.limits(shape, gpu)
        cgroup = self.policy.backend.create(executor_id, limits, parent)
        executor = Executor(executor_id, shape, cgroup, gpu, owner)
        self.executors[executor_id] = executor
        self._emptied.clear()
        self.forkserver.fork(executor_id, self.endpoint, self.policy.env(gpu),
                             self.policy.sandbox_fields(gpu))
        return executor

    def _take_gpu(self, gpu_type: str) -> Gpu | None:
        """A free GPU of the type, else one an idle executor holds (that executor is killed)."""
        for position, gpu in enumerate(self.free_gpus):
            if gpu.type == gpu_type:
                return self.free_gpus.pop(position)
        for executor in self.executors.values():
            if not executor.job_id and executor.gpu and executor.gpu.type == gpu_type:
                gpu, executor.gpu = executor.gpu, None
                self.kill(executor)
                return gpu
        log.error("no_free_gpu", gpu_type=gpu_type, gpus=len(self.policy.gpus))
        return None

    def kill(self, executor: Executor) -> None:
        """SIGKILL the executor; `on_exit` follows when the zygote reports its end."""
        executor.killed = True
        executor.job_id = DYING
        if executor.pidfd >= 0:
            try:
                signal.pidfd_send_signal(executor.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # else: not forked yet; _forked tells the child to quit instead of going

    def idle(self, shape: Shape, owner: str) -> list[Executor]:
        """Warm executors that may serve a job of `owner` with `shape`."""
        return [
            e for e in self.executors.values()
            if not e.job_id and e.shape == shape and e.owner in ("", owner)
        ]

    # --- from the zygote --------------------------------------------------------------------

    def _forked(self, executor_id: str, pid: int) -> None:
        executor = self.executors.get(executor_id)
        if executor is None:
            self.forkserver.go(executor_id, False)
            return
        executor.pid = pid
        try:
            executor.pidfd = os.pidfd_open(pid)  # alive: it waits for our go
            executor.cgroup.add_process(pid)
        except (OSError, CgroupError) as e:
            log.error("executor_placement_failed", executor=executor_id, error=str(e))
            executor.exit_cause = f"could not be placed in its cgroup ({e})"
            executor.killed = True
        self.forkserver.go(executor_id, not executor.killed)

    def _exited(self, executor_id: str, status: int, crash_report: str,
                last_words: list[list[object]], lost: int) -> None:
        executor = self.executors.get(executor_id)
        if executor is None:
            return
        executor.exit_status = os.waitstatus_to_exitcode(status)
        executor.crash_report = crash_report
        executor.last_words, executor.last_words_lost = last_words, lost
        if executor.exit_status == -signal.SIGKILL and not executor.killed:
            try:
                executor.oom_killed = executor.cgroup.oom_kills() > 0
            except CgroupError as e:
                log.warning("oom_count_unreadable", executor=executor_id, error=str(e))
        self._finish(executor)

    def _fork_failed(self, executor_id: str, error: str) -> None:
        executor = self.executors.get(executor_id)
        if executor is not None:
            executor.exit_cause = f"could not be forked ({error})"
            self._finish(executor)

    def _zygote_lost(self) -> None:
        """Its children died with it (death signal): end them all, then start a new zygote."""
        for executor in list(self.executors.values()):
            executor.exit_cause = "lost its zygote"
            self._finish(executor)
        if not self._stopping:
            self.forkserver.start()

    def _finish(self, executor: Executor) -> None:
        """Everything the executor had goes: processes, cgroup, pidfd, GPU; then on_exit."""
        self.executors.pop(executor.executor_id, None)
        try:
            executor.cgroup.remove()
        except CgroupError as e:
            log.error("executor_cgroup_left", executor=executor.executor_id, error=str(e))
        if executor.pidfd >= 0:
            os.close(executor.pidfd)
            executor.pidfd = -1
        if executor.gpu is not None:
            self.free_gpus.append(executor.gpu)
        log.info("executor_exited", executor=executor.executor_id, pid=executor.pid,
                 cause=describe_exit(executor), job=executor.job_id or None,
                 busy=executor.busy(), oom=executor.oom_killed or None)
        if not self.executors:
            self._emptied.set()
        if not self._stopping:
            self.on_exit(executor)

    # --- shutdown ---------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Kill every executor, wait for them to be reaped, stop the zygote, remove cgroups."""
        self._stopping = True
        for executor in list(self.executors.values()):
            self.kill(executor)
        if self.executors:
            try:
                await asyncio.wait_for(self._emptied.wait(), SHUTDOWN_TIMEOUT_S)
            except TimeoutError:
                log.warning("executors_not_reaped", left=sorted(self.executors))
        await self.forkserver.stop()
        for executor in list(self.executors.values()):
            self._finish(executor)
        backend = self.policy.backend
        try:
            backend.cleanup_stale()  # the dynamic group, and anything a crash left
            backend.remove_root()
        except CgroupError as e:
            log.error("agent_cgroups_left", error=str(e))


def describe_exit(executor: Executor) -> str:
    """What ended the executor, in words for a NodeDisconnected message."""
    if executor.exit_cause:
        return executor.exit_cause
    status = executor.exit_status
    if status == SETUP_FAILED_EXIT and not executor.ready:
        return (f"could not start (exit code {status}: its sandbox or start-up failed; the "
                f"agent's log names the step)")
    if status is None:
        return "exited"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = str(-status)
        suffix = " (out of memory)" if executor.oom_killed else ""
        return f"was killed by signal {name}{suffix}"
    return f"exited with code {status}"

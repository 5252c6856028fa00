"""The agent's executor processes: start them, track their state, notice when they exit.

An executor is owned by one job at a time and stays warm afterwards for the next job with the
same owner and resource shape. This module never talks to the coordinator.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from burla import protocol

log = structlog.get_logger("burla.agent")

# Shape of a call slot: (func_cpu, func_ram, func_gpu); executors are reused only within one.
Shape = tuple[int, int, "str | None"]
DEFAULT_SHAPE: Shape = (1, 0, None)


@dataclass
class Executor:
    executor_id: str
    process: subprocess.Popen[bytes]
    shape: Shape
    owner: str = ""  # "" until it has run someone's code
    ready: bool = False  # sent its Hello
    job_id: str = ""  # the job it serves now, "" when idle-warm
    loaded_hash: str = ""
    chunk: protocol.Chunk | None = None  # the chunk it is running
    reported: int = 0  # inputs of `chunk` whose results reached us
    pidfd: int = -1
    exit_status: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def busy(self) -> bool:
        return self.chunk is not None


@dataclass
class ExecutorPool:
    """Starts executors and calls `on_exit(executor)` from the event loop when one dies."""

    endpoint: str
    on_exit: Callable[[Executor], None]
    executors: dict[str, Executor] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def spawn(self, shape: Shape, owner: str = "") -> Executor:
        executor_id = f"x{os.getpid()}-{next(self._ids)}"
        process = subprocess.Popen(
            [sys.executable, "-m", "burla.exec", "--endpoint", self.endpoint,
             "--id", executor_id],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C at the agent's terminal is not the calls' business
        )
        executor = Executor(executor_id, process, shape, owner)
        executor.pidfd = os.pidfd_open(process.pid)
        asyncio.get_running_loop().add_reader(executor.pidfd, self._exited, executor)
        self.executors[executor_id] = executor
        log.debug("executor_spawned", executor=executor_id, pid=process.pid)
        return executor

    def kill(self, executor: Executor) -> None:
        """SIGKILL the executor; `on_exit` follows when the kernel reports its end."""
        try:
            os.killpg(executor.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _exited(self, executor: Executor) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(executor.pidfd)
        os.close(executor.pidfd)
        executor.exit_status = executor.process.wait()
        try:  # its own children (subprocesses of user code) go with it
            os.killpg(executor.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.executors.pop(executor.executor_id, None)
        self.on_exit(executor)

    def idle(self, shape: Shape, owner: str) -> list[Executor]:
        """Warm executors that may serve a job of `owner` with `shape`."""
        return [
            e for e in self.executors.values()
            if not e.job_id and e.shape == shape and e.owner in ("", owner)
        ]

    def shutdown(self) -> None:
        for executor in list(self.executors.values()):
            self.kill(executor)
            try:
                executor.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def describe_exit(status: int | None) -> str:
    if status is None:
        return "exited"
    if status < 0:
        try:
            return f"killed by signal {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with code {status}"

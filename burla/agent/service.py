"""The agent daemon: register with the coordinator, run assigned jobs on executors, relay.

It grants the coordinator credit for chunks, hands each chunk to an executor of its job,
relays results and log lines upstream without unpickling them, and retries the rest of a
chunk when its executor dies. It never decides which job runs where: the coordinator does.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import time
from collections import deque
from dataclasses import dataclass, field

import structlog
import zmq

from burla import __version__, protocol, systemd, transport
from burla.agent.config import AgentConfig
from burla.agent.executors import Executor, ExecutorPool, Shape, describe_exit
from burla.config import PEER_TIMEOUT_SECONDS, PING_INTERVAL_SECONDS
from burla.errors import NodeDisconnected

log = structlog.get_logger("burla.agent")

# Crashes of the executor running one input before that input fails (DESIGN §6).
MAX_CRASHES_PER_INPUT = 3


@dataclass
class AgentJob:
    job_id: str
    function_hash: str
    function: bytes
    slots: int
    shape: Shape
    owner: str
    env: dict[str, str]
    queue: deque[protocol.Chunk] = field(default_factory=deque)
    crashes: dict[int, int] = field(default_factory=dict)  # input index -> executor deaths


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.session = os.urandom(6).hex()
        self.ctx: zmq.Context[object] = zmq.Context()
        self.endpoint = f"ipc://@burla-agent-{os.getpid()}-{self.session}"
        self.pool = ExecutorPool(self.endpoint, self.on_executor_exit)
        self.jobs: dict[str, AgentJob] = {}
        self.functions: dict[str, bytes] = {}
        self.registered = asyncio.Event()
        self.stopping = asyncio.Event()
        self.last_heard = time.monotonic()
        self.last_sent = 0.0
        self.upstream: transport.Channel
        self.downstream: transport.Channel

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        self.downstream = transport.Channel(
            transport.router_socket(self.ctx, self.endpoint), self.on_executor_message,
            routed=True, name="executors",
        )
        self.upstream = transport.Channel(
            transport.dealer_socket(
                self.ctx, self.config.coordinator,
                f"agent-{self.config.agent_id}-{self.session}".encode(),
            ),
            self.on_coordinator_message, routed=False, name="coordinator",
        )
        self.downstream.start()
        self.upstream.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, f"signal {sig}")
        warm = self.config.warm_executors
        for _ in range(self.config.cpus if warm < 0 else warm):
            self.pool.spawn((1, 0, None))
        self.hello()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.heartbeat())
                await self.stopping.wait()
                raise _Stop
        except* _Stop:
            pass
        finally:
            self.pool.shutdown()
            self.upstream.close()
            self.downstream.close()
            self.ctx.term()

    def stop(self, reason: str) -> None:
        log.info("agent_stopping", reason=reason)
        self.stopping.set()

    def hello(self) -> None:
        info = {
            "agent_id": self.config.agent_id,
            "cpus": self.config.cpus,
            "ram_gb": self.config.ram_gb,
            "gpus": _gpu_types(self.config.fake_gpus),
            "image": self.config.image,
            "python_version": self.config.python_version,
            "pid": os.getpid(),
        }
        self.send_up(protocol.Hello("agent", protocol.PROTOCOL_VERSION, __version__,
                                    self.config.token, self.session, info))

    async def heartbeat(self) -> None:
        watchdog = systemd.watchdog_interval()
        while True:
            await asyncio.sleep(min(PING_INTERVAL_SECONDS, watchdog or PING_INTERVAL_SECONDS))
            now = time.monotonic()
            if watchdog:
                systemd.notify(watchdog="1")
            if now - self.last_sent >= PING_INTERVAL_SECONDS:
                self.send_up(protocol.Ping())
            silent = now - self.last_heard
            if silent > PEER_TIMEOUT_SECONDS and self.registered.is_set():
                log.warning("coordinator_silent", seconds=round(silent, 1))
                self.registered.clear()
                self.hello()  # re-register under our session once it answers again
            orphan = self.config.orphan_timeout
            if orphan and silent > orphan:
                self.stop(f"no coordinator for {orphan:.0f}s")

    def send_up(self, msg: protocol.Message) -> None:
        self.last_sent = time.monotonic()
        self.upstream.send(msg)

    # --- from the coordinator ---------------------------------------------------------------

    def on_coordinator_message(self, _peer: bytes, msg: protocol.Message) -> None:
        self.last_heard = time.monotonic()
        handler = self.coordinator_handlers.get(type(msg))
        if handler is None:
            log.warning("unexpected_message", op=msg.op, origin="coordinator")
            return
        handler(self, msg)

    def on_welcome(self, msg: protocol.Welcome) -> None:
        if not self.registered.is_set():
            self.registered.set()
            log.info("registered", coordinator=self.config.coordinator, session=self.session)
            systemd.notify(ready="1", status="registered", mainpid=str(os.getpid()))

    def on_refuse(self, msg: protocol.Refuse) -> None:
        log.error("coordinator_refused", kind=msg.kind, message=msg.message)
        self.stop(f"refused: {msg.message}")

    def on_shutdown(self, msg: protocol.Shutdown) -> None:
        self.stop(msg.reason)

    def on_assign(self, msg: protocol.Assign) -> None:
        if msg.function:
            self.functions[msg.function_hash] = bytes(msg.function)
        function = self.functions.get(msg.function_hash)
        if function is None:
            log.error("assign_without_function", job=msg.job_id)
            return
        shape: Shape = (msg.func_cpu, msg.func_ram, msg.func_gpu)
        env = dict(msg.env, BURLA_CLUSTER=self.config.coordinator)
        job = AgentJob(msg.job_id, msg.function_hash, function, msg.slots, shape, msg.owner, env)
        self.jobs[msg.job_id] = job
        warm = self.pool.idle(shape, msg.owner)[: msg.slots]
        for executor in warm:
            self.attach(executor, job)
        for _ in range(msg.slots - len(warm)):
            self.make_room(shape)
            self.attach(self.pool.spawn(shape, msg.owner), job)
        self.send_up(protocol.Credit(job.job_id, msg.slots * (1 + self.config.prefetch)))
        log.info("job_assigned", job=job.job_id, slots=msg.slots, warm=len(warm))

    def make_room(self, shape: Shape) -> None:
        """Stop one idle executor of another shape or owner so a new one fits the CPUs."""
        if len(self.pool.executors) < self.config.cpus:
            return
        for executor in self.pool.executors.values():
            if not executor.job_id:
                self.pool.kill(executor)
                executor.job_id = "-dying-"
                return

    def attach(self, executor: Executor, job: AgentJob) -> None:
        executor.job_id = job.job_id
        executor.owner = job.owner
        if executor.ready:
            self.load(executor, job)

    def load(self, executor: Executor, job: AgentJob) -> None:
        function = b"" if executor.loaded_hash == job.function_hash else job.function
        self.downstream.send(
            protocol.Load(job.job_id, job.function_hash, job.env, function),
            executor.executor_id.encode(),
        )
        executor.loaded_hash = job.function_hash
        self.feed(executor)

    def on_chunk(self, msg: protocol.Chunk) -> None:
        job = self.jobs.get(msg.job_id)
        if job is None:
            return  # released while in flight; the coordinator requeues what it misses
        job.queue.append(msg)
        for executor in self.pool.executors.values():
            if executor.job_id == job.job_id and executor.ready and not executor.busy():
                self.feed(executor)
                return

    def feed(self, executor: Executor) -> None:
        job = self.jobs.get(executor.job_id)
        if job is None or not job.queue or executor.busy() or not executor.ready:
            return
        chunk = job.queue.popleft()
        executor.chunk = chunk
        executor.reported = chunk.skip
        self.downstream.send(chunk, executor.executor_id.encode())

    def on_release(self, msg: protocol.Release) -> None:
        job = self.jobs.pop(msg.job_id, None)
        if job is None:
            return
        for executor in list(self.pool.executors.values()):
            if executor.job_id != msg.job_id:
                continue
            if msg.kill and executor.busy():
                executor.chunk = None
                self.pool.kill(executor)
                executor.job_id = "-dying-"
            elif not executor.busy():
                executor.job_id = ""
        log.info("job_released", job=msg.job_id, killed=msg.kill)

    def on_ping(self, msg: protocol.Ping) -> None:
        pass

    coordinator_handlers = {
        protocol.Welcome: on_welcome,
        protocol.Refuse: on_refuse,
        protocol.Shutdown: on_shutdown,
        protocol.Assign: on_assign,
        protocol.Chunk: on_chunk,
        protocol.Release: on_release,
        protocol.Ping: on_ping,
    }

    # --- from executors ---------------------------------------------------------------------

    def on_executor_message(self, peer: bytes, msg: protocol.Message) -> None:
        executor = self.pool.executors.get(peer.decode())
        if executor is None:
            return
        if isinstance(msg, protocol.Results):
            self.on_results(executor, msg)
        elif isinstance(msg, protocol.Logs):
            self.send_up(msg)
        elif isinstance(msg, protocol.Hello):
            executor.ready = True
            job = self.jobs.get(executor.job_id)
            if job is not None:
                self.load(executor, job)

    def on_results(self, executor: Executor, msg: protocol.Results) -> None:
        if executor.chunk is None or executor.chunk.chunk_id != msg.chunk_id:
            return  # results of a chunk we gave up on
        executor.reported += msg.count
        self.send_up(msg)
        if msg.chunk_done:
            executor.chunk = None
            if executor.job_id in self.jobs:
                self.feed(executor)
            else:  # its job was released while it finished the last chunk
                executor.job_id = ""

    def on_executor_exit(self, executor: Executor) -> None:
        cause = describe_exit(executor.exit_status)
        chunk = executor.chunk
        job = self.jobs.get(executor.job_id)
        log.info("executor_exited", executor=executor.executor_id, cause=cause,
                 job=executor.job_id or None, busy=chunk is not None)
        if job is None:
            return
        if chunk is not None:
            self.retry_after_crash(job, chunk, executor.reported, cause)
        if not self.stopping.is_set():
            self.attach(self.pool.spawn(job.shape, job.owner), job)

    def retry_after_crash(self, job: AgentJob, chunk: protocol.Chunk, done: int, cause: str) -> None:
        index = chunk.first_index + done
        job.crashes[index] = job.crashes.get(index, 0) + 1
        if job.crashes[index] >= MAX_CRASHES_PER_INPUT:
            error = NodeDisconnected(
                f"the executor running input {index} {cause}, {MAX_CRASHES_PER_INPUT} times "
                f"in a row; the input was given up. If it runs out of memory, raise func_ram; "
                f"if it crashes the interpreter (segfault, os._exit), fix that call."
            )
            blob = pickle.dumps([error])
            done_now = done + 1 == chunk.count
            self.send_up(protocol.Results(job.job_id, chunk.chunk_id, chunk.attempt, index, 1,
                                          [index], done_now, 0, blob))
            done += 1
            if done_now:
                return
        retry = protocol.Chunk(job.job_id, chunk.chunk_id, chunk.attempt, chunk.first_index,
                               chunk.count, done, chunk.data)
        job.queue.appendleft(retry)


class _Stop(Exception):
    pass


def _gpu_types(fake: str) -> list[str]:
    """GPU types this node offers (fake inventory for now; NVML lands with the GPU work)."""
    if not fake:
        return []
    kind, _, count = fake.partition(":")
    return [kind] * int(count or 1)


async def run(config: AgentConfig) -> None:
    await Agent(config).run()

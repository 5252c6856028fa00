"""The agent daemon: register with the coordinator, run assigned jobs on executors, relay.

It grants the coordinator credit for chunks, hands each chunk to an executor of its job,
relays results and log lines upstream without unpickling them, and retries the rest of a
chunk when its executor dies. It never decides which job runs where: the coordinator does.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog
import zmq

from burla import __version__, channel, daemon, protocol, systemd, transport, unsent
from burla.agent import vm
from burla.agent.config import AgentConfig
from burla.agent.deaths import Deaths
from burla.agent.executors import DEFAULT_SHAPE, DYING, Executor, ExecutorPool
from burla.agent.limits import Shape, build_policy
from burla.config import PEER_TIMEOUT_SECONDS, PING_INTERVAL_SECONDS

log = structlog.get_logger("burla.agent")

# Every message of an agent the coordinator forgot is refused; one Hello per this long answers.
REHELLO_SECONDS = 0.5
# A job's end reaches its idle executors this long after it, unless the next job's Load came
# first (the executor cleans up then anyway): a warm loop of small jobs pays no message for it,
# and what a job left running is killed within this bound of its end.
RELEASE_PASS_ON_SECONDS = 0.05
# While no coordinator answers, say so this often (the first time after PEER_TIMEOUT_SECONDS).
UNREACHABLE_LOG_SECONDS = 10.0
# Longest the agent waits for its warm executors before registering without them.
WARM_UP_TIMEOUT_SECONDS = 20.0
# Wait before replacing an executor that died before it started with nothing to blame, so a
# broken start-up costs a fork a second, not a busy loop.
START_RETRY_SECONDS = 1.0
# What the coordinator sends a registration: dropped while we are between registrations.
SESSION_MESSAGES = (protocol.Assign, protocol.Chunk, protocol.Release, protocol.Forget)


@dataclass
class AgentJob:
    job_id: str
    function_hash: str
    function: protocol.Blob  # the frame as received: each Load shares it, none copies it
    slots: int
    shape: Shape
    owner: str
    env: dict[str, str]
    queue: deque[protocol.Chunk] = field(default_factory=deque)
    crashes: dict[int, int] = field(default_factory=dict)  # input index -> executor deaths
    parallelism: int = 0  # executors it may have here: slots, less one per dynamic-RAM OOM
    last_oom_at: float = -1e9  # when an executor of this job last died out of memory


class Agent(Deaths):
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.session = os.urandom(6).hex()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.endpoint = f"ipc://@burla-agent-{os.getpid()}-{self.session}"
        self.policy = build_policy(config)
        self.pool = ExecutorPool(self.endpoint, self.on_executor_exit, self.policy)
        self.jobs: dict[str, AgentJob] = {}
        self.functions: dict[str, protocol.Blob] = {}
        self.registered = asyncio.Event()
        self.warmed = asyncio.Event()  # every executor started at launch has said Hello
        self.stopping = asyncio.Event()
        self.last_heard = time.monotonic()
        self.last_sent = 0.0
        self.hello_sent_at = 0.0
        self.unanswered_since = 0.0  # when the Hellos still unanswered began; 0: registered
        self.unreachable_logged_at = 0.0
        self.upstream: channel.Channel
        self.downstream: channel.Channel
        # What the coordinator knows this agent's messages by, for all its registrations.
        self.identity = f"agent-{config.agent_id}-{self.session}".encode()
        # Makes the upstream instead of a ZeroMQ socket (burla.local_link, for the embedded
        # cluster, whose coordinator runs on this event loop).
        self.uplink: Callable[[], Any] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        self.downstream = channel.Channel(
            transport.router_socket(self.ctx, self.endpoint), self.on_executor_message,
            routed=True, name="executors",
        )
        if self.uplink is not None:  # the embedded cluster: the coordinator is in-process
            self.upstream = self.uplink()
        else:
            self.upstream = channel.Channel(
                transport.dealer_socket(self.ctx, self.config.coordinator, self.identity),
                self.on_coordinator_message, routed=False, name="coordinator",
                replace_unsent=unsent.replacement,
            )
        self.downstream.start()
        self.upstream.start()
        daemon.stop_on_signals(self.stop)
        self.pool.start()
        warm = self.config.warm_executors
        for _ in range(self.config.cpus if warm < 0 else warm):
            self.pool.spawn(DEFAULT_SHAPE)
        self.check_warm()
        try:
            # Register once the warm executors are up: a first job then starts at once.
            await asyncio.wait_for(self.warmed.wait(), WARM_UP_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("warm_up_slow", seconds=WARM_UP_TIMEOUT_SECONDS,
                        waiting=sum(not e.ready for e in self.pool.executors.values()))
        if not self.stopping.is_set():
            self.last_heard = time.monotonic()  # the orphan clock starts with the first Hello
            self.hello()
        try:
            await daemon.run_until(self.stopping, self.heartbeat())
        finally:
            await self.pool.shutdown()
            self.upstream.close()
            self.downstream.close()
            self.ctx.term()

    def stop(self, reason: str) -> None:
        log.info("agent_stopping", reason=reason)
        self.stopping.set()
        self.warmed.set()

    def check_warm(self) -> None:
        if not self.warmed.is_set() and all(e.ready for e in self.pool.executors.values()):
            self.warmed.set()

    def hello(self) -> None:
        info = {
            "agent_id": self.config.agent_id,
            "cpus": self.config.cpus,
            "ram_gb": self.config.ram_gb,
            "gpus": [gpu.type for gpu in self.policy.gpus],
            "image": self.config.image,
            "python_version": self.config.python_version,
            "prefetch": self.config.prefetch,  # the credit each slot of an Assign carries
            "pid": os.getpid(),
        }
        self.hello_sent_at = time.monotonic()
        if not self.registered.is_set():
            self.unanswered_since = self.unanswered_since or self.hello_sent_at
        self.send_up(protocol.Hello("agent", protocol.PROTOCOL_VERSION, __version__,
                                    self.config.token, self.session, info))

    def register_again(self) -> None:
        """Hello once more. The coordinator then treats us as a new node and requeues what we
        ran, so our jobs are void: their busy executors are killed, the idle ones kept warm."""
        for job_id in list(self.jobs):
            self.on_release(protocol.Release(job_id, True))
        self.functions.clear()  # the coordinator's record of them starts empty again
        # A new session. Whatever the old one sent went down this FIFO connection before this
        # Hello, so the coordinator refused it as an unknown peer: that is the fence.
        self.session = os.urandom(6).hex()
        self.hello()

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
                self.register_again()
            elif self.unanswered_since:
                self.report_unreachable(now)
            orphan = self.config.orphan_timeout
            if orphan and silent > orphan:
                reason = f"no coordinator for {orphan:.0f}s"
                if self.config.vm is not None:  # a GCE VM: nothing may bill forever
                    await vm.delete_own(self.config.vm, reason)
                self.stop(reason)
                return

    def report_unreachable(self, now: float) -> None:
        """Log, now and then, that no coordinator has answered; ZeroMQ keeps redialling."""
        trying = now - self.unanswered_since
        if trying >= PEER_TIMEOUT_SECONDS and \
                now - self.unreachable_logged_at >= UNREACHABLE_LOG_SECONDS:
            self.unreachable_logged_at = now
            log.warning("coordinator_unreachable", coordinator=self.config.coordinator,
                        seconds=round(trying), doing="retrying")

    def send_up(self, msg: protocol.Message) -> None:
        self.last_sent = time.monotonic()
        self.upstream.send(msg)

    # --- from the coordinator ---------------------------------------------------------------

    def on_coordinator_message(self, _peer: bytes, msg: protocol.Message) -> None:
        self.last_heard = time.monotonic()
        if isinstance(msg, SESSION_MESSAGES) and not self.registered.is_set():
            # Meant for a registration we gave up: the coordinator answers a Hello with its
            # Welcome before anything else, down this FIFO connection.
            log.debug("stale_message_dropped", op=msg.op)
            return
        handler = self.coordinator_handlers.get(type(msg))
        if handler is None:
            log.warning("unexpected_message", op=msg.op, origin="coordinator")
            return
        handler(self, msg)

    def on_welcome(self, msg: protocol.Welcome) -> None:
        answers = msg.info.get("answers", self.session)  # the session of the Hello it answers
        if answers != self.session:
            log.debug("stale_welcome_dropped", answers=answers, session=self.session)
            return
        if not self.registered.is_set():
            self.registered.set()
            self.unanswered_since = 0.0
            log.info("registered", coordinator=self.config.coordinator, session=self.session)
            systemd.notify(ready="1", status="registered", mainpid=str(os.getpid()))

    def on_refuse(self, msg: protocol.Refuse) -> None:
        if msg.kind == "unknown_peer":  # it forgot us (declared us lost, or restarted)
            if time.monotonic() - self.hello_sent_at >= REHELLO_SECONDS:
                log.warning("coordinator_forgot_agent", message=msg.message)
                self.registered.clear()
                self.register_again()
            return
        log.error("coordinator_refused", kind=msg.kind, message=msg.message)
        self.stop(f"refused: {msg.message}")

    def on_shutdown(self, msg: protocol.Shutdown) -> None:
        self.stop(msg.reason)

    def on_assign(self, msg: protocol.Assign) -> None:
        if msg.function:  # kept as received: a copy of a big function cost as much as a hop
            self.functions[msg.function_hash] = msg.function
        function = self.functions.get(msg.function_hash)
        if function is None:
            log.error("assign_without_function", job=msg.job_id)
            return
        shape: Shape = (msg.func_cpu, msg.func_ram, msg.func_gpu)
        env = dict(msg.env, BURLA_CLUSTER=self.config.coordinator)
        job = self.jobs.get(msg.job_id)
        if job is None:
            job = AgentJob(msg.job_id, msg.function_hash, function, msg.slots, shape, msg.owner,
                           env, parallelism=msg.slots)
            self.jobs[msg.job_id] = job
        else:  # more slots for a job already here (another job's slots came free): its queue
            job.slots += msg.slots  # and its executors stay
            job.parallelism += msg.slots
        warm = self.pool.idle(shape, msg.owner)[: msg.slots]
        for executor in warm:
            self.attach(executor, job)
        for _ in range(msg.slots - len(warm)):
            self.make_room(shape)
            self.attach(self.pool.spawn(shape, msg.owner), job)
        # debug: the coordinator logs each job once (job_submitted); a line per job per node
        # was a sixth of a small job's CPU in the embedded cluster.
        log.debug("job_assigned", job=job.job_id, slots=msg.slots, warm=len(warm),
                 function_bytes=len(msg.function))  # 0: this agent had the function already

    def make_room(self, shape: Shape) -> None:
        """Stop one idle executor of another shape or owner so a new one fits the CPUs."""
        if len(self.pool.executors) < self.config.cpus:
            return
        for executor in self.pool.executors.values():
            if not executor.job_id:
                self.pool.kill(executor)
                return

    def attach(self, executor: Executor, job: AgentJob) -> None:
        executor.job_id = job.job_id
        executor.owner = job.owner
        executor.proven = False
        self.feed(executor)

    def load(self, executor: Executor, job: AgentJob) -> None:
        function = b"" if executor.loaded_hash == job.function_hash else job.function
        self.downstream.send(
            protocol.Load(job.job_id, job.function_hash, job.env, function),
            executor.executor_id.encode(),
        )
        executor.loaded_hash, executor.loaded_job = job.function_hash, job.job_id

    def on_chunk(self, msg: protocol.Chunk) -> None:
        job = self.jobs.get(msg.job_id)
        if job is None:
            return  # released while in flight; the coordinator requeues what it misses
        job.queue.append(msg)
        self.feed_idle(job)

    def feed_idle(self, job: AgentJob) -> None:
        """Hand queued chunks to the job's ready executors that have none."""
        for executor in list(self.pool.executors.values()):
            if not job.queue:
                return
            if executor.job_id == job.job_id:
                self.feed(executor)

    def feed(self, executor: Executor) -> None:
        job = self.jobs.get(executor.job_id)
        if job is None or not job.queue or executor.busy() or not executor.ready:
            return
        if executor.loaded_job != job.job_id:
            # Right before its first chunk, not at Assign: an executor the job never needs is
            # not woken, and one that is reads both in one wake-up.
            self.load(executor, job)
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
            elif not executor.busy():
                self.end_job(executor, msg.job_id)
        log.debug("job_released", job=msg.job_id, killed=msg.kill)

    def end_job(self, executor: Executor, job_id: str) -> None:
        """The executor goes idle-warm; it cleans up after the job (and asks to be retired if
        the job changed what the next one relies on) before it reads the next job's Load, or
        when told of the job's end, RELEASE_PASS_ON_SECONDS later, if no Load came first."""
        executor.job_id = ""
        if executor.ready and executor.loaded_job == job_id:  # it ran the job's code
            self.later(RELEASE_PASS_ON_SECONDS, self.pass_on_release, executor, job_id)

    def later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        asyncio.get_running_loop().call_later(delay, callback, *args)

    def pass_on_release(self, executor: Executor, job_id: str) -> None:
        still_idle_after_it = executor.job_id == "" and executor.loaded_job == job_id
        if still_idle_after_it and self.pool.executors.get(executor.executor_id) is executor:
            self.downstream.send(protocol.Release(job_id, False), executor.executor_id.encode())
            # It has left the job: should the job come back (the coordinator assigns it again
            # to an agent that rejoined), it needs the Load again. Its function stays cached.
            executor.loaded_job = ""

    def on_forget(self, msg: protocol.Forget) -> None:
        # Executors keep their loaded copy (within their own bound); a job running it is live,
        # and the coordinator never has a live job's function forgotten.
        if self.functions.pop(msg.function_hash, None) is not None:
            log.info("function_forgotten", function_hash=msg.function_hash)

    def on_ping(self, msg: protocol.Ping) -> None:
        pass

    coordinator_handlers: ClassVar[dict[type[protocol.Message], Callable[[Any, Any], None]]] = {
        protocol.Welcome: on_welcome,
        protocol.Refuse: on_refuse,
        protocol.Shutdown: on_shutdown,
        protocol.Assign: on_assign,
        protocol.Chunk: on_chunk,
        protocol.Release: on_release,
        protocol.Forget: on_forget,
        protocol.Ping: on_ping,
    }

    # --- from executors ---------------------------------------------------------------------

    def on_executor_message(self, peer: bytes, msg: protocol.Message) -> None:
        executor = self.pool.executors.get(peer.decode("ascii", "replace"))
        if executor is None:
            if isinstance(msg, protocol.Logs) and msg.job_id in self.jobs:
                self.send_up(msg)  # last words of an executor whose end was handled first
            return
        if isinstance(msg, protocol.Results):
            self.on_results(executor, msg)
        elif isinstance(msg, protocol.Logs):
            self.send_up(msg)
        elif isinstance(msg, protocol.Retire):
            self.on_retire(executor, msg)
        elif isinstance(msg, protocol.Hello):
            executor.ready = True
            log.debug("executor_ready", executor=executor.executor_id, pid=executor.pid,
                      ms=round((time.monotonic() - executor.requested_at) * 1000, 1))
            self.check_warm()
            self.feed(executor)

    def on_results(self, executor: Executor, msg: protocol.Results) -> None:
        if executor.chunk is None or executor.chunk.chunk_id != msg.chunk_id:
            return  # results of a chunk we gave up on
        executor.reported += msg.count
        executor.proven = True
        self.send_up(msg)
        if executor.chunk.report_each and not msg.chunk_done:  # it waits for this to go on
            self.downstream.send(protocol.ResultsNoted(msg.chunk_id, executor.reported),
                                 executor.executor_id.encode())
        if msg.chunk_done:
            executor.chunk = None
            if executor.job_id in self.jobs:
                self.feed(executor)
            else:  # its job was released while it finished the last chunk
                self.end_job(executor, executor.job_id)

    def on_retire(self, executor: Executor, msg: protocol.Retire) -> None:
        """Replace an executor that a job left changed. It ran nothing since it said so: a
        chunk it was sent meanwhile goes back to the front of its queue, no crash counted."""
        log.info("executor_retired", executor=executor.executor_id, pid=executor.pid,
                 reason=msg.reason)
        if executor.killed:
            return
        job = self.jobs.get(executor.job_id)
        chunk, executor.chunk = executor.chunk, None
        self.pool.kill(executor)  # its exit is nobody's crash; keep_warm refills an idle one
        if job is None or self.stopping.is_set():
            return
        if chunk is not None:
            job.queue.appendleft(chunk)
        self.attach(self.pool.spawn(job.shape, job.owner), job)
        self.feed_idle(job)

    def on_executor_exit(self, executor: Executor) -> None:
        self.check_warm()
        job = self.jobs.get(executor.job_id)
        if job is None or executor.job_id == DYING:
            self.keep_warm()
            return
        chunk, blamed = executor.chunk, False
        if chunk is None and not executor.proven and job.queue:
            # It died starting or loading the function (a sandbox step, a function that does
            # not unpickle): the next chunk takes the blame, so the failure reaches the user
            # through the crash limit instead of a loop of forks.
            chunk, blamed = job.queue.popleft(), True
            executor.reported = chunk.skip
        if chunk is not None:
            self.after_death(job, executor, chunk, blamed)
            self.top_up(job.job_id)
        elif executor.proven:
            self.top_up(job.job_id)
        else:  # nothing to blame yet: retry the start later, not in a tight loop
            asyncio.get_running_loop().call_later(START_RETRY_SECONDS, self.top_up, job.job_id)

    def keep_warm(self) -> None:
        """Hold as many executors as at start (killed ones by a cancel or a re-registration are
        replaced), so the next job starts without a fork."""
        if self.stopping.is_set():
            return
        warm = self.config.warm_executors
        target = self.config.cpus if warm < 0 else warm
        for _ in range(target - len(self.pool.executors)):
            self.pool.spawn(DEFAULT_SHAPE)

    def top_up(self, job_id: str) -> None:
        """Start executors until the job has its parallelism on this node."""
        job = self.jobs.get(job_id)
        if job is None or self.stopping.is_set():
            return
        running = sum(1 for e in self.pool.executors.values() if e.job_id == job_id)
        for _ in range(job.parallelism - running):
            self.make_room(job.shape)
            self.attach(self.pool.spawn(job.shape, job.owner), job)


async def run(config: AgentConfig) -> None:
    await Agent(config).run()

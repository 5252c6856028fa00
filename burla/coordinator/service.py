"""The coordinator daemon: one ROUTER for clients and agents, around the pure Scheduler.

This layer authenticates peers, routes each message to the scheduler handler for its type,
sends what the scheduler returns, and keeps time (heartbeats, dead peers, idle shutdown).
Decisions about jobs and slots are the scheduler's, never made here; with a provider, the
`Grower` carries out growth's (boots, deletes, the reaper) as a loop beside the tick.
"""

from __future__ import annotations

import asyncio
import getpass
import hmac
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from burla import __version__, channel, daemon, protocol, systemd, transport, unsent
from burla.config import CLIENT_FORGET_SECONDS, PING_INTERVAL_SECONDS
from burla.coordinator.config import CoordinatorConfig
from burla.coordinator.grower import Grower
from burla.coordinator.jobstore import JobStore
from burla.coordinator.scheduler import Out, Scheduler
from burla.coordinator.storefile import StoreError
from burla.job_ids import job_id_problem

log = structlog.get_logger("burla.coordinator")


class Coordinator:
    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.session = os.urandom(6).hex()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.store = JobStore(config.state_dir / "jobs.sqlite3")
        self.scheduler = Scheduler(os.urandom(32), self.store)
        self.scheduler.restore(time.monotonic())
        self.grower = (Grower(config.growth, self.scheduler, self.send_all)
                       if config.growth is not None else None)
        self.clients: dict[bytes, str] = {}  # peer -> owner, after a good Hello
        self.client_seen: dict[bytes, float] = {}
        self.agent_last_ping = 0.0
        self.idle_since = time.monotonic()
        self.stopping = asyncio.Event()
        # Only an idle stop (the embedded cluster's) takes the agents with it. A restart
        # (SIGTERM from systemd, a deploy) must leave them running: they reconnect, as after a
        # crash, and the cluster keeps its nodes.
        self.stop_agents = False
        self.unstored_lines = 0  # output lines of detached jobs the job store could not take
        self.listening = asyncio.Event()  # set once bound: `endpoint` is known
        self.channel: channel.Channel
        self.endpoint = ""

    async def run(self) -> None:
        sock = transport.router_socket(self.ctx, self.config.endpoint)
        self.endpoint = transport.bound_endpoint(sock)
        self.channel = channel.Channel(sock, self.on_message, routed=True, name="coordinator",
                                       replace_unsent=unsent.replacement)
        self.channel.start()
        daemon.stop_on_signals(self.stop)
        self.listening.set()
        log.info("coordinator_listening", endpoint=self.endpoint, session=self.session)
        systemd.notify(ready="1", status=f"listening {self.endpoint}", mainpid=str(os.getpid()))
        loops = [self.tick()]
        if self.grower is not None:
            loops.append(self.grower.run(self.endpoint, self.config.agent_token,
                                         self.config.state_dir))
        try:
            await daemon.run_until(self.stopping, *loops)
        finally:
            if self.stop_agents:
                for node in self.scheduler.nodes.values():
                    self.channel.send(protocol.Shutdown("the coordinator stopped, idle"),
                                      node.peer)
                await asyncio.sleep(0.05)  # let the Shutdowns leave before the socket closes
            self.channel.close()
            self.ctx.term()
            self.store.close()

    def stop(self, reason: str) -> None:
        log.info("coordinator_stopping", reason=reason)
        self.stopping.set()

    def send_all(self, out: Out) -> None:
        for peer, msg in out:
            self.channel.send(msg, peer)

    async def tick(self) -> None:
        watchdog = systemd.watchdog_interval()
        while True:
            await asyncio.sleep(min(PING_INTERVAL_SECONDS, watchdog or PING_INTERVAL_SECONDS))
            now = time.monotonic()
            if watchdog:
                systemd.notify(watchdog="1")
            for node in self.scheduler.nodes.values():
                self.channel.send(protocol.Ping(), node.peer)
            for peer in list(self.client_seen):
                if now - self.client_seen[peer] > CLIENT_FORGET_SECONDS:
                    self.client_seen.pop(peer, None)
                    self.clients.pop(peer, None)
            self.send_all(self.scheduler.expire(now, self.client_seen))
            if self.scheduler.jobs or any(
                now - seen < PING_INTERVAL_SECONDS * 2 for seen in self.client_seen.values()
            ):
                self.idle_since = now
            idle = self.config.idle_timeout
            if idle and now - self.idle_since > idle:
                self.stop_agents = True
                self.stop(f"idle for {idle:.0f}s")

    # --- inbound ------------------------------------------------------------------------------

    def on_message(self, peer: bytes, msg: protocol.Message) -> None:
        now = time.monotonic()
        if isinstance(msg, protocol.Hello):
            self.on_hello(peer, msg, now)
            return
        node = self.scheduler.node_by_peer(peer) if peer.startswith(b"agent-") else None
        if node is not None:
            node.last_seen = now
            handler = self.agent_handlers.get(type(msg))
            if handler is not None:
                self.send_all(self.handle(msg, None, None, handler, self, node, msg))
            return
        owner = self.clients.get(peer)
        if owner is None:
            # Not (or no longer) registered: an agent must re-register, a client re-connect.
            if peer.startswith(b"agent-") or not isinstance(msg, protocol.Ping):
                self.channel.send(protocol.Refuse("unknown_peer", "send Hello first", ""), peer)
            return
        self.client_seen[peer] = now
        problem = _job_id_problem(msg)
        if problem is not None:  # refused here, so no handler stores or echoes it
            self.channel.send(protocol.Refuse("unknown_job", problem, ""), peer)
            return
        client_handler = self.client_handlers.get(type(msg))
        if client_handler is not None:
            self.send_all(self.handle(msg, peer, owner, client_handler, self, peer, owner, msg))

    def handle(self, msg: protocol.Message, peer: bytes | None, owner: str | None,
               handler: Callable[..., Out], *args: Any) -> Out:
        """What `handler(*args)` sends. If it raises, the job `msg` is about is cancelled with
        the error's words (if it is `owner`'s; None: an agent's message), and `peer`, the client
        that asked, is answered: nobody is left waiting."""
        try:
            return handler(*args)
        except Exception as exc:
            log.exception("handler_failed", op=msg.op)
            job_id = str(getattr(msg, "job_id", "") or "")
            why = (f"the coordinator failed while handling {msg.op}"
                   f"{f' for job {job_id!r}' if job_id else ''} ({type(exc).__name__}: {exc}); "
                   f"its log has the traceback")
            job = self.scheduler.jobs.get(job_id)
            if job is not None and owner is not None and job.owner != owner:
                job = None  # another owner's job is not this client's to end
            out: Out = []
            if job is not None:
                try:
                    out += self.scheduler.cancel(job_id, None, f"{why}, and the job was cancelled")
                except Exception:
                    log.exception("cancel_failed", job=job_id)
            if peer is not None and (job is None or peer != job.client):
                out.append((peer, protocol.JobFailed(job_id, "coordinator_error", why)
                            if job_id else protocol.Refuse("coordinator_error", why, "")))
            return out

    def on_hello(self, peer: bytes, msg: protocol.Hello, now: float) -> None:
        if msg.protocol_version != protocol.PROTOCOL_VERSION:
            text = (f"protocol version mismatch: this {msg.role} speaks version "
                    f"{msg.protocol_version} (burla {msg.burla_version}), the cluster speaks "
                    f"version {protocol.PROTOCOL_VERSION} (burla {__version__}). Install "
                    f"burla=={__version__} on the {msg.role}, or upgrade the cluster.")
            self.channel.send(protocol.Refuse("version", text, ""), peer)
            return
        if msg.role == "agent":
            if not hmac.compare_digest(msg.token.encode(), self.config.agent_token.encode()):
                self.channel.send(protocol.Refuse("unauthorized", "bad cluster token", ""), peer)
                return
            # Welcome first: the agent drops what comes before it, as meant for a registration
            # it gave up. `answers` names the session of this Hello.
            self.channel.send(protocol.Welcome(
                self.session, protocol.PROTOCOL_VERSION, __version__,
                {"endpoint": self.endpoint, "answers": msg.session}), peer)
            self.send_all(self.scheduler.add_node(peer, msg, now))
            if self.grower is not None:
                self.grower.poke()
            return
        owner = self.authenticate(msg.token)
        if owner is None:
            self.channel.send(protocol.Refuse(
                "unauthorized", "the cluster refused this token: pass the cluster's token "
                "as api_key= or in BURLA_API_KEY (the coordinator's --token-file holds it)",
                ""), peer)
            return
        self.clients[peer] = owner
        self.client_seen[peer] = now
        self.channel.send(protocol.Welcome(self.session, protocol.PROTOCOL_VERSION, __version__,
                                           {"endpoint": self.endpoint}), peer)

    def authenticate(self, token: str) -> str | None:
        for known, owner in self.config.client_tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return owner
        return self.scheduler.owner_of_job_token(token)

    # --- client messages ------------------------------------------------------------------------

    def on_submit(self, peer: bytes, owner: str, msg: protocol.Submit) -> Out:
        if self.grower is not None:
            self.grower.poke()
        return self.scheduler.submit(peer, owner, msg, time.monotonic())

    def on_input_chunk(self, peer: bytes, owner: str, msg: protocol.InputChunk) -> Out:
        job = self.scheduler.jobs.get(msg.job_id)
        return self.scheduler.add_inputs(job, msg) if job and job.owner == owner else []

    def on_inputs_done(self, peer: bytes, owner: str, msg: protocol.InputsDone) -> Out:
        job = self.scheduler.jobs.get(msg.job_id)
        return self.scheduler.inputs_done(job, msg) if job and job.owner == owner else []

    def on_ack(self, peer: bytes, owner: str, msg: protocol.Ack) -> Out:
        job = self.scheduler.jobs.get(msg.job_id)
        return self.scheduler.ack(job, msg) if job and job.owner == owner else []

    def on_cancel(self, peer: bytes, owner: str, msg: protocol.Cancel) -> Out:
        job = self.scheduler.jobs.get(msg.job_id)
        known = job is not None and job.owner == owner
        client = job.client if job is not None else b""
        out = self.scheduler.cancel(msg.job_id, owner, msg.reason)
        if peer != client:  # someone else asked (`burla jobs cancel`): tell them too
            out.append((peer, protocol.JobFailed(
                msg.job_id, "canceled", msg.reason if known else "already over")))
        return out

    def on_attach(self, peer: bytes, owner: str, msg: protocol.Attach) -> Out:
        return self.scheduler.attach(peer, owner, msg.job_id, time.monotonic(), time.time())

    def on_job_logs(self, peer: bytes, owner: str, msg: protocol.JobLogsRequest) -> Out:
        job = self.scheduler.jobs.get(msg.job_id)
        if job is None or job.owner != owner:
            return [(peer, protocol.Refuse("unknown_job", f"no job {msg.job_id!r} of yours is "
                                           "on this cluster", msg.job_id))]
        entries = list(self.store.logs(msg.job_id)) if job.detach else []
        return [(peer, protocol.StatusReply({"job_id": msg.job_id, "entries": entries,
                                             "kept": job.detach}))]

    def on_client_ping(self, peer: bytes, owner: str, msg: protocol.Ping) -> Out:
        return [(peer, protocol.Ping())]  # so a client waiting on a long call knows we live

    def on_status(self, peer: bytes, owner: str, msg: protocol.StatusRequest) -> Out:
        scheduler = self.scheduler
        info = {
            "endpoint": self.endpoint,
            "version": __version__,
            "python": {"executable": sys.executable, "prefix": sys.prefix,
                       "python_version": platform.python_version()},
            "nodes": [
                {"agent_id": n.agent_id, "cpus": n.cpus, "used_cpus": n.used_cpus,
                 "ram_gb": n.ram_gb, "gpus": n.gpus, "image": n.image,
                 "python_version": n.python_version}
                for n in scheduler.nodes.values()
            ],
            "jobs": [
                {"job_id": j.job_id, "owner": j.owner, "function": j.function_name,
                 "slots": j.slots, "done": j.done, "total": j.total, "uploaded": j.uploaded,
                 "detach": j.detach, "client": bool(j.client), "finished": j.finished,
                 "age_seconds": round(time.monotonic() - j.submitted_at, 1), "grow": j.grow,
                 "growth": j.growth_status}
                for j in scheduler.jobs.values() if j.owner == owner
            ],
            "growth": self.grower.status() if self.grower is not None else None,
        }
        return [(peer, protocol.StatusReply(info))]

    def on_shutdown(self, peer: bytes, owner: str, msg: protocol.Shutdown) -> Out:
        if owner == self.config.admin_owner:
            self.stop(msg.reason)
        return []

    client_handlers: dict[type, Callable[..., Out]] = {
        protocol.Submit: on_submit,
        protocol.InputChunk: on_input_chunk,
        protocol.InputsDone: on_inputs_done,
        protocol.Ack: on_ack,
        protocol.Cancel: on_cancel,
        protocol.Attach: on_attach,
        protocol.JobLogsRequest: on_job_logs,
        protocol.Ping: on_client_ping,
        protocol.StatusRequest: on_status,
        protocol.Shutdown: on_shutdown,
    }

    # --- agent messages -------------------------------------------------------------------------

    agent_handlers: dict[type, Callable[..., Out]] = {
        protocol.Credit: lambda self, node, msg: self.scheduler.credit(node, msg),
        protocol.Results: lambda self, node, msg: self.scheduler.results(node, msg),
        protocol.Logs: lambda self, node, msg: self.relay_logs(msg),
        protocol.Ping: lambda self, node, msg: [],
    }

    def relay_logs(self, msg: protocol.Logs) -> Out:
        job = self.scheduler.jobs.get(msg.job_id)
        if job is None:
            return []
        if job.detach:
            try:
                self.store.add_logs(job.job_id, msg.count, msg.data)
            except StoreError as exc:  # lines the store cannot take are lost, the job goes on
                self.unstored_lines += msg.count
                if self.unstored_lines == msg.count or self.unstored_lines % 100_000 < msg.count:
                    log.error("job_logs_not_stored", job=job.job_id, lines=self.unstored_lines,
                              error=str(exc))
        return [(job.client, msg)] if job.client else []



def _job_id_problem(msg: protocol.Message) -> str | None:
    """Why a client's message names no valid job id (its own, or its parent's), if it does not;
    messages without one pass."""
    job_id = getattr(msg, "job_id", None)
    problem = None if job_id is None else job_id_problem(job_id)
    parent = getattr(msg, "parent_job", None)
    if problem is None and parent is not None:
        problem = job_id_problem(parent)
    return problem


def default_owner() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


async def run(config: CoordinatorConfig) -> None:
    await Coordinator(config).run()

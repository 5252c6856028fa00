"""The local node provider: each node is a `burla agent` process on this machine (tests, trials).

It offers one machine type, `local-N` (N CPUs), and keeps a record of each node it starts
under its state dir (`<name>/node.json`, beside the agent's own state and log), so `list_nodes`
finds them again after a restart and a test can plant one. Local nodes do not outlive their
coordinator: `close` stops them all. Blocking, like every provider: called from a ProviderPool.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import structlog

from burla.coordinator.capacity import Catalog, Shape
from burla.coordinator.providers.base import (
    CLUSTER_LABEL,
    BootReport,
    BootStep,
    Node,
    NodeRequest,
    ProviderError,
    StepCallback,
)

log = structlog.get_logger("burla.coordinator.providers.local")

TYPE_PREFIX = "local-"
ZONE = "local"
RECORD = "node.json"
# An agent asked to stop has this long to do so (it stops its executors first), then SIGKILL.
STOP_GRACE_SECONDS = 5.0
# A local agent whose coordinator is gone (killed, never to come back) stops after this long,
# so no process of a dead cluster lingers; long enough to outlast a coordinator's restart.
ORPHAN_SECONDS = 120.0
_POLL_SECONDS = 0.05
# Variables of the coordinator's own environment that must not reach its agents.
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "BURLA_CLUSTER",
                  "BURLA_API_KEY", "BURLA_PARENT_JOB")


@dataclass(frozen=True)
class LocalConfig:
    """Where the local provider keeps its nodes, and what each one is."""

    state_dir: Path  # one directory per node in it
    cluster_name: str
    coordinator_endpoint: str  # what its agents dial
    token: str = field(repr=False)
    cpus: int  # each node's CPUs: the machine type local-<cpus>
    ram_gb: int  # each node's RAM, as its agent advertises it
    python_version: str  # the Python minor version its agents run (the coordinator's)
    command: tuple[str, ...]  # the command that runs an agent; the agent's flags follow it

    def __post_init__(self) -> None:
        if self.cpus < 1 or self.ram_gb < 1:
            raise ValueError(f"a local node needs at least 1 CPU and 1 GB, got cpus={self.cpus},"
                             f" ram_gb={self.ram_gb}")
        if not self.command:
            raise ValueError("the local provider needs a command that runs an agent")

    @property
    def machine_type(self) -> str:
        return f"{TYPE_PREFIX}{self.cpus}"


def catalog(config: LocalConfig) -> Catalog:
    """Growth's catalog: local-N for CPU calls in the agents' Python, with no image."""

    def types(shape: Shape) -> list[tuple[str, int, int, int]]:
        if shape.func_gpu or shape.image or shape.python_version != config.python_version:
            return []
        return [(config.machine_type, config.cpus, config.ram_gb, 0)]

    return types


class LocalProvider:
    """Starts, lists and stops this cluster's local agent processes."""

    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.cluster_name = config.cluster_name
        self._lock = threading.Lock()
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # name -> the agent we started
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._token_file = config.state_dir / "token"
        self._token_file.touch(mode=0o600)
        self._token_file.write_text(config.token)

    # -- the provider interface -------------------------------------------------------------

    def create(self, request: NodeRequest, on_step: StepCallback | None = None) -> BootReport:
        if request.machine_type != self.config.machine_type:
            error = ProviderError(f"the local provider boots only {self.config.machine_type}, "
                                  f"not {request.machine_type}")
            return BootReport(request, (), (), error)
        names = request.names or tuple(f"{self.cluster_name}-local-{os.urandom(3).hex()}"
                                       for _ in range(request.count))
        nodes = []
        try:
            for name in names:
                nodes.append(self._start(name))
        except OSError as exc:
            error = ProviderError(f"could not start local agent {name} with "
                                  f"{' '.join(self.config.command)}: {exc}")
            return BootReport(request, tuple(nodes), (), error)
        step = BootStep("created", request, ZONE, f"{len(nodes)} started here", len(nodes))
        if on_step is not None:
            on_step(step)
        return BootReport(request, tuple(nodes), (step,))

    def list_nodes(self) -> list[Node]:
        nodes = []
        for path in sorted(self.config.state_dir.glob(f"*/{RECORD}")):
            record = _read(path)
            if record is None or record.get("cluster") != self.cluster_name:
                continue
            status = "RUNNING" if self._alive(record) else "TERMINATED"
            nodes.append(Node(str(record["name"]), ZONE, status, str(record["machine_type"]),
                              {CLUSTER_LABEL: str(record["cluster"])},
                              float(record.get("created_at", 0.0))))
        return nodes

    def delete(self, node: Node) -> None:
        """Stop the node's agent (SIGTERM, then SIGKILL after STOP_GRACE_SECONDS) and remove
        its directory. A node already gone is not an error."""
        if node.cluster != self.cluster_name:
            raise ValueError(f"refusing to delete local node {node.name}: it does not carry the "
                             f"label {CLUSTER_LABEL}={self.cluster_name} (its labels: "
                             f"{dict(node.labels)})")
        self._stop([node.name])

    def close(self) -> None:
        """Stop every node of this cluster: local nodes do not outlive their coordinator."""
        self._stop([node.name for node in self.list_nodes()])

    # -- processes --------------------------------------------------------------------------

    def _start(self, name: str) -> Node:
        config = self.config
        directory = config.state_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        command = [*config.command, "--coordinator", config.coordinator_endpoint,
                   "--state-dir", str(directory / "agent"), "--token-file", str(self._token_file),
                   "--agent-id", name, "--cpus", str(config.cpus), "--ram-gb", str(config.ram_gb),
                   "--orphan-timeout", f"{ORPHAN_SECONDS:g}"]
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        with open(directory / "agent.log", "ab") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        created = time.time()
        record = {"name": name, "cluster": self.cluster_name, "machine_type": config.machine_type,
                  "pid": process.pid, "started": _create_time(process.pid),
                  "created_at": created}
        (directory / RECORD).write_text(json.dumps(record))
        with self._lock:
            self._children[name] = process
        log.info("local_node_started", node=name, pid=process.pid)
        return Node(name, ZONE, "RUNNING", config.machine_type,
                    {CLUSTER_LABEL: self.cluster_name}, created)

    def _alive(self, record: dict[str, Any]) -> bool:
        name = str(record.get("name", ""))
        with self._lock:
            child = self._children.get(name)
        if child is not None:
            return child.poll() is None  # polling our own child also reaps it
        return _process(record) is not None

    def _stop(self, names: list[str]) -> None:
        """Stop these nodes' agents together, then remove their directories."""
        waiting: list[tuple[str, psutil.Process, list[psutil.Process]]] = []
        for name in names:
            record = _read(self.config.state_dir / name / RECORD)
            process = _process(record) if record is not None else None
            if process is None:
                continue
            with contextlib.suppress(psutil.Error):
                family = process.children(recursive=True)
                process.send_signal(signal.SIGTERM)
                waiting.append((name, process, family))
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _name, process, family in waiting:
            if not _wait_gone([process], deadline):
                with contextlib.suppress(psutil.Error):
                    process.kill()
            # What the agent left (its zygote and executors) goes too, once it is gone.
            if not _wait_gone(family, time.monotonic() + STOP_GRACE_SECONDS):
                for leftover in family:
                    with contextlib.suppress(psutil.Error):
                        leftover.kill()
        for name in names:
            with self._lock:
                child = self._children.pop(name, None)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=STOP_GRACE_SECONDS)
            shutil.rmtree(self.config.state_dir / name, ignore_errors=True)
            log.info("local_node_deleted", node=name)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "name" in record else None


def _create_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _process(record: dict[str, Any]) -> psutil.Process | None:
    """The record's process if it still runs (the same one: its start time matches)."""
    try:
        process = psutil.Process(int(record["pid"]))
        if abs(process.create_time() - float(record.get("started", 0.0))) > 0.01:
            return None  # the pid was reused
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except (psutil.Error, KeyError, ValueError, TypeError):
        return None


def _wait_gone(processes: list[psutil.Process], deadline: float) -> bool:
    """Whether every process exited (or is a zombie, which holds nothing) by `deadline`."""
    while True:
        alive = []
        for process in processes:
            with contextlib.suppress(psutil.Error):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
        if not alive:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)

"""Real burla daemons for tests: started as processes, ready when they say READY=1, cleaned up."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

READY_TIMEOUT = 30.0


class Notifier:
    """A NOTIFY_SOCKET for daemons to report readiness to, as systemd would."""

    def __init__(self) -> None:
        self.name = f"burla-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.messages: list[dict[str, str]] = []

    @property
    def env_value(self) -> str:
        return "@" + self.name

    def wait_ready(self, process: subprocess.Popen[bytes], log: Path) -> dict[str, str]:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for message in self.messages:
                if message.get("MAINPID") == str(process.pid) and message.get("READY") == "1":
                    return message
            if process.poll() is not None:
                raise RuntimeError(f"daemon exited with {process.returncode}:\n{log.read_text()}")
            self.sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                payload = self.sock.recv(4096).decode()
                self.messages.append(
                    dict(line.split("=", 1) for line in payload.splitlines() if "=" in line)
                )
        raise RuntimeError(f"daemon not ready in {READY_TIMEOUT}s:\n{log.read_text()}")

    def close(self) -> None:
        self.sock.close()


class PathNotifier(Notifier):
    """A NOTIFY_SOCKET bound to a filesystem path in `directory`.

    Abstract unix names are private to a network namespace; a path is reachable from daemons
    started inside another one (`ip netns exec`), so they can still say READY=1.
    """

    def __init__(self, directory: Path) -> None:
        path = directory / f"notify-{uuid.uuid4().hex[:8]}"
        if len(str(path)) > 100:  # sun_path holds 108 bytes
            path = Path(tempfile.gettempdir()) / path.name
        self.path = path
        self.name = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)
        self.messages = []

    @property
    def env_value(self) -> str:
        return str(self.path)

    def close(self) -> None:
        super().close()
        self.path.unlink(missing_ok=True)


@dataclass
class Cluster:
    """A coordinator and its agents on loopback, in `root` (a temp dir)."""

    root: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    endpoint: str = ""
    coordinator: subprocess.Popen[bytes] | None = None
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    notifier: Notifier = field(default_factory=Notifier)
    state: Path | None = None  # the coordinator's state dir; None: `root`/coordinator

    @property
    def state_dir(self) -> Path:
        """The coordinator's state dir (its job store, jobs.sqlite3, is in it)."""
        return self.state or self.root / "coordinator"

    def _spawn(self, args: list[str], name: str,
               prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.root / f"{name}.log"
        env = dict(os.environ, NOTIFY_SOCKET=self.notifier.env_value, PYTHONUNBUFFERED="1")
        for key in ("BURLA_CLUSTER", "BURLA_API_KEY", "BURLA_PARENT_JOB"):
            env.pop(key, None)
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "burla", *args], stdout=handle, stderr=handle,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        return process, log

    def start_coordinator(self, *extra: str) -> None:
        (self.root / "token").write_text(self.token)
        process, log = self._spawn(
            ["coordinator", "--endpoint", "tcp://127.0.0.1:0", "--state-dir",
             str(self.state_dir), "--token-file", str(self.root / "token"), *extra],
            "coordinator",
        )
        message = self.notifier.wait_ready(process, log)
        self.coordinator = process
        self.endpoint = message["STATUS"].split()[-1]

    def start_agent(self, *extra: str, cpus: int = 2) -> subprocess.Popen[bytes]:
        name = f"agent{len(self.agents)}"
        process, log = self._spawn(
            ["agent", "--coordinator", self.endpoint, "--state-dir", str(self.root / name),
             "--token-file", str(self.root / "token"), "--agent-id", name,
             "--cpus", str(cpus), "--log-level", "debug", *extra],
            name,
        )
        self.notifier.wait_ready(process, log)
        self.agents.append(process)
        return process

    def start_coordinator_at(self, bind: str, *extra: str) -> subprocess.Popen[bytes]:
        """Start a coordinator listening on `bind` with this cluster's state dir and token.

        Used to restart one on the endpoint and state of the one before it. A wildcard bind
        (tcp://0.0.0.0:0) makes `endpoint` the loopback address of the port it picked.
        """
        (self.root / "token").write_text(self.token)
        process, log = self._spawn(
            ["coordinator", "--endpoint", bind, "--state-dir", str(self.state_dir),
             "--token-file", str(self.root / "token"), *extra],
            "coordinator",
        )
        message = self.notifier.wait_ready(process, log)
        self.coordinator = process
        self.endpoint = message["STATUS"].split()[-1].replace("//0.0.0.0:", "//127.0.0.1:")
        return process

    def restart_coordinator(self, *extra: str) -> subprocess.Popen[bytes]:
        """Start a new coordinator on the endpoint and state dir of the last one (now dead)."""
        assert self.coordinator is not None and self.coordinator.poll() is not None, \
            "stop or kill the running coordinator first"
        return self.start_coordinator_at(self.endpoint, *extra)

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def start_agent_via(self, prefix: tuple[str, ...], coordinator: str, *extra: str,
                        cpus: int = 2) -> subprocess.Popen[bytes]:
        """Start an agent under a command prefix (e.g. `ip netns exec NS`), reaching the
        coordinator at `coordinator`. The prefix must exec the agent so its pid is the agent's.
        """
        name = f"agent{len(self.agents)}"
        process, log = self._spawn(
            ["agent", "--coordinator", coordinator, "--state-dir", str(self.root / name),
             "--token-file", str(self.root / "token"), "--agent-id", name,
             "--cpus", str(cpus), "--log-level", "debug", *extra],
            name, prefix,
        )
        self.notifier.wait_ready(process, log)
        self.agents.append(process)
        return process

    def executors(self, agent: subprocess.Popen[bytes]) -> list[psutil.Process]:
        """The processes running calls for the agent now: its `burla exec` descendants, less
        its zygote (a direct child run with --zygote, whose forks keep its command line) and
        any that are parents of another (a sandbox's reaper or init)."""
        found = []
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in psutil.Process(agent.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    cmdline = process.cmdline()
                    if "burla.exec" not in cmdline:
                        continue
                    if "--zygote" in cmdline and process.ppid() == agent.pid:
                        continue
                    if any("burla.exec" in c.cmdline() for c in process.children()):
                        continue
                    found.append(process)
        return found

    def status(self, endpoint: str | None = None) -> dict[str, Any]:
        """What `burla status` shows: nodes with their used CPUs, and this owner's jobs."""
        from burla import protocol
        from burla.client import admin
        from burla.config import ClusterAddress

        address = ClusterAddress(endpoint or self.endpoint, self.token, False, "test cluster")
        answer = admin.request(address, protocol.StatusRequest())
        assert isinstance(answer, protocol.StatusReply), answer
        return dict(answer.info)

    def env(self) -> dict[str, str]:
        return {"BURLA_CLUSTER": self.endpoint, "BURLA_API_KEY": self.token}

    def events(self, event: str) -> list[dict[str, Any]]:
        """The coordinator's log records of `event` so far (its log is one JSON object a
        line), e.g. "node_added" for each agent that registered."""
        found = []
        for line in (self.root / "coordinator.log").read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == event:
                    found.append(record)
        return found

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        processes = [p for p in [*self.agents, self.coordinator] if p is not None]
        descendants = []
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                descendants += psutil.Process(process.pid).children(recursive=True)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _, alive = psutil.wait_procs(descendants, timeout=5)
        for leftover in alive:
            leftover.kill()
        self.notifier.close()
        assert not alive, f"processes left behind after stop: {alive}"


@contextlib.contextmanager
def running_cluster(root: Path, agents: int = 1, cpus: int = 2,
                    agent_args: tuple[str, ...] = (),
                    coordinator_state: Path | None = None,
                    coordinator_args: tuple[str, ...] = ()) -> Iterator[Cluster]:
    cluster = Cluster(root, state=coordinator_state)
    try:
        cluster.start_coordinator(*coordinator_args)
        for _ in range(agents):
            cluster.start_agent(*agent_args, cpus=cpus)
        yield cluster
    finally:
        cluster.stop()

"""Real burla daemons for tests: started as processes, ready when they say READY=1, cleaned up."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class Cluster:
    """A coordinator and its agents on loopback, in `root` (a temp dir)."""

    root: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    endpoint: str = ""
    coordinator: subprocess.Popen[bytes] | None = None
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    notifier: Notifier = field(default_factory=Notifier)

    def _spawn(self, args: list[str], name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.root / f"{name}.log"
        env = dict(os.environ, NOTIFY_SOCKET=self.notifier.env_value, PYTHONUNBUFFERED="1")
        for key in ("BURLA_CLUSTER", "BURLA_API_KEY", "BURLA_PARENT_JOB"):
            env.pop(key, None)
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "burla", *args], stdout=handle, stderr=handle, env=env,
                stdin=subprocess.DEVNULL,
            )
        return process, log

    def start_coordinator(self, *extra: str) -> None:
        (self.root / "token").write_text(self.token)
        process, log = self._spawn(
            ["coordinator", "--endpoint", "tcp://127.0.0.1:0", "--state-dir",
             str(self.root / "coordinator"), "--token-file", str(self.root / "token"), *extra],
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
             "--cpus", str(cpus), *extra],
            name,
        )
        self.notifier.wait_ready(process, log)
        self.agents.append(process)
        return process

    def env(self) -> dict[str, str]:
        return {"BURLA_CLUSTER": self.endpoint, "BURLA_API_KEY": self.token}

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
                    agent_args: tuple[str, ...] = ()) -> Iterator[Cluster]:
    cluster = Cluster(root)
    try:
        cluster.start_coordinator()
        for _ in range(agents):
            cluster.start_agent(*agent_args, cpus=cpus)
        yield cluster
    finally:
        cluster.stop()

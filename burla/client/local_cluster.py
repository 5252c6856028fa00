"""The embedded per-user cluster: a coordinator and one agent as background processes.

The first call on a machine starts it; later calls and other processes reuse it (a file lock
makes sure only one starts it); it stops itself after an idle timeout. Readiness is learned
over NOTIFY_SOCKET, the same READY=1 that systemd gets, never by sleeping.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from burla import __version__, protocol
from burla.config import ClusterAddress, new_token, user_state_dir, write_private_json
from burla.errors import ClusterUnreachable

# Daemons of another burla version or wire protocol are restarted on this code.
_VERSION = f"{__version__}+protocol{protocol.PROTOCOL_VERSION}"

# Seconds the embedded cluster stays up with no job and no client.
IDLE_TIMEOUT_SECONDS = float(os.environ.get("BURLA_LOCAL_IDLE_TIMEOUT", "900"))
# Longest wait for the two daemons to report READY=1.
START_TIMEOUT_SECONDS = 30.0
# The agent stops when it has heard nothing from its coordinator for this long.
AGENT_ORPHAN_SECONDS = 30.0


def state_dir() -> Path:
    return user_state_dir() / "local"


def cluster_file() -> Path:
    return state_dir() / "cluster.json"


def read_info() -> dict[str, Any] | None:
    try:
        return dict(json.loads(cluster_file().read_text()))
    except (OSError, ValueError):
        return None


def exists(pid: int | None) -> bool:
    """A process with this pid exists (maybe not ours: see `is_alive`)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def is_alive(pid: int | None) -> bool:
    """Our daemon runs under this pid."""
    if not exists(pid):
        return False
    try:  # a reused pid is not our daemon
        return b"burla" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def running_info() -> dict[str, Any] | None:
    """The embedded cluster's record, if both daemons run and are of this burla version."""
    info = read_info()
    if (
        info
        and info.get("version") == _VERSION  # an upgrade restarts it on the new code
        and is_alive(info.get("coordinator_pid"))
        and is_alive(info.get("agent_pid"))
    ):
        return info
    return None


def ensure_running() -> ClusterAddress:
    """The embedded cluster's address, starting it first if it is not running."""
    info = _still_known()
    if info is None:
        info = running_info()
        if info is None:
            with _lock():
                info = running_info() or start()
        _remember(info)
    return ClusterAddress(info["endpoint"], info["token"], True, "the embedded local cluster")


# The record last found running, as (cluster.json path, its mtime, the record). A small job
# calls ensure_running each time: while the file is unchanged and both pids still exist, the
# record stands without re-reading it and /proc (a pid reused in between is caught by the
# job's connection, which restarts the cluster as for any lost one).
_known: tuple[Path, int, dict[str, Any]] | None = None


def _still_known() -> dict[str, Any] | None:
    if _known is None:
        return None
    path, mtime, info = _known
    try:
        if path != cluster_file() or path.stat().st_mtime_ns != mtime:
            return None
    except OSError:  # the file is gone
        return None
    return info if exists(info["coordinator_pid"]) and exists(info["agent_pid"]) else None


def _remember(info: dict[str, Any]) -> None:
    global _known
    path = cluster_file()
    with contextlib.suppress(OSError):
        _known = (path, path.stat().st_mtime_ns, info)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    state_dir().mkdir(parents=True, exist_ok=True)
    with open(state_dir() / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start() -> dict[str, Any]:
    """Start coordinator and agent, wait until both are ready, record them in cluster.json."""
    stop()
    directory = state_dir()
    token = new_token()
    token_file = directory / "token"
    write_private_json(token_file, {"token": token})
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    base = [sys.executable, "-m", "burla"]
    commands = {
        "coordinator": base + [
            "coordinator", "--endpoint", endpoint, "--state-dir", str(directory / "coordinator"),
            "--token-file", str(token_file), "--idle-timeout", str(IDLE_TIMEOUT_SECONDS),
        ],
        "agent": base + [
            "agent", "--coordinator", endpoint, "--state-dir", str(directory / "agent"),
            "--token-file", str(token_file), "--orphan-timeout", str(AGENT_ORPHAN_SECONDS),
        ],
    }
    pids = _start_and_wait(commands, directory)
    info = {"endpoint": endpoint, "token": token, "coordinator_pid": pids["coordinator"],
            "agent_pid": pids["agent"], "started_at": time.time(), "version": _VERSION}
    write_private_json(cluster_file(), info)
    return info


def _start_and_wait(commands: dict[str, list[str]], directory: Path) -> dict[str, int]:
    address = f"\0burla-notify-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        env = dict(os.environ, NOTIFY_SOCKET="@" + address[1:], PYTHONUNBUFFERED="1")
        for name in ("BURLA_CLUSTER", "BURLA_API_KEY", "BURLA_PARENT_JOB"):
            env.pop(name, None)
        processes = {}
        for role, command in commands.items():
            log_file = open(directory / f"{role}.log", "ab")  # noqa: SIM115 - the child keeps it
            processes[role] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env,
                start_new_session=True,  # outlives this process and its Ctrl-C
            )
            log_file.close()
        ready: set[int] = set()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while len(ready) < len(processes):
            for role, process in processes.items():
                if process.poll() is not None:
                    _kill(processes)
                    raise ClusterUnreachable(
                        f"the embedded {role} exited with code {process.returncode} while "
                        f"starting; its log: {directory / f'{role}.log'}"
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill(processes)
                raise ClusterUnreachable(
                    f"the embedded cluster did not get ready in {START_TIMEOUT_SECONDS:.0f}s; "
                    f"logs are in {directory}"
                )
            notify.settimeout(min(remaining, 0.2))
            try:
                payload = notify.recv(4096).decode()
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in payload.splitlines() if "=" in line)
            if fields.get("READY") == "1" and fields.get("MAINPID", "").isdigit():
                ready.add(int(fields["MAINPID"]))
    return {role: process.pid for role, process in processes.items()}


def _kill(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop(timeout: float = 10.0) -> bool:
    """Stop the embedded cluster if it runs; True if something was stopped."""
    info = read_info()
    if not info:
        return False
    pids = [int(pid) for pid in (info.get("agent_pid"), info.get("coordinator_pid"))
            if pid and is_alive(pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if is_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        cluster_file().unlink()
    return bool(pids)

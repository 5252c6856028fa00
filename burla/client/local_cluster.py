"""The embedded per-user cluster: a coordinator and this machine's agent, in one background
process (`burla coordinator --local-agent`).

There is one per interpreter (sys.prefix and Python version): its daemons and executors run
the interpreter that started it, so a call never runs in another environment's Python. The first
call starts it; later calls and other processes of that interpreter reuse it (a file lock makes
sure only one starts it); it stops itself after an idle timeout. Readiness is learned over
NOTIFY_SOCKET, the same READY=1 that systemd gets, never by sleeping.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from burla import __version__
from burla.config import ClusterAddress, new_token, path_of, user_state_dir, write_private_json
from burla.errors import ClusterUnreachable


@functools.cache
def _version() -> str:
    """What a cluster of this code calls itself: daemons of another burla version or wire
    protocol are restarted on this code. burla.protocol is imported here, not at the top, so
    a cold first call can start the cluster before it pays for that import."""
    from burla import protocol

    return f"{__version__}+protocol{protocol.PROTOCOL_VERSION}"

# Seconds the embedded cluster stays up with no job and no client.
IDLE_TIMEOUT_SECONDS = float(os.environ.get("BURLA_LOCAL_IDLE_TIMEOUT", "900"))
# Longest wait for the cluster's agent to report READY=1 (registered).
START_TIMEOUT_SECONDS = 30.0
# What `burla local down` writes beside the record of the cluster it stopped, so that a job of
# that cluster ends instead of starting it again.
STOPPED_FILE = "stopped.json"


def interpreter() -> dict[str, str]:
    """The interpreter and environment this process's embedded cluster runs."""
    return {"executable": sys.executable, "prefix": sys.prefix,
            "python_version": platform.python_version()}


@functools.cache
def interpreter_key() -> str:
    """This interpreter's cluster directory name: readable, and unique to sys.prefix and the
    Python minor version (two Pythons may share a prefix, as /usr often does)."""
    minor = ".".join(platform.python_version().split(".")[:2])
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(sys.prefix).name)[:40] or "root"
    digest = hashlib.sha256(f"{sys.prefix}\0{minor}".encode()).hexdigest()[:10]
    return f"{name}-py{minor}-{digest}"


def clusters_dir() -> Path:
    """Where every interpreter's embedded cluster keeps its state, one directory each."""
    return path_of(str(user_state_dir()), "local")


def state_dir() -> Path:
    return path_of(str(clusters_dir()), interpreter_key())


def cluster_file(directory: Path | None = None) -> Path:
    return path_of(str(directory or state_dir()), "cluster.json")


def read_info(directory: Path | None = None) -> dict[str, Any] | None:
    try:
        return dict(json.loads(cluster_file(directory).read_text()))
    except (OSError, ValueError):
        return None


def all_directories() -> list[Path]:
    """The state directories of every interpreter's embedded cluster that has a record, this
    one's included (and that of a burla before clusters were per interpreter)."""
    root = clusters_dir()
    found = sorted(p.parent for p in root.glob("*/cluster.json"))
    return found + [root] if cluster_file(root).exists() else found


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


def running_info(directory: Path | None = None) -> dict[str, Any] | None:
    """The record of the embedded cluster in `directory` (default: this interpreter's), if
    both its daemons run."""
    info = read_info(directory)
    if info and is_alive(info.get("coordinator_pid")) and is_alive(info.get("agent_pid")):
        return info
    return None


def _serves_this_interpreter(info: dict[str, Any] | None) -> bool:
    """The cluster runs this burla and this interpreter; any other is restarted on them."""
    python = (info or {}).get("python") or {}
    here = interpreter()
    return bool(
        info
        and info.get("version") == _version()  # an upgrade restarts it on the new code
        and python.get("prefix") == here["prefix"]
        and python.get("python_version") == here["python_version"]
    )


def _usable_info() -> dict[str, Any] | None:
    info = running_info()
    return info if _serves_this_interpreter(info) else None


def ensure_running(*, lost: bool = False) -> ClusterAddress:
    """The embedded cluster's address, starting it first if it is not running. `lost`: a job
    lost it, so the record kept from before is not trusted (a daemon this process started and
    that crashed is a zombie until reaped, and its pid still exists)."""
    return start_soon(lost=lost)()


def start_soon(*, lost: bool = False) -> Callable[[], ClusterAddress]:
    """What ensure_running does, without waiting for a cluster it has to start: the function
    returned waits for it and gives its address. A cold first call's own imports and pickling
    then overlap the cluster's start instead of coming before it. Call the function (in a
    `finally`): until then this process holds the start lock."""
    info = None if lost else _still_known()
    if info is None:
        info = _usable_info()
    if info is not None:
        _remember(info)
        return functools.partial(_address, info)
    held = contextlib.ExitStack()
    held.enter_context(_lock())
    try:
        info = _usable_info()  # another process may have started it while we waited
        finish_start = None if info is not None else _begin_start()
    except BaseException:
        held.close()
        raise

    def finish() -> ClusterAddress:
        with held:
            record = info if finish_start is None else finish_start()
        assert record is not None
        _remember(record)
        return _address(record)

    return finish


def _address(info: dict[str, Any]) -> ClusterAddress:
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
    """Start the cluster, wait until its agent has registered, record it in cluster.json."""
    return _begin_start()()


def _begin_start() -> Callable[[], dict[str, Any]]:
    """Start the cluster's process; the function returned waits until its agent has
    registered, records it in cluster.json and returns the record."""
    stop()
    directory = state_dir()
    token = new_token()
    token_file = directory / "token"
    write_private_json(token_file, {"token": token})
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    # One process: the coordinator with this machine's agent on its event loop, so the first
    # call waits for one interpreter's start, not two side by side on the same cores.
    command = [
        sys.executable, "-m", "burla", "coordinator", "--endpoint", endpoint,
        "--state-dir", str(directory / "coordinator"), "--token-file", str(token_file),
        "--idle-timeout", str(IDLE_TIMEOUT_SECONDS), "--local-agent", str(directory / "agent"),
    ]
    wait_ready = _spawn(command, directory)

    def finish() -> dict[str, Any]:
        pid = wait_ready()
        info = {"endpoint": endpoint, "token": token, "coordinator_pid": pid, "agent_pid": pid,
                "started_at": time.time(), "version": _version(), "python": interpreter()}
        write_private_json(cluster_file(), info)
        return info

    return finish


def _spawn(command: list[str], directory: Path) -> Callable[[], int]:
    """Start the cluster's process; the function returned gives its pid once its agent has
    registered (READY=1 with STATUS=registered: the coordinator listens before that)."""
    address = f"\0burla-notify-{uuid.uuid4().hex}"
    log = directory / "cluster.log"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        notify.bind(address)
        env = dict(os.environ, NOTIFY_SOCKET="@" + address[1:], PYTHONUNBUFFERED="1")
        for name in ("BURLA_CLUSTER", "BURLA_API_KEY", "BURLA_PARENT_JOB"):
            env.pop(name, None)
        with open(log, "ab") as log_file:  # the child keeps its own copy
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env,
                start_new_session=True,  # outlives this process and its Ctrl-C
            )
    except BaseException:
        notify.close()
        raise

    def wait_ready() -> int:
        with notify:
            return _wait_ready(process, notify, log)

    return wait_ready


def _wait_ready(process: subprocess.Popen[bytes], notify: socket.socket, log: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise ClusterUnreachable(
                f"the embedded cluster exited with code {process.returncode} while "
                f"starting; its log: {log}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _kill(process)
            raise ClusterUnreachable(
                f"the embedded cluster did not get ready in {START_TIMEOUT_SECONDS:.0f}s; "
                f"its log: {log}"
            )
        notify.settimeout(min(remaining, 0.2))
        try:
            payload = notify.recv(4096).decode()
        except TimeoutError:
            continue
        fields = dict(line.split("=", 1) for line in payload.splitlines() if "=" in line)
        if fields.get("READY") == "1" and fields.get("STATUS") == "registered":
            return process.pid


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop(timeout: float = 10.0, *, directory: Path | None = None,
         reason: str = "") -> bool:
    """Stop the embedded cluster in `directory` (default: this interpreter's) if it runs; True if
    something was stopped. With a `reason` (a deliberate stop, as by `burla local down`), its
    jobs' clients end them with that reason instead of starting the cluster again."""
    directory = directory or state_dir()
    info = read_info(directory)
    if not info:
        return False
    known = [int(pid) for pid in (info.get("agent_pid"), info.get("coordinator_pid")) if pid]
    pids = [pid for pid in known if is_alive(pid)]
    for pid in set(known) - set(pids):  # one that crashed, if this process started it
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    if pids and reason:  # before the daemons go, so a client that sees them gone finds it
        write_private_json(directory / STOPPED_FILE, {
            "cluster": _cluster_id(str(info.get("token", ""))), "reason": reason,
            "at": time.time()})
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
        cluster_file(directory).unlink()
    return bool(pids)


def deliberate_stop(address: ClusterAddress) -> str | None:
    """Why the embedded cluster at `address` is gone, if it was stopped on purpose (by `burla
    local down`), in words; None if not: a crashed cluster is started again, a stopped one not."""
    try:
        marker = json.loads((state_dir() / STOPPED_FILE).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("cluster") != _cluster_id(address.token):
        return None  # the stop of an earlier run of the cluster
    when = time.strftime("%H:%M:%S", time.localtime(float(marker.get("at", 0))))
    return f"the embedded cluster was stopped by {marker.get('reason')} at {when}"


def _cluster_id(token: str) -> str:
    # Each start makes a new token, so it names one run of the cluster; the marker holds its
    # hash, never the token itself.
    return hashlib.sha256(token.encode()).hexdigest()[:16]

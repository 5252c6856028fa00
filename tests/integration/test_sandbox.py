"""The executor sandbox against the real kernel: namespaces, mounts, uid, signals (root only)."""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import json
import os
import resource
import select
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from burla.agent.sandbox import (
    BASIC_DEVICES,
    DEV_SYMLINKS,
    NOBODY,
    SandboxError,
    SandboxSpec,
    enter_sandbox,
    sandbox_supported,
)

UNSUPPORTED = sandbox_supported()
pytestmark = [
    pytest.mark.skipif(UNSUPPORTED is not None, reason=f"sandbox unsupported: {UNSUPPORTED}"),
    pytest.mark.timeout(60),
]
# How long any one process event (a message, an exit) may take before the test fails.
EVENT_TIMEOUT = 15.0
PR_GET_PDEATHSIG = 2
Check = Callable[[], Any]


def _read_all(fd: int, timeout: float = EVENT_TIMEOUT) -> bytes:
    """Everything written to fd until every writer has closed it."""
    deadline, chunks = time.monotonic() + timeout, list[bytes]()
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no EOF on the result pipe within {timeout}s")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _read_line(fd: int, timeout: float = EVENT_TIMEOUT) -> str:
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, f"no message within {timeout}s"
    return os.read(fd, 4096).decode().strip()


def _wait_gone(pid: int, timeout: float = EVENT_TIMEOUT) -> bool:
    """True once pid has exited (zombie or reaped), False if it still runs after timeout."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _reap(pid: int, timeout: float = EVENT_TIMEOUT) -> int:
    if not _wait_gone(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"process {pid} still ran after {timeout}s")
    return os.waitpid(pid, 0)[1]


def _fork_sandboxed(spec: SandboxSpec, check: Check, out_fd: int, close_fds: list[int]) -> int:
    """Fork a child that enters the sandbox, runs check inside and writes its JSON to out_fd."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for fd in close_fds:
            os.close(fd)
        try:
            enter_sandbox(spec)
            reply = {"result": check()}
        except SandboxError as e:
            reply = {"error": str(e), "step": e.step, "errno": e.errno, "pid": os.getpid()}
        os.write(out_fd, json.dumps(reply).encode())
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


@dataclass
class Outcome:
    reply: dict[str, Any]
    status: int


def run_sandboxed(spec: SandboxSpec, check: Check) -> Outcome:
    r, w = os.pipe()
    pid = _fork_sandboxed(spec, check, w, [r])
    os.close(w)
    try:
        data = _read_all(r)
    finally:
        os.close(r)
    status = _reap(pid)
    assert data, f"the sandboxed child sent nothing (wait status {status})"
    return Outcome(json.loads(data), status)


def _ok(outcome: Outcome) -> Any:
    assert "result" in outcome.reply, outcome.reply
    assert os.waitstatus_to_exitcode(outcome.status) == 0
    return outcome.reply["result"]


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(left, timeout=EVENT_TIMEOUT)
    assert not alive, f"processes left behind: {alive}"


@dataclass
class Tree:
    """Files an executor must not read, next to one it may, outside the private tmp dirs."""

    root: Path
    state_dir: Path  # hidden: an agent state dir holding a world-readable token
    key_file: Path  # hidden: a world-readable secret file
    root_only: Path  # not hidden, mode 0600
    public: Path  # not hidden, mode 0644: proves the others fail for the right reason


@pytest.fixture
def tree() -> Iterator[Tree]:
    root = Path(tempfile.mkdtemp(prefix="burla-sandbox-test-", dir="/var/lib"))
    root.chmod(0o755)
    state_dir = root / "state"
    state_dir.mkdir(mode=0o755)
    files = {
        state_dir / "token": "state-secret",
        root / "agent.key": "key-secret",
        root / "root-only": "root-secret",
        root / "public": "public-text",
    }
    for path, text in files.items():
        path.write_text(text)
        path.chmod(0o600 if path.name == "root-only" else 0o644)
    yield Tree(root, state_dir, root / "agent.key", root / "root-only", root / "public")
    shutil.rmtree(root)


def _attempt(action: Callable[[], Any]) -> Any:
    try:
        return {"value": action()}
    except OSError as e:
        return {"error": type(e).__name__}


def test_namespaces_are_new_and_pid_is_small() -> None:
    kinds = ("pid", "mnt", "ipc")

    def inside() -> dict[str, Any]:
        return {
            "ns": {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in kinds},
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "proc_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        }

    result = _ok(run_sandboxed(SandboxSpec(), inside))
    for kind in kinds:
        assert result["ns"][kind] != os.readlink(f"/proc/self/ns/{kind}"), kind
    assert result["pid"] == 2 and result["ppid"] == 1
    assert result["proc_pids"] == [1, 2], "the fresh /proc shows only the namespace's processes"


def test_tmp_dirs_are_private_and_empty() -> None:
    host_marker = Path("/tmp") / f"burla-host-{uuid.uuid4().hex}"
    host_marker.write_text("host")
    inside_name = f"burla-inside-{uuid.uuid4().hex}"

    def inside() -> dict[str, Any]:
        listing = {d: os.listdir(d) for d in ("/tmp", "/var/tmp", "/dev/shm")}
        Path("/tmp", inside_name).write_text("written by the executor")
        return {"listing": listing, "read_back": Path("/tmp", inside_name).read_text()}

    try:
        result = _ok(run_sandboxed(SandboxSpec(), inside))
    finally:
        host_marker.unlink()
    assert result["listing"] == {"/tmp": [], "/var/tmp": [], "/dev/shm": []}
    assert result["read_back"] == "written by the executor"
    assert not (Path("/tmp") / inside_name).exists()


def test_unprivileged_ids_and_hidden_paths(tree: Tree) -> None:
    spec = SandboxSpec(hidden_paths=(str(tree.state_dir), str(tree.key_file)))

    def inside() -> dict[str, Any]:
        return {
            "uids": os.getresuid(),
            "gids": os.getresgid(),
            "groups": os.getgroups(),
            "cwd": os.getcwd(),
            "public": _attempt(tree.public.read_text),
            "token": _attempt((tree.state_dir / "token").read_text),
            "state_listing": _attempt(lambda: os.listdir(tree.state_dir)),
            "key": _attempt(tree.key_file.read_text),
            "root_only": _attempt(tree.root_only.read_text),
            "setuid_root": _attempt(lambda: os.setuid(0)),
        }

    result = _ok(run_sandboxed(spec, inside))
    assert result["uids"] == [NOBODY] * 3 and result["gids"] == [NOBODY] * 3
    assert result["groups"] == [] and result["cwd"] == "/"
    assert result["public"] == {"value": "public-text"}
    assert result["token"] == {"error": "PermissionError"}
    assert result["state_listing"] == {"error": "PermissionError"}
    assert result["key"] == {"value": ""}, "a hidden file reads as /dev/null"
    assert result["root_only"] == {"error": "PermissionError"}
    assert result["setuid_root"] == {"error": "PermissionError"}
    assert (tree.state_dir / "token").read_text() == "state-secret", "the host view is untouched"


def test_no_new_privs_rlimits_and_pdeath_signal() -> None:
    rlimits = {resource.RLIMIT_NOFILE: (64, 128), resource.RLIMIT_CORE: (0, 0)}
    spec = SandboxSpec(rlimits=rlimits, pdeath_signal=signal.SIGTERM)

    def inside() -> dict[str, Any]:
        status = dict(
            line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        pdeath = ctypes.c_int()
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(pdeath), 0, 0, 0) == 0
        return {
            "no_new_privs": status["NoNewPrivs"].strip(),
            "cap_eff": int(status["CapEff"], 16),
            "rlimits": {str(r): resource.getrlimit(r) for r in rlimits},
            "pdeath": pdeath.value,
        }

    result = _ok(run_sandboxed(spec, inside))
    assert result["no_new_privs"] == "1"
    assert result["cap_eff"] == 0
    assert result["rlimits"] == {str(r): list(v) for r, v in rlimits.items()}
    assert result["pdeath"] == signal.SIGTERM


def test_workdir_is_created_owned_and_entered() -> None:
    def inside() -> dict[str, Any]:
        st = os.stat(".")
        return {
            "cwd": os.getcwd(),
            "owner": [st.st_uid, st.st_gid],
            "mode": stat.S_IMODE(st.st_mode),
        }

    result = _ok(run_sandboxed(SandboxSpec(workdir="/tmp/work/job"), inside))
    assert result == {"cwd": "/tmp/work/job", "owner": [NOBODY, NOBODY], "mode": 0o700}


def _host_char_devices() -> set[str]:
    return {
        e.name for e in os.scandir("/dev") if stat.S_ISCHR(e.stat(follow_symlinks=False).st_mode)
    }


@pytest.mark.parametrize("with_other_device", [False, True], ids=["zero", "zero+other"])
def test_private_dev_holds_only_basic_and_listed_nodes(with_other_device: bool) -> None:
    basics = {Path(p).name for p in BASIC_DEVICES if os.path.exists(p)}
    others = sorted(_host_char_devices() - basics - set(DEV_SYMLINKS))
    assert others, "the host /dev must hold nodes beyond the basics for this test to mean much"
    extra = ["/dev/zero"] + ([f"/dev/{others[0]}"] if with_other_device else [])
    expected = basics | {Path(p).name for p in extra} | set(DEV_SYMLINKS) | {"pts", "shm"}

    def inside() -> dict[str, Any]:
        with open("/dev/zero", "rb") as zero, open("/dev/null", "wb") as null:
            null.write(b"discarded")
            zeros = zero.read(8)
        nodes = {p: [os.stat(p).st_rdev, stat.S_IMODE(os.stat(p).st_mode)] for p in extra}
        return {"dev": sorted(os.listdir("/dev")), "zeros": zeros.hex(), "nodes": nodes}

    result = _ok(run_sandboxed(SandboxSpec(private_dev=tuple(extra)), inside))
    assert set(result["dev"]) == expected
    assert not set(result["dev"]) & (set(others) - {Path(p).name for p in extra})
    assert result["zeros"] == "00" * 8
    for path, (rdev, mode) in result["nodes"].items():
        assert [rdev, mode] == [os.stat(path).st_rdev, stat.S_IMODE(os.stat(path).st_mode)]


def test_socket_opened_before_entering_keeps_working() -> None:
    ours, theirs = socket.socketpair()

    def inside() -> str:
        theirs.sendall(b"hello from the sandbox")
        return theirs.recv(64).decode()

    r, w = os.pipe()
    pid = _fork_sandboxed(SandboxSpec(), inside, w, [r, ours.fileno()])
    os.close(w)
    theirs.close()
    try:
        ours.settimeout(EVENT_TIMEOUT)
        assert ours.recv(64) == b"hello from the sandbox"
        ours.sendall(b"hello from the agent")
        reply = json.loads(_read_all(r))
    finally:
        ours.close()
        os.close(r)
    assert os.waitstatus_to_exitcode(_reap(pid)) == 0
    assert reply == {"result": "hello from the agent"}


def _start_waiting_executor(spec: SandboxSpec, on_sigterm_exit: int | None) -> tuple[int, int]:
    """Fork a sandboxed executor that reports readiness, then waits for a signal forever.

    Returns the outer reaper's pid and the read end of its pipe."""
    r, w = os.pipe()

    def inside() -> None:
        if on_sigterm_exit is not None:
            signal.signal(signal.SIGTERM, lambda *_: os._exit(on_sigterm_exit))
        os.write(w, b"ready\n")
        while True:
            signal.pause()

    pid = _fork_sandboxed(spec, inside, w, [r])
    os.close(w)
    assert _read_line(r) == "ready"
    return pid, r


def _sandbox_pids(outer: int) -> list[int]:
    """The outer reaper, pid 1 of its namespace and the executor, as host pids."""
    below = psutil.Process(outer).children(recursive=True)
    assert len(below) == 2, f"expected pid 1 and the executor under {outer}, got {below}"
    return [outer] + [p.pid for p in below]


@pytest.mark.parametrize(
    ("on_sigterm_exit", "expected"),
    [(None, -signal.SIGTERM), (7, 7)],
    ids=["default-action", "handler-exits-7"],
)
def test_sigterm_to_outer_reaper_reaches_executor(
    on_sigterm_exit: int | None, expected: int
) -> None:
    outer, r = _start_waiting_executor(SandboxSpec(), on_sigterm_exit)
    try:
        pids = _sandbox_pids(outer)
        os.kill(outer, signal.SIGTERM)
        assert os.waitstatus_to_exitcode(_reap(outer)) == expected
        assert all(_wait_gone(pid) for pid in pids)
    finally:
        os.close(r)


def test_executor_exit_code_and_crash_signal_propagate() -> None:
    def exits_3() -> None:
        os._exit(3)

    def segfaults() -> None:
        faulthandler.disable()  # pytest's would print a traceback before the crash
        ctypes.string_at(0)

    assert os.waitstatus_to_exitcode(run_sandboxed_status(exits_3)) == 3
    assert os.waitstatus_to_exitcode(run_sandboxed_status(segfaults)) == -signal.SIGSEGV


def run_sandboxed_status(check: Check) -> int:
    r, w = os.pipe()
    pid = _fork_sandboxed(SandboxSpec(), check, w, [r])
    os.close(w)
    try:
        assert _read_all(r) == b"", "the check was to end the executor before it replied"
    finally:
        os.close(r)
    return _reap(pid)


def test_killing_the_parent_kills_the_sandbox() -> None:
    """The agent-side forker (here `middle`) is SIGKILLed: every sandbox process must follow."""
    report_r, report_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(report_r)
            outer, ready = _start_waiting_executor(SandboxSpec(), None)
            os.write(report_w, f"{outer}\n".encode())
            os.waitpid(outer, 0)
        finally:
            os._exit(1)
    os.close(report_w)
    try:
        pids = _sandbox_pids(int(_read_line(report_r)))
    finally:
        os.close(report_r)
    os.kill(middle, signal.SIGKILL)
    assert os.waitstatus_to_exitcode(_reap(middle)) == -signal.SIGKILL
    still_running = [pid for pid in pids if not _wait_gone(pid)]
    assert not still_running, f"sandbox processes outlived their parent: {still_running}"


def test_failed_step_is_named_before_any_fork() -> None:
    outcome = run_sandboxed(SandboxSpec(hidden_paths=("/nonexistent/burla-state",)), dict)
    assert outcome.reply["step"] == "hide /nonexistent/burla-state"
    assert "no such path" in outcome.reply["error"] and outcome.reply["errno"] == errno.ENOENT
    assert outcome.reply["pid"] > 2, "raised in the caller's process, outside any namespace"


def test_failed_step_inside_names_step_and_errno() -> None:
    outcome = run_sandboxed(SandboxSpec(workdir="/proc/burla-cannot-exist"), dict)
    assert outcome.reply["step"] == "create workdir /proc/burla-cannot-exist"
    assert outcome.reply["errno"] is not None
    assert "ENOENT" in outcome.reply["error"] or "EACCES" in outcome.reply["error"]
    assert outcome.reply["pid"] == 2, "raised in the executor, which alone returns"


def test_spec_refuses_root_and_bad_values() -> None:
    with pytest.raises(ValueError, match="unprivileged"):
        SandboxSpec(uid=0)
    with pytest.raises(ValueError, match="absolute"):
        SandboxSpec(hidden_paths=("relative/state",))
    with pytest.raises(ValueError, match="under /dev/"):
        SandboxSpec(private_dev=("/etc/passwd",))
    with pytest.raises(ValueError, match="RLIMIT_NOFILE"):
        SandboxSpec(rlimits={resource.RLIMIT_NOFILE: (10, 5)})


def test_processes_the_user_leaves_behind_die_with_the_executor() -> None:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def inside() -> None:
        subprocess.Popen(["sleep", "1000"], start_new_session=True)  # escapes its parent's group
        os.write(ready_w, b"ready\n")
        select.select([go_r], [], [], EVENT_TIMEOUT)
        os._exit(0)

    out_r, out_w = os.pipe()
    outer = _fork_sandboxed(SandboxSpec(), inside, out_w, [out_r, ready_r, go_w])
    for fd in (out_w, ready_w, go_r):
        os.close(fd)
    try:
        assert _read_line(ready_r) == "ready"
        below = psutil.Process(outer).children(recursive=True)
        assert [p.name() for p in below].count("sleep") == 1, below
        os.write(go_w, b"go")
        assert os.waitstatus_to_exitcode(_reap(outer)) == 0
        still_running = [p.pid for p in below if not _wait_gone(p.pid)]
        assert not still_running, f"left behind: {still_running}"
    finally:
        for fd in (out_r, ready_r, go_w):
            os.close(fd)

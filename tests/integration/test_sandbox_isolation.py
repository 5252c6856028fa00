"""The executor sandbox against the real kernel: what an executor can see and do inside it
(namespaces, private /tmp and /dev, ids, hidden paths, limits). Root only."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import socket
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from burla.agent.sandbox import BASIC_DEVICES, DEV_SYMLINKS, NOBODY, SandboxSpec
from tests.integration.sandbox_harness import (
    EVENT_TIMEOUT,
    MARKS,
    fork_sandboxed,
    no_leftover_processes,  # noqa: F401 - an autouse fixture: importing it applies it here
    read_all,
    reap,
    result_of,
    run_sandboxed,
)

pytestmark = MARKS
PR_GET_PDEATHSIG = 2


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

    result = result_of(run_sandboxed(SandboxSpec(), inside))
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
        result = result_of(run_sandboxed(SandboxSpec(), inside))
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

    result = result_of(run_sandboxed(spec, inside))
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

    result = result_of(run_sandboxed(spec, inside))
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

    result = result_of(run_sandboxed(SandboxSpec(workdir="/tmp/work/job"), inside))
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

    result = result_of(run_sandboxed(SandboxSpec(private_dev=tuple(extra)), inside))
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
    pid = fork_sandboxed(SandboxSpec(), inside, w, [r, ours.fileno()])
    os.close(w)
    theirs.close()
    try:
        ours.settimeout(EVENT_TIMEOUT)
        assert ours.recv(64) == b"hello from the sandbox"
        ours.sendall(b"hello from the agent")
        reply = json.loads(read_all(r))
    finally:
        ours.close()
        os.close(r)
    assert os.waitstatus_to_exitcode(reap(pid)) == 0
    assert reply == {"result": "hello from the agent"}

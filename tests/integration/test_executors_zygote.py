"""Executors fork from the agent's zygote, which holds no ZeroMQ context, and stay warm between
jobs of one owner and shape; the zygote speaks its socket protocol and reports exit statuses."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from burla import remote_parallel_map
from burla.exec.zygote import MAX_PACKET_BYTES, pack, unpack

pytestmark = pytest.mark.timeout(60)
# Longest the zygote may take to answer one request.
REPLY_TIMEOUT = 30.0


def whoami(_x: Any) -> tuple[int, int]:
    time.sleep(0.3)  # long enough that both executors of the job take an input
    return os.getpid(), os.getppid()


def test_executors_are_forked_by_a_zygote_without_zmq_context(cluster) -> None:
    results = remote_parallel_map(whoami, [1, 2], spinner=False)
    parents = {parent for _, parent in results}
    assert len(parents) == 1
    zygote = psutil.Process(parents.pop())
    assert "--zygote" in zygote.cmdline()
    assert zygote.parent().pid == cluster.agents[0].pid
    # A ZeroMQ context starts I/O threads; the zygote has its module loaded but one thread.
    assert zygote.num_threads() == 1
    maps = Path(f"/proc/{zygote.pid}/maps").read_text()
    assert "libzmq" in maps


def test_warm_executors_serve_the_next_job_of_the_same_shape_without_a_start(cluster) -> None:
    first = {pid for pid, _ in remote_parallel_map(whoami, [1, 2], spinner=False)}
    second = {pid for pid, _ in remote_parallel_map(whoami, [1, 2], spinner=False)}
    assert len(first) == 2 and second == first
    other_shape = {pid for pid, _ in remote_parallel_map(whoami, [1], func_cpu=2,
                                                          spinner=False)}
    assert not other_shape & first


@pytest.fixture
def zygote() -> Iterator[tuple[subprocess.Popen[bytes], socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    process = subprocess.Popen(
        [sys.executable, "-m", "burla.exec", "--zygote", "--control-fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
    )
    theirs.close()
    try:
        yield process, ours
    finally:
        ours.close()  # EOF: the zygote quits, and its children die with it
        try:
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def receive(sock: socket.socket) -> dict[str, Any]:
    ready, _, _ = select.select([sock], [], [], REPLY_TIMEOUT)
    assert ready, f"no message from the zygote within {REPLY_TIMEOUT}s"
    return unpack(sock.recv(MAX_PACKET_BYTES))


def test_zygote_forks_on_request_and_reports_each_exit_status(zygote) -> None:
    process, sock = zygote
    assert receive(sock) == {"op": "ready", "pid": process.pid}
    request = {"op": "fork", "endpoint": "ipc://@burla-test-nobody-listens", "env": {},
               "sandbox": None}
    sock.send(pack({**request, "id": "quits"}))
    forked = receive(sock)
    assert forked["op"] == "forked" and forked["id"] == "quits"
    assert psutil.Process(forked["pid"]).ppid() == process.pid
    sock.send(pack({"op": "go", "id": "quits", "ok": False}))  # not placed: it must not run
    exited = receive(sock)
    assert exited["id"] == "quits" and os.waitstatus_to_exitcode(exited["status"]) == 125

    sock.send(pack({**request, "id": "killed"}))
    pid = receive(sock)["pid"]
    sock.send(pack({"op": "go", "id": "killed", "ok": True}))
    os.kill(pid, signal.SIGKILL)
    exited = receive(sock)
    assert exited == {"op": "exited", "id": "killed", "pid": pid, "status": exited["status"],
                      "crash": "", "output": [], "lost": 0}  # SIGKILL: no handler ran, and
    # it printed nothing: no crash report, no last words
    assert os.waitstatus_to_exitcode(exited["status"]) == -signal.SIGKILL
    assert not psutil.pid_exists(pid)
    sock.send(pack({"op": "quit"}))
    assert process.wait(timeout=10) == 0


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-files limit in /proc/{pid}/limits")


def test_zygote_raises_its_open_files_limit_and_executors_keep_the_original() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = min(hard, 256)
    if soft >= min(hard, 1 << 16):
        pytest.skip("the hard open-files limit leaves no room to raise")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    process = subprocess.Popen(
        [sys.executable, "-m", "burla.exec", "--zygote", "--control-fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    theirs.close()
    try:
        assert receive(ours)["op"] == "ready"
        assert _soft_nofile(process.pid) == min(hard, 1 << 16)  # four fds per executor
        ours.send(pack({"op": "fork", "id": "x", "endpoint": "ipc://@burla-test-nobody-listens",
                        "env": {}, "sandbox": None}))
        pid = receive(ours)["pid"]
        ours.send(pack({"op": "go", "id": "x", "ok": True}))
        deadline = time.monotonic() + REPLY_TIMEOUT  # it sets its limit before it goes
        while _soft_nofile(pid) != soft:
            assert time.monotonic() < deadline, f"executor's limit {_soft_nofile(pid)}"
            time.sleep(0.01)
    finally:
        ours.close()
        process.wait(timeout=10)

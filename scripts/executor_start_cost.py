"""Measure what a new executor costs: fork from the zygote against a plain `python -m burla.exec`.

Each sample runs from the request to the executor's Hello on a real ROUTER socket, the moment an
agent can hand it work. Usage: python scripts/executor_start_cost.py [--samples 20]
(as root with cgroup v1 it also measures zygote + cgroup, and zygote + cgroup + sandbox).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from burla import protocol
from burla.agent.cgroups import Cgroup, CgroupBackend, Limits, detect_backend
from burla.agent.limits import base_sandbox
from burla.agent.sandbox import sandbox_supported
from burla.exec.zygote import MAX_PACKET_BYTES, pack, unpack

TIMEOUT_MS = 30_000


class Bench:
    def __init__(self) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.endpoint = f"ipc://@burla-bench-{uuid.uuid4().hex}"
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.bind(self.endpoint)

    def wait_hello(self, executor_id: str) -> None:
        while True:
            if not self.router.poll(TIMEOUT_MS):
                raise TimeoutError(f"no Hello from {executor_id}")
            frames = self.router.recv_multipart()
            msg = protocol.decode(frames[1:])
            if isinstance(msg, protocol.Hello) and frames[0].decode() == executor_id:
                self.router.send_multipart([frames[0], *protocol.encode(protocol.Shutdown(""))])
                return

    def plain(self) -> float:
        executor_id = uuid.uuid4().hex
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "burla.exec", "--endpoint",
                                    self.endpoint, "--id", executor_id], stdin=subprocess.DEVNULL)
        self.wait_hello(executor_id)
        elapsed = time.perf_counter() - started
        process.wait()
        return elapsed


class Zygote:
    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "burla.exec", "--zygote", "--control-fd",
             str(theirs.fileno())], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        assert self.receive()["op"] == "ready"

    def receive(self) -> dict[str, Any]:
        ready, _, _ = select.select([self.sock], [], [], TIMEOUT_MS / 1000)
        if not ready:
            raise TimeoutError("the zygote did not answer")
        return unpack(self.sock.recv(MAX_PACKET_BYTES))

    def fork(self, backend: CgroupBackend | None, sandbox: dict[str, Any] | None) -> float:
        executor_id = f"bench-{uuid.uuid4().hex[:12]}"
        started = time.perf_counter()
        cgroup: Cgroup | None = None
        if backend is not None:
            cgroup = backend.create(executor_id, Limits(cpus=1))
        self.sock.send(pack({"op": "fork", "id": executor_id, "endpoint": self.bench.endpoint,
                             "env": {}, "sandbox": sandbox}))
        forked = self.receive()
        if cgroup is not None:
            cgroup.add_process(forked["pid"])
        self.sock.send(pack({"op": "go", "id": executor_id, "ok": True}))
        self.bench.wait_hello(executor_id)
        elapsed = time.perf_counter() - started
        exited = self.receive()
        assert exited["op"] == "exited" and exited["id"] == executor_id, exited
        if cgroup is not None:
            cgroup.remove()
        return elapsed

    def close(self) -> None:
        self.sock.send(pack({"op": "quit"}))
        self.process.wait(timeout=10)


def report(name: str, sample: Callable[[], float], count: int) -> None:
    sample()  # warm the page cache and the zygote's first fork
    times = sorted(sample() * 1000 for _ in range(count))
    p90 = times[int(0.9 * (len(times) - 1))]
    print(f"{name:38s} median {statistics.median(times):7.1f} ms   p90 {p90:7.1f} ms   "
          f"min {times[0]:6.1f} ms   (n={count})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    bench = Bench()
    zygote = Zygote(bench)
    backend: CgroupBackend | None = None
    try:
        report("plain `python -m burla.exec`", bench.plain, args.samples)
        report("zygote fork", lambda: zygote.fork(None, None), args.samples)
        if os.geteuid() == 0:
            backend = detect_backend(root_name=f"burla-bench-{os.getpid()}")
        if backend is not None and backend.enforced:
            report(f"zygote fork + {backend.name} cgroup", lambda: zygote.fork(backend, None),
                   args.samples)
            if sandbox_supported() is None:
                with tempfile.TemporaryDirectory() as state:
                    spec = base_sandbox(Path(state), None)
                    fields = dataclasses.asdict(spec)
                    report(f"zygote fork + {backend.name} cgroup + sandbox",
                           lambda: zygote.fork(backend, fields), args.samples)
    finally:
        zygote.close()
        if backend is not None:
            backend.cleanup_stale()
            backend.remove_root()
        bench.router.close(linger=0)
        bench.ctx.term()


if __name__ == "__main__":
    main()

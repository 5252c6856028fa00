"""W9: a real coordinator alone against 1,000 simulated agents x 32 slots on loopback.

The simulated agents live in one child process: each is a DEALER that registers, pings, grants
credit and answers every chunk at once, echoing its inputs as results, so the coordinator (and
the client) is what is measured. Each batch reports `--us-per-input` of compute per input
(default 20 us, a fast function), which the client uses to size chunks as it would for real
executors. Reports the dispatch rate of a large job (inputs and chunks per second) and the
coordinator's CPU while 1,000 agents idle.
Run: python -m benchmarks.w9_coordinator [--agents N] [--inputs N].
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import psutil
import zmq

from burla import __version__, protocol, transport

PING_SECONDS = 1.0


def _start_coordinator(state: str, token: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    token_file = os.path.join(state, "token")
    with open(token_file, "w") as handle:
        handle.write(token)
    process = subprocess.Popen(
        [sys.executable, "-m", "burla", "coordinator", "--endpoint", endpoint, "--state-dir",
         os.path.join(state, "coordinator"), "--token-file", token_file, "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return process, endpoint


def simulate_agents(endpoint: str, token: str, agents: int, slots: int, us_per_input: float,
                    ready: Any, stop: Any, chunks_seen: Any) -> None:
    """Run `agents` fake agents until `stop` is set; set `ready` once all are registered."""
    ctx: zmq.Context[Any] = zmq.Context()
    python = ".".join(platform.python_version_tuple()[:2])
    socks = []
    poller = zmq.Poller()
    for n in range(agents):
        session = uuid.uuid4().hex[:8]
        sock = transport.dealer_socket(ctx, endpoint, f"agent-sim{n}-{session}".encode())
        transport.send_sync(sock, protocol.Hello(
            "agent", protocol.PROTOCOL_VERSION, __version__, token, session,
            {"agent_id": f"sim{n}", "cpus": slots, "ram_gb": 128, "gpus": [], "image": "",
             "python_version": python}))
        poller.register(sock, zmq.POLLIN)
        socks.append(sock)
    welcomed: set[int] = set()
    index_of = {sock: n for n, sock in enumerate(socks)}
    last_ping = time.monotonic()
    while not stop.is_set():
        for sock, _ in poller.poll(100):
            while sock.poll(0):
                _, msg = transport.recv_sync(sock)
                if isinstance(msg, protocol.Welcome):
                    welcomed.add(index_of[sock])
                    if len(welcomed) == agents:
                        ready.set()
                elif isinstance(msg, protocol.Assign):
                    transport.send_sync(sock, protocol.Credit(msg.job_id, msg.slots * 2))
                elif isinstance(msg, protocol.Chunk):
                    chunks_seen.value += 1
                    count = msg.count - msg.skip
                    # A result batch is a pickle of the list of values, like a chunk's inputs:
                    # echoing the chunk's own blob returns every input as its result.
                    blob = msg.data if not msg.skip else pickle.dumps(
                        pickle.loads(msg.data)[msg.skip:])
                    transport.send_sync(sock, protocol.Results(
                        msg.job_id, msg.chunk_id, msg.attempt, msg.first_index + msg.skip, count,
                        [], True, 0, int(count * us_per_input * 1000), blob))
        now = time.monotonic()
        if now - last_ping >= PING_SECONDS:
            last_ping = now
            for sock in socks:
                transport.send_sync(sock, protocol.Ping())
    for sock in socks:
        sock.close(linger=0)
    ctx.term()


def noop(x: Any) -> Any:
    return x


def run(agents: int, slots: int, inputs: int, idle_seconds: float,
        us_per_input: float = 20.0) -> dict[str, float]:
    token = uuid.uuid4().hex
    with tempfile.TemporaryDirectory() as state:
        coordinator, endpoint = _start_coordinator(state, token)
        ready, stop = multiprocessing.Event(), multiprocessing.Event()
        chunks_seen = multiprocessing.Value("q", 0)
        fleet = multiprocessing.Process(
            target=simulate_agents,
            args=(endpoint, token, agents, slots, us_per_input, ready, stop, chunks_seen))
        fleet.start()
        try:
            if not ready.wait(120):
                raise RuntimeError("the simulated agents did not all register in 120 s")
            usage = psutil.Process(coordinator.pid)
            time.sleep(2)  # let registration traffic drain before the idle sample
            before = usage.cpu_times()
            time.sleep(idle_seconds)
            after = usage.cpu_times()
            idle_cpu = (after.user + after.system - before.user - before.system) / idle_seconds
            os.environ["BURLA_CLUSTER"], os.environ["BURLA_API_KEY"] = endpoint, token
            from burla import remote_parallel_map

            busy_before = usage.cpu_times()
            started = time.perf_counter()
            out = remote_parallel_map(noop, range(inputs), spinner=False)
            elapsed = time.perf_counter() - started
            busy_after = usage.cpu_times()
            assert out == list(range(inputs)), "W9: results differ from inputs"
            chunks = chunks_seen.value
        finally:
            stop.set()
            fleet.join(30)
            coordinator.terminate()
            coordinator.wait(10)
    busy_cpu = (busy_after.user + busy_after.system - busy_before.user - busy_before.system)
    return {"agents": agents, "slots": agents * slots, "inputs": inputs, "chunks": chunks,
            "seconds": elapsed, "inputs_per_second": inputs / elapsed,
            "chunks_per_second": chunks / elapsed,
            "coordinator_cpu_percent_of_core_during_job": busy_cpu / elapsed * 100,
            "idle_cpu_percent_of_core": idle_cpu * 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=2_000_000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--us-per-input", type=float, default=20.0,
                        help="compute time each simulated call reports, in microseconds")
    args = parser.parse_args()
    result = run(args.agents, args.slots, args.inputs, args.idle_seconds, args.us_per_input)
    for key, value in result.items():
        print(f"{key}: {value:,.1f}" if isinstance(value, float) else f"{key}: {value:,}")


if __name__ == "__main__":
    main()

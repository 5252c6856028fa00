"""Start the zygote process (burla.exec.zygote's fork server) and hand its socket to the agent.

The agent starts one first thing, before its own imports (about 0.2 s), so that the zygote's
start (an interpreter and the executor runtime, about 0.15 s) overlaps them instead of
following them: the embedded cluster's first call waits for both. This module stays light for
that reason: no asyncio, no logging.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

# The agent's environment the zygote (so every executor) never inherits: service-manager
# plumbing and the cluster credentials; a job's own variables come with each Load.
PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
               "LISTEN_FDNAMES", "BURLA_API_KEY", "BURLA_CLUSTER", "BURLA_PARENT_JOB")


@dataclass
class Spawned:
    process: subprocess.Popen[bytes]
    sock: socket.socket  # the agent's end of the control socket, blocking
    started_at: float  # time.monotonic() at the spawn


def spawn() -> Spawned:
    agent_side, zygote_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
    fd = zygote_side.fileno()
    started_at = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "burla.exec", "--zygote", "--control-fd", str(fd)],
        pass_fds=[fd], stdin=subprocess.DEVNULL, env=env,
        start_new_session=True,  # a Ctrl-C at the agent's terminal is not the calls' business
    )
    zygote_side.close()
    return Spawned(process, agent_side, started_at)


_early: Spawned | None = None


def start_early() -> None:
    """Start the zygote now, for the agent's first `take`."""
    global _early
    if _early is None:
        _early = spawn()


def take() -> Spawned:
    """The zygote started early, the first time; a new one after that."""
    global _early
    spawned, _early = _early, None
    if spawned is not None and spawned.process.poll() is None:
        return spawned
    if spawned is not None:
        spawned.sock.close()
    return spawn()

"""Connections to clusters, kept idle between the jobs of this process.

A job that finds an idle connection skips the TCP connect and the ZeroMQ handshake, about a
third of a small job's round trip on loopback, and, while the coordinator still knows the
connection, its Hello as well. A connection is kept only after a job ended cleanly on it (every
result received and acknowledged); messages of that job still arriving are dropped when the
next job takes it. This module never looks inside a message.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import zmq

from burla import transport
from burla.config import CLIENT_FORGET_SECONDS

# Idle connections kept per cluster endpoint (a few threads may run jobs at once).
IDLE_PER_CLUSTER = 4
# Linger of a connection closed for good: a closing Ack or Cancel must leave, a dead peer must
# not hold us.
CLOSE_LINGER_MS = 1000
# A kept connection this idle says Hello again: well before the coordinator forgets it.
WELCOMED_SECONDS = CLIENT_FORGET_SECONDS / 2


@dataclass
class Kept:
    sock: zmq.Socket[Any]
    token: str  # the one its last Hello carried
    used_at: float  # time.monotonic() of its last job's end


def new_connection(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    """A fresh connection to `endpoint`, under a routing id of its own."""
    return transport.dealer_socket(ctx, endpoint, f"client-{uuid.uuid4().hex}".encode())


class ConnectionPool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[Kept]] = {}
        self._pid = os.getpid()

    def take(
        self, ctx: zmq.Context[Any], endpoint: str, token: str
    ) -> tuple[zmq.Socket[Any], bool]:
        """An idle connection to `endpoint` with nothing left to read, or a new one; and whether
        the coordinator still knows it under `token` (no Hello needed)."""
        with self._lock:
            if self._pid != os.getpid():  # forked: those sockets are the parent's
                self._idle, self._pid = {}, os.getpid()
            idle = self._idle.get(endpoint)
            kept = idle.pop() if idle else None
        if kept is None:
            return new_connection(ctx, endpoint), False
        while kept.sock.poll(0):  # the previous job's last words: not for the next job
            kept.sock.recv_multipart()
        welcomed = kept.token == token and time.monotonic() - kept.used_at < WELCOMED_SECONDS
        return kept.sock, welcomed

    def give_back(self, endpoint: str, sock: zmq.Socket[Any], token: str) -> None:
        """Keep `sock`, welcomed under `token`, for the next job to `endpoint` (or close it, if
        enough are kept)."""
        with self._lock:
            idle = self._idle.setdefault(endpoint, [])
            if len(idle) < IDLE_PER_CLUSTER and self._pid == os.getpid():
                idle.append(Kept(sock, token, time.monotonic()))
                return
        sock.close(linger=CLOSE_LINGER_MS)


CONNECTIONS = ConnectionPool()

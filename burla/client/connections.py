"""Connections to clusters, kept idle between the jobs of this process.

A job that finds an idle connection skips the TCP connect and the ZeroMQ handshake, about a
third of a small job's round trip on loopback. A connection is kept only after a job ended
cleanly on it (every result received and acknowledged); messages of that job still arriving
are dropped when the next job takes it. This module never looks inside a message.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import zmq

from burla import transport

# Idle connections kept per cluster endpoint (a few threads may run jobs at once).
IDLE_PER_CLUSTER = 4
# Linger of a connection closed for good: a closing Ack or Cancel must leave, a dead peer must
# not hold us.
CLOSE_LINGER_MS = 1000


class ConnectionPool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[zmq.Socket[Any]]] = {}
        self._pid = os.getpid()

    def take(self, ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
        """An idle connection to `endpoint` with nothing left to read, or a new one."""
        with self._lock:
            if self._pid != os.getpid():  # forked: those sockets are the parent's
                self._idle, self._pid = {}, os.getpid()
            idle = self._idle.get(endpoint)
            sock = idle.pop() if idle else None
        if sock is None:
            return transport.dealer_socket(ctx, endpoint, f"client-{uuid.uuid4().hex}".encode())
        while sock.poll(0):  # the previous job's last words: not for the next job
            sock.recv_multipart()
        return sock

    def give_back(self, endpoint: str, sock: zmq.Socket[Any]) -> None:
        """Keep `sock` for the next job to `endpoint` (or close it, if enough are kept)."""
        with self._lock:
            idle = self._idle.setdefault(endpoint, [])
            if len(idle) < IDLE_PER_CLUSTER and self._pid == os.getpid():
                idle.append(sock)
                return
        sock.close(linger=CLOSE_LINGER_MS)


CONNECTIONS = ConnectionPool()

"""One-off requests to a cluster for people and tools (status), outside any job."""

from __future__ import annotations

import os
import uuid
from typing import Any

import zmq

from burla import __version__, protocol, transport
from burla.client import local_cluster
from burla.client.results import error_for
from burla.config import ClusterAddress, configured_cluster
from burla.errors import ClusterUnreachable

# Longest wait for any answer from the cluster.
REQUEST_TIMEOUT_SECONDS = 10.0


def request(address: ClusterAddress, msg: protocol.Message) -> protocol.Message:
    """Send Hello then `msg`; return the first answer that is not the Welcome."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = transport.dealer_socket(ctx, address.endpoint, f"client-{uuid.uuid4().hex}".encode())
    try:
        transport.send_sync(sock, protocol.Hello("client", protocol.PROTOCOL_VERSION, __version__,
                                                 address.token, "admin", {"pid": os.getpid()}))
        transport.send_sync(sock, msg)
        while sock.poll(int(REQUEST_TIMEOUT_SECONDS * 1000)):
            _, answer = transport.recv_sync(sock)
            if isinstance(answer, protocol.Refuse):
                raise error_for(answer.kind, answer.message)
            if not isinstance(answer, protocol.Welcome):
                return answer
        raise ClusterUnreachable(f"no answer from {address.endpoint} (chosen by "
                                 f"{address.source}) within {REQUEST_TIMEOUT_SECONDS:.0f}s")
    finally:
        sock.close(linger=0)


def cluster_address() -> ClusterAddress:
    return configured_cluster(None) or local_cluster.ensure_running()


def cluster_status() -> dict[str, Any]:
    answer = request(cluster_address(), protocol.StatusRequest())
    assert isinstance(answer, protocol.StatusReply)
    return answer.info

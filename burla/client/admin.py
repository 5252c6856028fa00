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
# What people are told when the cluster in use is the embedded one and it is not running.
EMBEDDED_DOWN = (
    "embedded cluster: not running for {prefix} (Python {version}). `burla local up` starts it "
    "(with any detached jobs it kept), and so does the next remote_parallel_map call."
)


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


def cluster_address() -> ClusterAddress | None:
    """The cluster in use; None when that is the embedded one and it is not running (asking
    it anything would start it)."""
    configured = configured_cluster(None)
    if configured is not None:
        return configured
    info = local_cluster.running_info()
    if info is None:
        return None
    return ClusterAddress(info["endpoint"], info["token"], True, "the embedded local cluster")


def embedded_down() -> str:
    here = local_cluster.interpreter()
    return EMBEDDED_DOWN.format(prefix=here["prefix"], version=here["python_version"])


def cluster_status(address: ClusterAddress | None = None) -> dict[str, Any]:
    """The status reply of `address` (default: the cluster in use, which must be running)."""
    address = address or cluster_address()
    if address is None:
        raise ClusterUnreachable(embedded_down())
    answer = request(address, protocol.StatusRequest())
    assert isinstance(answer, protocol.StatusReply)
    return answer.info

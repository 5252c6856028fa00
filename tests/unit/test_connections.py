"""Kept connections: reused per endpoint, and trusted to skip the Hello only under the token
that greeted the coordinator, and only while the coordinator surely still knows them."""

from __future__ import annotations

import pytest
import zmq

from burla.client import connections
from burla.client.connections import ConnectionPool

pytestmark = pytest.mark.timeout(10)
ENDPOINT = "tcp://127.0.0.1:9"  # never connected to: ZeroMQ connects lazily, nothing is sent


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def test_a_new_connection_must_say_hello(ctx):
    sock, welcomed = ConnectionPool().take(ctx, ENDPOINT, "token")
    assert not welcomed and sock.type == zmq.DEALER


def test_a_kept_connection_is_welcomed_under_its_token_only(ctx):
    pool = ConnectionPool()
    sock, _ = pool.take(ctx, ENDPOINT, "alice")
    pool.give_back(ENDPOINT, sock, "alice")
    assert pool.take(ctx, ENDPOINT, "alice") == (sock, True)
    pool.give_back(ENDPOINT, sock, "alice")
    assert pool.take(ctx, ENDPOINT, "bob") == (sock, False)  # same socket, a Hello for bob


def test_a_long_idle_connection_says_hello_again(ctx, monkeypatch):
    pool = ConnectionPool()
    sock, _ = pool.take(ctx, ENDPOINT, "alice")
    pool.give_back(ENDPOINT, sock, "alice")
    later = connections.time.monotonic() + connections.WELCOMED_SECONDS + 1
    monkeypatch.setattr(connections.time, "monotonic", lambda: later)
    assert pool.take(ctx, ENDPOINT, "alice") == (sock, False)
    assert connections.WELCOMED_SECONDS < connections.CLIENT_FORGET_SECONDS


def test_at_most_a_few_connections_are_kept_per_cluster(ctx):
    pool = ConnectionPool()
    socks = [pool.take(ctx, ENDPOINT, "t")[0] for _ in range(connections.IDLE_PER_CLUSTER + 1)]
    for sock in socks:
        pool.give_back(ENDPOINT, sock, "t")
    assert socks[-1].closed and not any(s.closed for s in socks[:-1])

"""A message a daemon cannot send reaches its job as an error, never as silence."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from burla import NodeDisconnected, ResultTooBig, channel, protocol, transport, unsent

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def pair() -> Iterator[tuple[channel.Channel, zmq.Socket[Any]]]:
    """A daemon's ROUTER channel (not started: sends need no loop) and one peer connected."""
    ctx: zmq.Context[Any] = zmq.Context()
    router = transport.router_socket(ctx, "inproc://unsent")
    peer = transport.dealer_socket(ctx, "inproc://unsent", b"client-1")
    transport.send_sync(peer, protocol.Ping())  # the router learns the peer's id
    assert router.poll(2000)
    router.recv_multipart()
    chan = channel.Channel(router, lambda peer, msg: None, routed=True, name="test",
                           replace_unsent=unsent.replacement)
    yield chan, peer
    peer.close(linger=0)
    router.close(linger=0)
    ctx.term()


def received(peer: zmq.Socket[Any]) -> protocol.Message:
    assert peer.poll(2000), "nothing arrived: the loss was silent"
    return transport.recv_sync(peer)[1]


def results(count: int, blob: bytes) -> protocol.Results:
    return protocol.Results("job", 3, 1, 40, count, [], True, 9, 5, blob)


def test_results_too_big_to_send_arrive_as_result_too_big_for_each_input(pair, monkeypatch):
    chan, peer = pair
    monkeypatch.setattr(transport, "MAX_MESSAGE_BYTES", 10_000)
    assert not chan.send(results(3, bytes(20_000)), b"client-1")
    got = received(peer)
    assert isinstance(got, protocol.Results)
    assert (got.job_id, got.first_index, got.count, got.chunk_done, got.seq) == ("job", 40, 3,
                                                                                True, 9)
    assert got.errors == [40, 41, 42]
    errors = pickle.loads(got.data)
    assert len(errors) == 3 and all(isinstance(e, ResultTooBig) for e in errors)
    assert "inputs 40..42 could not be sent on" in str(errors[0])
    assert "20,0" in str(errors[0]) and "10,000 bytes" in str(errors[0])
    assert chan.stats.unsent == 1


def test_results_refused_for_another_reason_arrive_as_node_disconnected():
    replaced = unsent.replacement(results(2, b"x"), "ZeroMQ refused it: full", too_big=False)
    assert isinstance(replaced, protocol.Results) and replaced.errors == [40, 41]
    errors = pickle.loads(replaced.data)
    assert all(isinstance(e, NodeDisconnected) for e in errors)
    assert "ZeroMQ refused it: full" in str(errors[0])


def test_output_too_big_to_send_arrives_as_a_count_of_dropped_lines(pair, monkeypatch):
    chan, peer = pair
    monkeypatch.setattr(transport, "MAX_MESSAGE_BYTES", 10_000)
    assert not chan.send(protocol.Logs.pack("job", [[1, 1, "x" * 20_000], [2, 1, "y"]], 4),
                         b"client-1")
    got = received(peer)
    assert isinstance(got, protocol.Logs) and (got.count, got.dropped) == (0, 6)


def test_a_message_that_fits_is_sent_unchanged(pair):
    chan, peer = pair
    msg = results(1, pickle.dumps([7]))
    assert chan.send(msg, b"client-1")
    got = received(peer)
    assert isinstance(got, protocol.Results) and got.data.bytes == msg.data
    assert got.errors == msg.errors and got.count == 1 and chan.stats.unsent == 0


def test_a_peer_not_connected_gets_no_replacement(pair):
    chan, _ = pair
    assert not chan.send(results(1, b"x"), b"client-gone")
    assert (chan.stats.unroutable, chan.stats.unsent) == (1, 0)

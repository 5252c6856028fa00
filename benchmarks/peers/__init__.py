"""The registry of tools the suite runs, burla first; peers come from the `bench` extra."""

from __future__ import annotations

from benchmarks.peers.base import Peer
from benchmarks.peers.burla_peer import BurlaPeer
from benchmarks.peers.dask_peer import DaskPeer
from benchmarks.peers.ipp_peer import IppChunkedPeer, IppPeer
from benchmarks.peers.mp_peer import MpPeer
from benchmarks.peers.ray_peer import RayPoolPeer, RayTasksPeer

PEERS: dict[str, type[Peer]] = {
    cls.name: cls
    for cls in (BurlaPeer, MpPeer, RayTasksPeer, RayPoolPeer, DaskPeer, IppPeer, IppChunkedPeer)
}

__all__ = ["PEERS", "Peer"]

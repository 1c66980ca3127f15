"""Heartbeats on idle Bolt/Dubbo upstream connections: after ``rpc_heartbeat_interval`` with nothing read the
sidecar sends the protocol's heartbeat; no answer within ``rpc_heartbeat_timeout`` → the connection is closed,
its requests fail at once (UNAVAILABLE, upstream_heartbeat_timeout) and the next request opens a new one."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from plexus.codec.rpc import FrameKind, RpcFrame
from transport.conftest import Mesh
from transport.test_rpc_proxy import (
    OK,
    PROTOCOLS,
    UNAVAILABLE,
    FakeProvider,
    Peers,
    ProviderServer,
    egress_for,
    peers,
    read_frames,
    request,
    token,
    wait_for,
)
from transport.upstreams import LoopThread

__all__ = ["peers"]  # the fixture, re-exported for pytest

INTERVAL = 0.2
TIMEOUT = 0.3


class DeafProvider(ProviderServer):
    """Takes requests and heartbeats but answers nothing while ``deaf`` (a hung peer); counts connections."""

    def __init__(self, protocol: str, name: str) -> None:
        super().__init__(protocol, name)
        self.deaf = True
        self.connections = 0
        self.seen: set[FakeProvider] = set()

    def on_frame(self, conn: FakeProvider, frame: RpcFrame) -> None:
        if conn not in self.seen:
            self.seen.add(conn)
            self.connections += 1
        if frame.kind is FrameKind.HEARTBEAT and self.deaf:
            self.heartbeats += 1
            return
        self.silent = self.deaf
        super().on_frame(conn, frame)


@pytest.fixture
def kmesh(lt: LoopThread) -> Iterator[Mesh]:
    m = Mesh(
        lt,
        connect_timeout=0.5,
        request_timeout=30.0,
        rpc_heartbeat_interval=INTERVAL,
        rpc_heartbeat_timeout=TIMEOUT,
    )
    try:
        yield m
    finally:
        m.close()


def metrics(mesh: Mesh) -> str:
    return str(mesh.lt.call(mesh.plane.metrics_text))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_idle_connection_heartbeats_and_stays(kmesh: Mesh, peers: Peers, protocol: str) -> None:
    provider = peers.provider(protocol, "p0")
    egress = egress_for(kmesh, "echo", protocol, [provider.port])
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(request(protocol, 1))
        read_frames(s, protocol, 1)
        (first,) = provider.conns
        wait_for(lambda: provider.heartbeats >= 3, timeout=5)  # about one per interval while idle
        assert provider.conns == {first}  # answered: the same connection stays
        s.sendall(request(protocol, 2))
        (frame,) = read_frames(s, protocol, 1)
        assert frame.status == OK[protocol] and token(2) in frame.raw
    text = metrics(kmesh)
    assert 'plexus_rpc_upstream_heartbeats_total{service="echo"}' in text
    assert "plexus_rpc_upstream_heartbeat_timeouts_total{" not in text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unanswered_heartbeat_closes_and_fails_in_flight(kmesh: Mesh, peers: Peers, protocol: str) -> None:
    provider = DeafProvider(protocol, "deaf")
    kmesh.lt.run(provider.start())
    peers.started.append(provider)
    egress = egress_for(kmesh, "echo", protocol, [provider.port])
    ids = list(range(1, 11))
    with socket.create_connection(egress, timeout=5) as s:
        started = time.monotonic()
        s.sendall(b"".join(request(protocol, i, timeout_ms=30_000) for i in ids))  # callers wait 30 s
        frames = read_frames(s, protocol, len(ids), timeout=5)
        elapsed = time.monotonic() - started
        assert sorted(f.request_id for f in frames) == ids
        assert {f.status for f in frames} == {UNAVAILABLE[protocol]}
        assert b"upstream_heartbeat_timeout" in frames[0].raw
        assert elapsed < 5  # after interval + timeout, not after the callers' 30 s
        assert provider.heartbeats >= 1
        # The peer is back: the next request opens a fresh connection and is answered.
        provider.deaf = False
        s.sendall(request(protocol, 99))
        (frame,) = read_frames(s, protocol, 1)
        assert frame.request_id == 99 and frame.status == OK[protocol] and token(99) in frame.raw
    assert provider.connections == 2
    assert 'plexus_rpc_upstream_heartbeat_timeouts_total{service="echo"} 1' in metrics(kmesh)
    assert 'plexus_local_replies_total{reason="upstream_heartbeat_timeout",service="echo"} 10' in metrics(
        kmesh
    )


def test_heartbeat_off_when_interval_zero(lt: LoopThread, peers: Peers) -> None:
    mesh = Mesh(lt, connect_timeout=0.5, rpc_heartbeat_interval=0.0)
    try:
        provider = peers.provider("bolt", "p0")
        egress = egress_for(mesh, "echo", "bolt", [provider.port])
        with socket.create_connection(egress, timeout=5) as s:
            s.sendall(request("bolt", 1))
            read_frames(s, "bolt", 1)
            time.sleep(0.5)
        assert provider.heartbeats == 0
    finally:
        mesh.close()

"""A closed client connection leaves nothing behind for the cycle collector.

A connection's objects refer to one another (the protocol, its decoder and parsers, its exchanges). The
sidecar runs the cycle collector rarely (plexus.sidecar.app.GC_GEN0_THRESHOLD), so a connection whose objects
only the collector could free would pile up: a consumer sidecar that served 3,000 short connections sat at
48 MiB instead of 37.5 before these links were cut on close. These tests close connections with the collector
off and count what is still alive.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import time
from collections.abc import Iterator

import pytest

from plexus.core.address import HostPort
from plexus.transport.h2_downstream import Http2Downstream
from plexus.transport.h2_upstream import Http2UpstreamConnection
from plexus.transport.http_downstream import HttpDownstream
from plexus.transport.http_exchange import Exchange
from plexus.transport.rpc_proxy import RpcDownstream, RpcUpstream
from plexus.transport.sniffing import SniffingProtocol
from plexus.transport.tcp_proxy import TcpPipe
from transport.conftest import Mesh
from transport.h2_peers import H2EchoServer, H2Mesh, RawH2
from transport.test_rpc_proxy import ProviderServer, egress_for, read_frames, request
from transport.upstreams import LoopThread, read_response, start_echo

CONNECTIONS = 20


# What was alive when the collector went off: objects of earlier tests in this process (a plane another
# module keeps open) are not this test's.
_before: dict[type, int] = {}


@contextlib.contextmanager
def _collector_off(*kinds: type) -> Iterator[None]:
    gc.collect()
    _before.clear()
    _before.update((kind, _alive(kind)) for kind in kinds)
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _alive(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


def _assert_freed(kind: type, open_ones: int = 0, timeout: float = 5.0) -> None:
    """No more ``kind`` alive than before the test's connections, but ``open_ones``, within ``timeout`` (the
    plane sees the last closes a little after the client does)."""
    allowed = _before[kind] + open_ones
    deadline = time.monotonic() + timeout
    while (alive := _alive(kind)) > allowed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive <= allowed, (
        f"{alive - allowed} {kind.__name__} alive after their connections closed ({_before[kind]} before)"
    )


def test_http1_connections_are_freed_without_the_collector(mesh: Mesh) -> None:
    mesh.http_upstreams("svc", 1)
    with _collector_off(HttpDownstream, Exchange):
        for i in range(CONNECTIONS):
            with socket.create_connection(mesh.egress, timeout=5) as s:
                if i % 3 == 0:  # answered
                    s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                    assert read_response(s)[0] == 200
                elif i % 3 == 1:  # refused: a malformed head
                    s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\nbad header\r\n\r\n")
                    assert read_response(s)[0] == 400
                else:  # left in the middle of its body
                    s.sendall(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\npart")
                    time.sleep(0.02)
        _assert_freed(HttpDownstream)
        _assert_freed(Exchange)


def test_http1_connections_through_the_sniffing_ingress_are_freed(mesh: Mesh) -> None:
    (up,) = mesh.http_upstreams("svc", 1)
    mesh.lt.call(mesh.plane.set_local_service, "svc", "http", HostPort("127.0.0.1", up.port))
    with _collector_off(HttpDownstream, SniffingProtocol):
        for _ in range(CONNECTIONS):
            with socket.create_connection(mesh.ingress, timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                assert read_response(s)[0] == 200
        _assert_freed(HttpDownstream)
        _assert_freed(SniffingProtocol)


def test_http2_connections_are_freed_without_the_collector(lt: LoopThread) -> None:
    mesh = H2Mesh(lt)
    echo = H2EchoServer()
    try:
        mesh.lt.run(echo.start())
        mesh.provide("web", echo.port)
        with _collector_off(Http2Downstream, Http2UpstreamConnection):
            for _ in range(CONNECTIONS):
                client = RawH2(mesh.egress)
                try:
                    status, _, body, _ = client.request(
                        [(":method", "GET"), (":path", "/x"), (":scheme", "http"), (":authority", "web")]
                    )
                    assert (status, body) == (200, b"GET /x\n")
                finally:
                    client.close()
            # (one stays open: the provider's side of the consumer's pooled connection to it)
            _assert_freed(Http2Downstream, open_ones=1)
            mesh.lt.run(mesh.provider.close())  # and now that one, and the consumer's side of it
            _assert_freed(Http2Downstream)
            _assert_freed(Http2UpstreamConnection)
    finally:
        mesh.close()
        mesh.lt.run(echo.stop())


def test_tcp_connections_are_freed_without_the_collector(mesh: Mesh) -> None:
    _, echo_port = mesh.lt.run(start_echo())
    plane = mesh.plane
    ingress = mesh.lt.run(plane.listen_tcp_ingress("db", "127.0.0.1", 0, HostPort("127.0.0.1", echo_port)))
    mesh.set_instances("db", [str(ingress)], protocol="tcp")
    egress = mesh.lt.run(plane.listen_service_egress("db", "127.0.0.1", 0))
    with _collector_off(TcpPipe):
        for _ in range(CONNECTIONS):
            with socket.create_connection(egress, timeout=5) as s:
                s.sendall(b"ping")
                assert s.recv(4) == b"ping"
        _assert_freed(TcpPipe)


@pytest.mark.parametrize("protocol", ["bolt", "dubbo"])
def test_rpc_connections_are_freed_without_the_collector(mesh: Mesh, protocol: str) -> None:
    provider = ProviderServer(protocol, "p0")
    port = mesh.lt.run(provider.start())
    try:
        egress = egress_for(mesh, "com.acme.Echo", protocol, [port])
        with _collector_off(RpcDownstream, RpcUpstream):
            for i in range(CONNECTIONS):
                with socket.create_connection(egress, timeout=5) as s:
                    s.sendall(request(protocol, i + 1))
                    (frame,) = read_frames(s, protocol, 1)
                    assert frame.request_id == i + 1
            _assert_freed(RpcDownstream)
            mesh.lt.run(provider.kill())  # the pooled upstream connection closes too
            _assert_freed(RpcUpstream)
    finally:
        mesh.lt.run(provider.kill())

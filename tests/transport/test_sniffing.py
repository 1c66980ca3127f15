"""Protocol sniffing on every listener: the pure checks, split at every byte, and what each listener does
with TLS, HTTP/2, HTTP/1, Bolt and bytes of no protocol."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import h2.config
import h2.connection
import pytest

from plexus.codec.http2 import CONNECTION_PREFACE
from plexus.core.address import HostPort
from plexus.transport.sniffing import sniff_h2, sniff_rpc, sniff_tls
from transport.conftest import Mesh
from transport.h2_peers import H2Mesh, channel, path
from transport.upstreams import HttpUpstream, LoopThread, read_response, start_echo

# The first bytes of a real TLS 1.2/1.3 ClientHello record: handshake (0x16), legacy version 3.1, length.
CLIENT_HELLO = bytes.fromhex("160301020001000200") + b"\x03\x03" + b"\x00" * 32
BOLT_REQUEST_START = bytes([0x01, 0x01, 0x00, 0x01, 0x01])  # proto v1, request, cmdcode 1, ver2 1


def test_sniff_tls_at_every_split() -> None:
    assert sniff_tls(b"") is False
    assert sniff_tls(b"\x16") is None
    for end in range(2, len(CLIENT_HELLO) + 1):
        assert sniff_tls(CLIENT_HELLO[:end]) is True
    assert sniff_tls(b"\x16\x01") is False
    assert sniff_tls(b"GET ") is False


def test_sniff_h2_preface_at_every_split() -> None:
    for end in range(1, len(CONNECTION_PREFACE)):
        assert sniff_h2(CONNECTION_PREFACE[:end]) is None
    assert sniff_h2(CONNECTION_PREFACE) is True
    assert sniff_h2(CONNECTION_PREFACE + b"\x00\x00\x12\x04") is True
    assert sniff_h2(b"POST / HTTP/1.1\r\n") is False
    assert sniff_h2(b"PRI * HTTP/1.1\r\n") is False


def test_sniff_rpc() -> None:
    assert sniff_rpc(b"\xda\xbb\xc2\x00") == "dubbo"
    assert sniff_rpc(BOLT_REQUEST_START) == "bolt"
    assert sniff_rpc(b"\x01") is None
    assert sniff_rpc(b"GET ") is False


# --- listeners ------------------------------------------------------------------------------------------


@pytest.fixture
def sniff_mesh(lt: LoopThread) -> Iterator[H2Mesh]:
    m = H2Mesh(lt, sniff_timeout=0.3)
    try:
        yield m
    finally:
        m.close()


def _rejects(m: H2Mesh, reason: str) -> int:
    text = m.metrics(m.provider) + m.metrics(m.consumer)
    total = 0
    for line in text.splitlines():
        if line.startswith(f'plexus_downstream_rejects_total{{reason="{reason}"}}'):
            total += int(line.rsplit(" ", 1)[1])
    return total


def _closed_after(address: HostPort, data: bytes, timeout: float = 3.0) -> float:
    """Send ``data`` (if any), and return how long until the listener closed the connection."""
    started = time.monotonic()
    with socket.create_connection(address, timeout=timeout) as s:
        if data:
            s.sendall(data)
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return time.monotonic() - started


@pytest.mark.parametrize("listener", ["ingress", "egress", "service"])
def test_tls_client_hello_is_closed_and_counted(sniff_mesh: H2Mesh, listener: str) -> None:
    address = _listener(sniff_mesh, listener)
    before = _rejects(sniff_mesh, "tls_not_supported")
    assert _closed_after(address, CLIENT_HELLO) < 0.25  # decided by the bytes, not the sniff timeout
    assert _rejects(sniff_mesh, "tls_not_supported") == before + 1


@pytest.mark.parametrize("listener", ["ingress", "egress"])
def test_shared_listeners_close_silent_and_unknown_clients(sniff_mesh: H2Mesh, listener: str) -> None:
    address = _listener(sniff_mesh, listener)
    assert _closed_after(address, b"") >= 0.25  # nothing sent: closed at the sniff timeout
    assert _rejects(sniff_mesh, "sniff_timeout") == 1
    assert _closed_after(address, b"\x00\x01garbage") < 0.25  # bytes of no protocol: closed at once
    assert _rejects(sniff_mesh, "sniff_unknown_protocol") == 1
    assert _closed_after(address, b"\x7f\x80\x81") < 0.25
    assert _rejects(sniff_mesh, "sniff_unknown_protocol") == 2
    with socket.create_connection(address, timeout=3) as s:  # neither the h2 preface nor POST/PUT/PATCH
        s.sendall(b"PRX / HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, _, _ = read_response(s)
    assert status == 501 and headers["x-plexus-error"]  # HTTP/1's parser answered it in HTTP's terms


def test_every_listener_speaks_http1_and_h2c(sniff_mesh: H2Mesh, lt: LoopThread) -> None:
    app = sniff_mesh.app()
    sniff_mesh.provide("orders", app.port)
    up = HttpUpstream("web")
    lt.run(up.start())
    try:
        sniff_mesh.provide("web", up.port, protocol="http")
        # h2c on the shared egress (by :authority), the per-service port and the ingress directly.
        with channel(sniff_mesh.egress, **{"grpc.default_authority": "orders"}) as ch:
            assert ch.unary_unary(path("Echo"))(b"a", timeout=5) == b"a"
        with channel(sniff_mesh.service_port("orders")) as ch:
            assert ch.unary_unary(path("Echo"))(b"b", timeout=5) == b"b"
        with channel(sniff_mesh.ingress) as ch:
            md = (("x-plexus-service", "orders"),)
            assert ch.unary_unary(path("Echo"))(b"c", timeout=5, metadata=md) == b"c"
        # HTTP/1.1 on the same shared listeners.
        for address, host in ((sniff_mesh.egress, "web"), (sniff_mesh.ingress, "web")):
            with socket.create_connection(address, timeout=5) as s:
                s.sendall(f"GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                status, _, _, _ = read_response(s)
                assert status == 200
        assert len(up.received) == 2
    finally:
        lt.run(up.stop())


def test_ingress_falls_back_to_the_only_grpc_service(sniff_mesh: H2Mesh) -> None:
    app = sniff_mesh.app()
    sniff_mesh.provide("orders", app.port)
    with channel(sniff_mesh.ingress) as ch:  # no x-plexus-service, :authority is an address
        assert ch.unary_unary(path("Echo"))(b"only", timeout=5) == b"only"


def test_split_preface_is_still_http2(sniff_mesh: H2Mesh) -> None:
    """The preface in one-byte pieces: the sniffer waits for enough bytes, then hands all of them on."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    data = conn.data_to_send()
    with socket.create_connection(sniff_mesh.egress, timeout=3) as s:
        for i in range(len(CONNECTION_PREFACE)):
            s.sendall(data[i : i + 1])
            time.sleep(0.002)
        s.sendall(data[len(CONNECTION_PREFACE) :])
        reply = s.recv(4096)
    assert reply[3] == 0x04  # the proxy's SETTINGS frame (RFC 9113 §3.4): it spoke HTTP/2


def test_per_service_port_keeps_tcp_for_unknown_bytes(lt: LoopThread) -> None:
    mesh = Mesh(lt, sniff_timeout=0.3)
    try:
        server, port = lt.run(start_echo())
        mesh.set_instances("raw", [f"127.0.0.1:{port}"], protocol="tcp")
        address = lt.run(mesh.plane.listen_service_egress("raw", "127.0.0.1", 0))
        with socket.create_connection(address, timeout=3) as s:
            s.sendall(b"\x00hello")
            assert s.recv(100) == b"\x00hello"
        server.close()
    finally:
        mesh.close()


def test_grpc_service_port_skips_sniffing(sniff_mesh: H2Mesh) -> None:
    """A cluster published as grpc: its port is HTTP/2 from the first byte (no sniff wait, no TCP)."""
    app = sniff_mesh.app()
    sniff_mesh.provide("orders", app.port)
    port = sniff_mesh.service_port("orders")
    with socket.create_connection(port, timeout=3) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not HTTP/2: refused as a bad preface
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data[3] == 0x04  # our SETTINGS: the HTTP/2 codec answered (then closed), not HTTP/1 or TCP
    assert _rejects(sniff_mesh, "h2_protocol_error") == 1
    with channel(port) as ch:
        assert ch.unary_unary(path("Echo"))(b"ok", timeout=5) == b"ok"


def _listener(m: H2Mesh, which: str) -> HostPort:
    if which == "ingress":
        return m.ingress
    if which == "egress":
        return m.egress
    return m.service_port("orders")

"""Two sidecars in one loop: consumer egress → provider ingress → the provider's local app, including a real
``python -m http.server`` as the app, ingress service resolution, and the app-down retry across providers."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plexus.core.address import HostPort
from plexus.testing.procs import free_port, wait_for
from plexus.transport import DataPlane, DataPlaneSettings
from transport.conftest import Mesh
from transport.upstreams import LoopThread, closed_port, read_response


class Provider:
    """A provider sidecar: its ingress listener and the local services behind it."""

    def __init__(self, lt: LoopThread, hop: str) -> None:
        self.lt = lt
        self.plane = DataPlane(DataPlaneSettings(hop_name=hop, connect_timeout=0.5))
        self.ingress: HostPort = lt.run(self.plane.listen_ingress("127.0.0.1", 0))

    def app(self, service: str, port: int, protocol: str = "http") -> None:
        self.lt.call(self.plane.set_local_service, service, protocol, HostPort("127.0.0.1", port))


@pytest.fixture
def http_server(tmp_path: Path, procs) -> Iterator[int]:  # type: ignore[no-untyped-def]
    (tmp_path / "hello.txt").write_bytes(b"hello from http.server\n")
    port = free_port()
    procs.run(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(tmp_path), str(port)]
    )

    def up() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    wait_for(up, timeout=10, what="python -m http.server")
    yield port


def _call(address: HostPort, request: bytes, method: str = "GET") -> tuple[int, dict[str, str], bytes, bool]:
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(request)
        return read_response(s, method=method)


def test_consumer_to_provider_to_python_http_server(mesh: Mesh, http_server: int) -> None:
    provider = Provider(mesh.lt, "provider-a")
    try:
        provider.app("files", http_server)
        mesh.set_instances("files", [str(provider.ingress)])
        with socket.create_connection(mesh.egress, timeout=5) as s:
            for _ in range(
                3
            ):  # http.server closes after each response (HTTP/1.0): the pool must not reuse it
                s.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: files\r\n\r\n")
                status, headers, body, closed = read_response(s)
                assert (status, body, closed) == (200, b"hello from http.server\n", False)
            s.sendall(b"HEAD /hello.txt HTTP/1.1\r\nHost: files\r\n\r\n")
            status, headers, body, _ = read_response(s, method="HEAD")
            assert status == 200 and body == b"" and headers["content-length"] == "23"
            s.sendall(b"GET /missing HTTP/1.1\r\nHost: files\r\n\r\n")
            assert read_response(s)[0] == 404
        text = provider.lt.call(provider.plane.metrics_text)
        assert 'plexus_requests_total{service="files",direction="ingress",code_class="2xx"} 4' in text
    finally:
        mesh.lt.run(provider.plane.close())


def test_ingress_resolves_service_by_header_host_or_only_service(mesh: Mesh) -> None:
    provider = Provider(mesh.lt, "provider-a")
    try:
        a, b = mesh.http_upstreams("a", 1)[0], mesh.http_upstreams("b", 1)[0]
        provider.app("a", a.port)
        assert (
            _call(provider.ingress, b"GET / HTTP/1.1\r\nHost: whatever\r\n\r\n")[2] == b"a-0"
        )  # the only one
        provider.app("b", b.port)
        status, headers, _, _ = _call(provider.ingress, b"GET / HTTP/1.1\r\nHost: whatever\r\n\r\n")
        assert status == 503 and headers["x-plexus-error"] == "unknown_service; service=whatever"
        assert headers["x-plexus-hop"] == "provider-a"
        assert _call(provider.ingress, b"GET / HTTP/1.1\r\nHost: b:80\r\n\r\n")[2] == b"b-0"
        assert (
            _call(provider.ingress, b"GET / HTTP/1.1\r\nHost: b\r\nx-plexus-service: a\r\n\r\n")[2] == b"a-0"
        )
        assert "x-plexus-service" not in a.received[-1].headers  # not passed on to the app
    finally:
        mesh.lt.run(provider.plane.close())


def test_app_down_is_503_local_app_unavailable_and_the_consumer_retries_elsewhere(mesh: Mesh) -> None:
    down, up = Provider(mesh.lt, "p-down"), Provider(mesh.lt, "p-up")
    try:
        (app,) = mesh.http_upstreams("app-direct", 1)
        down.app("orders", closed_port())
        up.app("orders", app.port)
        status, headers, _, _ = _call(down.ingress, b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
        assert status == 503 and headers["x-plexus-error"] == "local_app_unavailable; service=orders"
        mesh.set_instances("orders", [str(down.ingress), str(up.ingress)])
        with socket.create_connection(mesh.egress, timeout=5) as s:
            for _ in range(6):
                s.sendall(b"POST /echo HTTP/1.1\r\nHost: orders\r\nContent-Length: 3\r\n\r\nabc")
                status, _, body, _ = read_response(s)
                assert (status, body) == (200, b"abc")
        assert len(app.received) == 6
    finally:
        mesh.lt.run(down.plane.close())
        mesh.lt.run(up.plane.close())

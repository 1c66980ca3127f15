"""Egress HTTP/1.1 through a real listener to real upstreams (h11 servers): methods, framing, keep-alive,
pipelining, 100-continue, HEAD, HTTP/1.0 clients, local replies and their counters."""

from __future__ import annotations

import asyncio
import socket

import h11

from transport.conftest import Mesh
from transport.upstreams import read_response, recv_until_closed


def _connect(mesh: Mesh) -> socket.socket:
    return socket.create_connection(mesh.egress, timeout=5)


def test_get_and_post_keep_alive_reuse_one_upstream_connection(mesh: Mesh) -> None:
    (up,) = mesh.http_upstreams("orders", 1)
    with _connect(mesh) as s:
        for i in range(5):
            s.sendall(b"GET /x?i=%d HTTP/1.1\r\nHost: orders:80\r\nX-Trace: t%d\r\n\r\n" % (i, i))
            status, headers, body, closed = read_response(s)
            assert (status, body, closed) == (200, b"orders-0", False)
            assert headers["x-upstream"] == "orders-0"
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: orders\r\nContent-Length: 11\r\n\r\nhello world")
        assert read_response(s)[2] == b"hello world"
    assert up.connections == 1  # one pooled upstream connection served all six
    got = up.received[0]
    assert got.headers["x-plexus-service"] == "orders" and got.headers["x-trace"] == "t0"
    assert got.target == "/x?i=0"


def test_chunked_request_and_response_stream_through(mesh: Mesh) -> None:
    (up,) = mesh.http_upstreams("svc", 1)
    with _connect(mesh) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"abc", b"defgh", b"i" * 70000):
            s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        s.sendall(b"0\r\n\r\n")
        status, _, body, _ = read_response(s)
        assert status == 200 and body == b"abcdefgh" + b"i" * 70000
        s.sendall(b"GET /chunked HTTP/1.1\r\nHost: svc\r\n\r\n")
        status, headers, body, _ = read_response(s)
        assert body == b"part1-part2-part3" and headers["transfer-encoding"] == "chunked"
    assert up.received[0].body == b"abcdefgh" + b"i" * 70000


def test_expect_100_continue(mesh: Mesh) -> None:
    (up,) = mesh.http_upstreams("svc", 1)
    with _connect(mesh) as s:
        s.sendall(b"PUT /echo HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        s.settimeout(5)
        interim = s.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # sent before any body byte
        s.sendall(b"data")
        assert read_response(s)[2] == b"data"
    assert "expect" not in up.received[0].headers


def test_expect_100_continue_to_unknown_service_gets_the_final_status(mesh: Mesh) -> None:
    with _connect(mesh) as s:
        s.sendall(b"PUT /echo HTTP/1.1\r\nHost: nowhere\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        status, headers, _, closed = read_response(s)
        assert status == 503 and closed
        assert headers["x-plexus-error"] == "unknown_service; service=nowhere"


def test_head_has_no_body_and_the_connection_goes_on(mesh: Mesh) -> None:
    mesh.http_upstreams("svc", 1)
    with _connect(mesh) as s:
        for _ in range(3):
            s.sendall(b"HEAD /x HTTP/1.1\r\nHost: svc\r\n\r\n")
            status, headers, body, closed = read_response(s, method="HEAD")
            assert status == 200 and body == b"" and headers["content-length"] == "5" and not closed
        s.sendall(b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert read_response(s)[2] == b"svc-0"


def test_1000_pipelined_requests_answered_in_order(mesh: Mesh) -> None:
    mesh.http_upstreams("svc", 3)
    n = 1000
    with _connect(mesh) as s:
        s.sendall(
            b"".join(
                b"GET /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 6\r\n\r\n%06d" % i for i in range(n)
            )
        )
        conn = h11.Connection(h11.CLIENT)
        s.settimeout(10)
        bodies: list[bytes] = []
        for _ in range(n):
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            conn.send(h11.EndOfMessage())
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(s.recv(65536))
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            bodies.append(body)
            conn.start_next_cycle()
    assert bodies == [b"%06d" % i for i in range(n)]


def test_http10_client_and_connection_close(mesh: Mesh) -> None:
    mesh.http_upstreams("svc", 1)
    with _connect(mesh) as s:
        s.sendall(b"GET /chunked HTTP/1.0\r\nHost: svc\r\n\r\n")
        raw = recv_until_closed(s)  # 1.0 client, body of unknown length: read until close
        assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"\r\n\r\npart1-part2-part3")
        assert b"transfer-encoding" not in raw.lower()
    with _connect(mesh) as s:
        s.sendall(b"GET /x HTTP/1.0\r\nHost: svc\r\nConnection: keep-alive\r\n\r\n")
        _, headers, _, closed = read_response(s)
        assert headers.get("connection") == "keep-alive" and not closed
        s.sendall(b"GET /x HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        status, _, _, closed = read_response(s)
        assert status == 200 and closed
        assert recv_until_closed(s) == b""


def test_local_replies_name_reason_service_and_hop(mesh: Mesh) -> None:
    mesh.set_instances("empty", [])
    with _connect(mesh) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: nosuch\r\n\r\nGET / HTTP/1.1\r\nHost: empty\r\n\r\n")
        status, headers, _, closed = read_response(s)
        assert status == 503 and headers["x-plexus-error"] == "unknown_service; service=nosuch"
        assert headers["x-plexus-hop"] == "sidecar" and not closed
        status, headers, _, _ = read_response(s)
        assert status == 503 and headers["x-plexus-error"] == "no_healthy_upstream; service=empty"
    text = mesh.lt.call(mesh.plane.metrics_text)
    assert 'plexus_local_replies_total{reason="unknown_service",service="nosuch"} 1' in text
    assert 'plexus_local_replies_total{reason="no_healthy_upstream",service="empty"} 1' in text


def test_requests_counted_by_service_and_class(mesh: Mesh) -> None:
    mesh.http_upstreams("svc", 1)
    with _connect(mesh) as s:
        for _ in range(3):
            s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            read_response(s)
    text = mesh.lt.call(mesh.plane.metrics_text)
    assert 'plexus_requests_total{service="svc",direction="egress",code_class="2xx"} 3' in text
    assert 'plexus_request_duration_milliseconds_count{service="svc",direction="egress"} 3' in text
    view = mesh.lt.call(mesh.plane.clusters_view)
    assert view[0]["endpoints"][0]["total_requests"] == 3 and view[0]["endpoints"][0]["active_requests"] == 0


def test_a_response_body_streams_before_it_ends(mesh: Mesh) -> None:
    """The first part of a body reaches the client while the upstream still holds the rest (no buffering
    of whole responses), and an interim 1xx head goes out before the final one."""
    release = asyncio.Event()

    class Streamer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: keep-alive\r\n\r\nfirst"
            )
            asyncio.get_running_loop().create_task(self._rest())

        async def _rest(self) -> None:
            await release.wait()
            self.transport.write(b"-last")  # type: ignore[attr-defined]

    async def start() -> int:
        server = await asyncio.get_running_loop().create_server(Streamer, "127.0.0.1", 0)
        return int(server.sockets[0].getsockname()[1])

    port = mesh.lt.run(start())
    mesh.set_instances("stream", [f"127.0.0.1:{port}"])
    with socket.create_connection(mesh.egress, timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: stream\r\n\r\n")
        seen = b""
        while not seen.endswith(b"first"):
            chunk = s.recv(65536)
            assert chunk, seen
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n")
        assert b"connection:" not in seen.lower()  # the upstream's hop-by-hop line is not forwarded
        mesh.lt.call(release.set)
        rest = b""
        while len(rest) < 5:
            rest += s.recv(65536)
        assert rest == b"-last"

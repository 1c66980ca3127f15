"""Upstream failures: connect refused (retried once elsewhere), provider-sidecar 503s that never reached an
app (retried), timeouts, resets, broken responses, and endpoint removal with requests in flight."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter

from transport.conftest import Mesh
from transport.upstreams import closed_port, read_response, start_raw


def _get(mesh: Mesh, path: str = "/", host: str = "svc") -> tuple[int, dict[str, str], bytes, bool]:
    with socket.create_connection(mesh.egress, timeout=5) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), host.encode()))
        return read_response(s)


def test_one_refusing_host_of_five_is_invisible_to_clients(mesh: Mesh) -> None:
    ups = mesh.http_upstreams("svc", 4)
    dead = f"127.0.0.1:{closed_port()}"
    addresses = [f"127.0.0.1:{u.port}" for u in ups]
    mesh.set_instances("svc", [*addresses[:2], dead, *addresses[2:]])
    statuses: Counter[int] = Counter()
    with socket.create_connection(mesh.egress, timeout=5) as s:
        for _ in range(50):
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 2\r\n\r\nok")
            status, _, body, _ = read_response(s)
            statuses[status] += 1
            assert body == b"ok"
    assert statuses == {200: 50}
    view = mesh.lt.call(mesh.plane.clusters_view)[0]
    dead_view = next(e for e in view["endpoints"] if e["address"] == dead)
    assert dead_view["failures"] >= 5 and dead_view["active_requests"] == 0
    assert "plexus_upstream_rq_retry_total" in mesh.lt.call(mesh.plane.metrics_text)


def test_every_host_refusing_is_503_upstream_connect_failed(mesh: Mesh) -> None:
    mesh.set_instances("svc", [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"])
    status, headers, _, _ = _get(mesh)
    assert status == 503 and headers["x-plexus-error"] == "upstream_connect_failed; service=svc"


def test_provider_sidecar_503_before_send_is_retried_elsewhere(mesh: Mesh) -> None:
    ups = mesh.http_upstreams("svc", 2)
    results = [_get(mesh, "/retriable") for _ in range(4)]
    # /retriable always answers a retriable 503, so each request is tried twice (once on each) and then the
    # second 503 is passed on; what matters is that exactly one retry happened per request.
    assert all(r[0] == 503 for r in results)
    assert sum(len(u.received) for u in ups) == 8
    assert all(len(u.received) == 4 for u in ups)


def test_request_timeout_is_504(lt) -> None:  # type: ignore[no-untyped-def]
    mesh = Mesh(lt, request_timeout=0.3)
    try:
        mesh.http_upstreams("svc", 1)
        status, headers, _, _ = _get(mesh, "/slow/2000")
        assert status == 504 and headers["x-plexus-error"] == "upstream_request_timeout; service=svc"
        assert _get(mesh, "/fast")[0] == 200
    finally:
        mesh.close()


def test_upstream_reset_before_response_is_502(mesh: Mesh) -> None:
    log: list[bytearray] = []

    class Resetter(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.abort()  # type: ignore[attr-defined]

    async def start() -> int:
        server = await asyncio.get_running_loop().create_server(Resetter, "127.0.0.1", 0)
        return int(server.sockets[0].getsockname()[1])

    port = mesh.lt.run(start())
    mesh.set_instances("svc", [f"127.0.0.1:{port}"])
    status, headers, _, _ = _get(mesh, "/")
    assert status == 502 and headers["x-plexus-error"] == "upstream_reset; service=svc"
    assert log == []


def test_head_answered_with_a_body_is_502_and_the_next_client_is_fine(mesh: Mesh) -> None:
    log: list[bytearray] = []
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    _, port = mesh.lt.run(start_raw(log, bad))
    mesh.set_instances("bad", [f"127.0.0.1:{port}"])
    mesh.http_upstreams("svc", 1)
    with socket.create_connection(mesh.egress, timeout=5) as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: bad\r\n\r\n")
        status, headers, _, _ = read_response(s, method="HEAD")
        assert status == 502 and headers["x-plexus-error"] == "upstream_protocol_error; service=bad"
    assert _get(mesh, "/")[0] == 200


def test_garbage_from_upstream_is_502(mesh: Mesh) -> None:
    log: list[bytearray] = []
    _, port = mesh.lt.run(start_raw(log, b"SSH-2.0-OpenSSH\r\n\r\n"))
    mesh.set_instances("svc", [f"127.0.0.1:{port}"])
    status, headers, _, _ = _get(mesh)
    assert status == 502 and headers["x-plexus-error"] == "upstream_protocol_error; service=svc"


def test_removed_endpoint_finishes_in_flight_and_gets_nothing_new(mesh: Mesh) -> None:
    slow, fast = mesh.http_upstreams("svc", 2)
    # Warm a pooled idle connection to the slow endpoint, then start a slow request on another connection.
    for _ in range(2):
        _get(mesh, "/warm")
    result: list[tuple[int, dict[str, str], bytes, bool]] = []
    with socket.create_connection(mesh.egress, timeout=5) as s:
        # Round robin: find the request that lands on the slow upstream by asking until its counter moves.
        before = len(slow.received)
        thread = None
        for _ in range(2):
            s.sendall(b"GET /slow/600 HTTP/1.1\r\nHost: svc\r\n\r\n")
            thread = threading.Thread(target=lambda: result.append(read_response(s)))
            thread.start()
            mesh.lt.run(asyncio.sleep(0.1))
            if len(slow.received) > before:
                break
            thread.join(5)
        mesh.set_instances("svc", [f"127.0.0.1:{fast.port}"])  # slow's endpoint leaves while serving
        assert thread is not None
        thread.join(5)
    assert result[-1][0] == 200 and result[-1][2] == b"svc-0"  # the in-flight request completed
    count = len(slow.received)
    for _ in range(6):
        assert _get(mesh)[2] == b"svc-1"
    assert len(slow.received) == count  # nothing new went to the removed endpoint
    assert mesh.lt.call(lambda: len(mesh.plane.ctx.pool.idle.get(f"127.0.0.1:{slow.port}", []))) == 0


def test_unknown_service_hook_subscribes_then_routes(lt) -> None:  # type: ignore[no-untyped-def]
    asked: list[str] = []
    mesh = Mesh(lt)

    async def on_unknown(service: str) -> bool:
        asked.append(service)
        if service != "late":
            return False
        await asyncio.sleep(0.05)  # the root subscribes and waits for the first push
        mesh.plane.update_service("late", [*instances])
        return True

    from plexus.discovery.model import Instance

    try:
        ups = mesh.http_upstreams("other", 1)
        instances = [Instance(service="late", address=f"127.0.0.1:{ups[0].port}")]
        mesh.plane.on_unknown_service = on_unknown
        assert _get(mesh, "/", host="late")[0] == 200
        status, headers, _, _ = _get(mesh, "/", host="never")
        assert status == 503 and headers["x-plexus-error"] == "unknown_service; service=never"
        assert asked == ["late", "never"]
    finally:
        mesh.close()


def test_idle_pooled_connections_to_a_removed_endpoint_are_closed(mesh: Mesh) -> None:
    a, b = mesh.http_upstreams("svc", 2)
    for _ in range(4):
        _get(mesh)
    assert a.connections == 1 and a.closed == 0  # one pooled, idle connection
    mesh.set_instances("svc", [f"127.0.0.1:{b.port}"])
    mesh.lt.run(asyncio.sleep(0.1))
    assert a.closed == 1
    assert b.closed == 0  # the remaining endpoint keeps its pool


def test_upstream_reset_of_an_idempotent_request_is_retried_elsewhere(mesh: Mesh) -> None:
    """A crashed app: GET (idempotent, RFC 9110 §9.2.2) is replayed once on another endpoint; POST is not."""
    resets: list[int] = []

    class Resetter(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            resets.append(len(data))
            self.transport.abort()  # type: ignore[attr-defined]

    async def start() -> int:
        server = await asyncio.get_running_loop().create_server(Resetter, "127.0.0.1", 0)
        return int(server.sockets[0].getsockname()[1])

    port = mesh.lt.run(start())
    good = mesh.http_upstreams("svc", 1)[0]
    mesh.set_instances("svc", [f"127.0.0.1:{port}", f"127.0.0.1:{good.port}"])
    assert [_get(mesh, f"/get-{i}")[0] for i in range(6)] == [200] * 6
    assert resets  # round robin sent some of them to the resetting endpoint first
    posts: Counter[int] = Counter()
    for _ in range(6):
        with socket.create_connection(mesh.egress, timeout=5) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 2\r\n\r\nok")
            posts[read_response(s)[0]] += 1
    assert posts[502] >= 1 and posts[200] >= 1, posts  # a POST that reached the resetter is not replayed


def test_a_client_that_half_closes_mid_body_is_dropped_at_once(mesh: Mesh) -> None:
    """Its request can never complete: the sidecar closes (DC) rather than wait out the request timeout
    (5 s here)."""
    mesh.http_upstreams("svc", 1)
    with socket.create_connection(mesh.egress, timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\npart")
        s.shutdown(socket.SHUT_WR)
        began = time.monotonic()
        assert s.recv(100) == b""  # closed without an answer
        assert time.monotonic() - began < 2.0
    entry = mesh.lt.call(lambda: [e for e in mesh.plane.stats.telemetry.recent if e.path == "/echo"])
    assert [(e.flags, e.status) for e in entry] == [("DC", 0)]
    # a client that half-closes after a whole request still gets its answer
    with socket.create_connection(mesh.egress, timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n\r\nwhole")
        s.shutdown(socket.SHUT_WR)
        assert read_response(s)[:3:2] == (200, b"whol")

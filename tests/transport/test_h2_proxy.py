"""gRPC and HTTP/2 through two data planes in one loop: grpcio client → consumer egress (h2c) → provider
ingress (routed by x-plexus-service) → grpcio app (h2c)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from plexus.core.address import HostPort
from plexus.transport import DataPlane, DataPlaneSettings
from transport import h2_peers
from transport.h2_peers import H2EchoServer, H2Mesh, RawH2, channel, path
from transport.upstreams import HttpUpstream, LoopThread, closed_port

CALL_TIMEOUT = 5.0


@pytest.fixture(autouse=True, params=["h2", "ngh2"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs over both HTTP/2 engines of the proxy (DataPlaneSettings.h2_engine)."""
    h2_peers.ENGINE[0] = request.param
    try:
        yield request.param
    finally:
        h2_peers.ENGINE[0] = "h2"


@pytest.fixture
def h2mesh(lt: LoopThread) -> Iterator[H2Mesh]:
    m = H2Mesh(lt)
    try:
        yield m
    finally:
        m.close()


def _error(fn: object) -> grpc.RpcError:
    try:
        fn()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def test_unary_with_metadata_both_ways_through_two_sidecars(h2mesh: H2Mesh) -> None:
    app = h2mesh.app()
    h2mesh.provide("orders", app.port)
    port = h2mesh.service_port("orders")
    with channel(port) as ch:
        echo = ch.unary_unary(path("Echo"))
        for i in range(3):
            md = (("x-trace", f"t{i}"), ("x-blob-bin", b"\x00\xff"))
            reply, call = echo.with_call(b"hello %d" % i, timeout=CALL_TIMEOUT, metadata=md)
            assert reply == b"hello %d" % i
            assert ("x-instance", "app") in call.initial_metadata()
            trailers = dict(call.trailing_metadata())
            assert trailers["echo-x-trace"] == f"t{i}"
            assert trailers["echo-x-blob-bin"] == b"\x00\xff"
            assert call.code() is grpc.StatusCode.OK
    assert app.calls == {"Echo": 3}
    text = h2mesh.metrics(h2mesh.consumer)
    assert 'plexus_requests_total{service="orders",direction="egress",code_class="2xx"} 3' in text
    text = h2mesh.metrics(h2mesh.provider)
    assert 'plexus_requests_total{service="orders",direction="ingress",code_class="2xx"} 3' in text


def test_unary_through_the_shared_egress_by_authority(h2mesh: H2Mesh) -> None:
    app = h2mesh.app()
    h2mesh.provide("orders", app.port)
    with channel(h2mesh.egress, **{"grpc.default_authority": "orders"}) as ch:
        assert ch.unary_unary(path("Echo"))(b"via shared", timeout=CALL_TIMEOUT) == b"via shared"


def test_server_streaming_and_bidi_in_order(h2mesh: H2Mesh) -> None:
    app = h2mesh.app()
    h2mesh.provide("orders", app.port)
    with channel(h2mesh.service_port("orders")) as ch:
        # 2,000 x 1 KiB: more than every flow-control window on the path, so windows must reopen.
        got = list(ch.unary_stream(path("Stream"))(b"2000,1024", timeout=CALL_TIMEOUT * 2))
        assert len(got) == 2000
        assert all(m[:8] == b"%08d" % i and len(m) == 1024 for i, m in enumerate(got))
        replies = list(
            ch.stream_stream(path("Bidi"))(iter([b"a", b"b" * 100_000, b"c"]), timeout=CALL_TIMEOUT)
        )
        assert replies == [b"echo:a", b"echo:" + b"b" * 100_000, b"echo:c"]


def test_status_error_is_preserved_end_to_end(h2mesh: H2Mesh) -> None:
    app = h2mesh.app()
    h2mesh.provide("orders", app.port)
    with channel(h2mesh.service_port("orders")) as ch:
        exc = _error(lambda: ch.unary_unary(path("Fail"))(b"order 7 \xc3\xa9", timeout=CALL_TIMEOUT))
    assert exc.code() is grpc.StatusCode.NOT_FOUND
    assert exc.details() == "no such thing: order 7 \u00e9"


def test_deadline_is_honoured_and_the_app_sees_the_cancel(h2mesh: H2Mesh) -> None:
    app = h2mesh.app()
    h2mesh.provide("orders", app.port)
    with channel(h2mesh.service_port("orders")) as ch:
        started = time.monotonic()
        exc = _error(lambda: ch.unary_unary(path("Slow"))(b"3", timeout=0.3))
        elapsed = time.monotonic() - started
    assert exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 2.5
    deadline = time.monotonic() + 3
    while app.cancelled < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.cancelled == 1  # the upstream stream was reset, so the app stopped working on it


def test_sidecar_deadline_is_min_of_grpc_timeout_and_request_timeout(lt: LoopThread) -> None:
    m = H2Mesh(lt, request_timeout=0.4)
    try:
        app = m.app()
        m.provide("orders", app.port)
        port = m.service_port("orders")
        with channel(port) as ch:
            # The caller allows 5 s; the sidecar's request_timeout (0.4 s) ends the call first.
            exc = _error(lambda: ch.unary_unary(path("Slow"))(b"3", timeout=5))
        assert exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert exc.details() == "upstream request timeout for orders"
        text = m.metrics(m.consumer) + m.metrics(m.provider)
        assert 'plexus_local_replies_total{reason="upstream_request_timeout",service="orders"}' in text
        with channel(port) as ch:
            assert ch.unary_unary(path("Echo"))(b"x", timeout=5) == b"x"
        left = app.time_left[-1]
        assert left is not None and 0 < left <= 0.4 + 0.02  # the sidecar's shorter deadline (grpcio rounds)
    finally:
        m.close()


def test_client_cancel_resets_the_upstream_stream(h2mesh: H2Mesh) -> None:
    app = h2mesh.app()
    h2mesh.provide("orders", app.port)
    with channel(h2mesh.service_port("orders")) as ch:
        future = ch.unary_unary(path("Slow")).future(b"3", timeout=CALL_TIMEOUT)
        deadline = time.monotonic() + 3
        while app.calls.get("Slow", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        future.cancel()
        while app.cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert app.cancelled == 1


def test_no_endpoints_is_unavailable_with_the_mesh_text(h2mesh: H2Mesh) -> None:
    with channel(h2mesh.service_port("orders")) as ch:
        exc = _error(lambda: ch.unary_unary(path("Echo"))(b"x", timeout=CALL_TIMEOUT))
    assert exc.code() is grpc.StatusCode.UNAVAILABLE
    assert exc.details() == "no healthy upstream for orders"
    metadata = dict(exc.trailing_metadata())  # type: ignore[attr-defined]
    assert metadata["x-plexus-error"] == "no_healthy_upstream; service=orders"
    assert metadata["x-plexus-hop"] == "consumer"
    text = h2mesh.metrics(h2mesh.consumer)
    assert 'plexus_local_replies_total{reason="no_healthy_upstream",service="orders"} 1' in text


def test_unknown_service_on_the_shared_egress(h2mesh: H2Mesh) -> None:
    with channel(h2mesh.egress, **{"grpc.default_authority": "nowhere"}) as ch:
        exc = _error(lambda: ch.unary_unary(path("Echo"))(b"x", timeout=CALL_TIMEOUT))
    assert exc.code() is grpc.StatusCode.UNIMPLEMENTED
    assert exc.details() == "unknown service for nowhere"


def test_connect_failure_is_retried_on_another_endpoint(h2mesh: H2Mesh) -> None:
    app = h2mesh.app()
    h2mesh.provide("orders", app.port)
    dead = f"127.0.0.1:{closed_port()}"
    h2mesh.set_instances("orders", [dead, str(h2mesh.ingress)])
    with channel(h2mesh.service_port("orders")) as ch:
        for i in range(6):
            assert ch.unary_unary(path("Echo"))(b"%d" % i, timeout=CALL_TIMEOUT) == b"%d" % i
    assert "plexus_upstream_rq_retry_total 0" not in h2mesh.metrics(h2mesh.consumer)


def test_app_down_is_retried_on_another_provider(lt: LoopThread) -> None:
    """Provider 1's app is gone: its sidecar answers local_app_unavailable, which the consumer retries."""
    m = H2Mesh(lt)
    try:
        second = DataPlane(DataPlaneSettings(hop_name="provider2", connect_timeout=0.5))
        ingress2: HostPort = lt.run(second.listen_ingress("127.0.0.1", 0))
        app = m.app("two")
        lt.call(m.provider.set_local_service, "orders", "grpc", HostPort("127.0.0.1", closed_port()))
        lt.call(second.set_local_service, "orders", "grpc", HostPort("127.0.0.1", app.port))
        m.set_instances("orders", [str(m.ingress), str(ingress2)])
        with channel(m.service_port("orders")) as ch:
            for i in range(6):
                assert ch.unary_unary(path("Echo"))(b"%d" % i, timeout=CALL_TIMEOUT) == b"%d" % i
        text = m.metrics(m.provider)
        assert 'plexus_local_replies_total{reason="local_app_unavailable",service="orders"}' in text
        lt.run(second.close())
    finally:
        m.close()


def test_upstream_max_concurrent_streams_opens_more_connections(h2mesh: H2Mesh) -> None:
    """The app allows 5 streams per connection: 20 concurrent calls wait for slots or open more
    connections, and none is refused."""
    app = h2mesh.app("narrow", max_streams=5)
    h2mesh.provide("orders", app.port)
    with channel(h2mesh.service_port("orders")) as ch:
        slow = ch.unary_unary(path("Slow"))
        futures = [slow.future(b"0.3", timeout=CALL_TIMEOUT) for _ in range(20)]
        assert [f.result() for f in futures] == [b"slept"] * 20
    pool = h2mesh.provider.h2.pool
    assert h2mesh.lt.call(pool.connections, f"127.0.0.1:{app.port}") >= 2


class _SilentH2Server:
    """Accepts, sends its SETTINGS (or nothing), then reads and never answers: a hung HTTP/2 peer."""

    def __init__(self, settings: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.settings = settings
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.settings:
                conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # an empty SETTINGS frame

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_unanswered_ping_fails_streams_at_once(lt: LoopThread) -> None:
    """An upstream that sent SETTINGS and then says nothing: the PING after the quiet interval is never
    acknowledged, so the connection and its stream fail long before the request timeout."""
    m = H2Mesh(lt, h2_ping_interval=0.2, h2_ping_timeout=0.3, request_timeout=10.0)
    hung = _SilentH2Server(settings=True)
    try:
        m.set_instances("orders", [f"127.0.0.1:{hung.port}"])
        with channel(m.service_port("orders")) as ch:
            started = time.monotonic()
            exc = _error(lambda: ch.unary_unary(path("Echo"))(b"x", timeout=CALL_TIMEOUT))
            elapsed = time.monotonic() - started
        assert exc.code() is grpc.StatusCode.UNAVAILABLE
        assert exc.details() == "upstream reset for orders"
        assert elapsed < 3.0
        assert m.consumer.h2.pool.ping_failures >= 1
    finally:
        hung.close()
        m.close()


def test_upstream_without_settings_is_a_connect_failure(lt: LoopThread) -> None:
    m = H2Mesh(lt, connect_timeout=0.3, request_timeout=10.0)
    mute = _SilentH2Server(settings=False)
    try:
        m.set_instances("orders", [f"127.0.0.1:{mute.port}"])
        with channel(m.service_port("orders")) as ch:
            started = time.monotonic()
            exc = _error(lambda: ch.unary_unary(path("Echo"))(b"x", timeout=CALL_TIMEOUT))
            elapsed = time.monotonic() - started
        assert exc.code() is grpc.StatusCode.UNAVAILABLE
        assert exc.details() == "upstream connect failed for orders"
        assert elapsed < 3.0  # one try and one retry of 0.3 s each
    finally:
        mute.close()
        m.close()


def test_idle_upstream_connections_close(lt: LoopThread) -> None:
    m = H2Mesh(lt, h2_upstream_idle_timeout=0.3, h2_ping_interval=0.1)
    try:
        app = m.app()
        m.provide("orders", app.port)
        with channel(m.service_port("orders")) as ch:
            assert ch.unary_unary(path("Echo"))(b"x", timeout=CALL_TIMEOUT) == b"x"
            key = str(m.ingress)
            assert lt.call(m.consumer.h2.pool.connections, key) == 1
            deadline = time.monotonic() + 3
            while lt.call(m.consumer.h2.pool.connections, key) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert lt.call(m.consumer.h2.pool.connections, key) == 0
            # and a later call opens a fresh one
            assert ch.unary_unary(path("Echo"))(b"y", timeout=CALL_TIMEOUT) == b"y"
    finally:
        m.close()


def test_endpoint_removal_drains_in_flight_calls(h2mesh: H2Mesh) -> None:
    app = h2mesh.app()
    h2mesh.provide("orders", app.port)
    with channel(h2mesh.service_port("orders")) as ch:
        slow = ch.unary_unary(path("Slow"))
        futures = [slow.future(b"0.5", timeout=CALL_TIMEOUT) for _ in range(3)]
        deadline = time.monotonic() + 3
        while app.calls.get("Slow", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        h2mesh.set_instances("orders", [])  # the provider left: in-flight calls finish, nothing new starts
        assert [f.result() for f in futures] == [b"slept"] * 3
        key = str(h2mesh.ingress)
        while h2mesh.lt.call(h2mesh.consumer.h2.pool.connections, key) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert h2mesh.lt.call(h2mesh.consumer.h2.pool.connections, key) == 0
        exc = _error(lambda: slow(b"0", timeout=CALL_TIMEOUT))
        assert exc.code() is grpc.StatusCode.UNAVAILABLE


def test_upstream_connection_lost_fails_every_stream_on_it(h2mesh: H2Mesh) -> None:
    app = h2mesh.app()
    h2mesh.provide("orders", app.port)
    with channel(h2mesh.service_port("orders")) as ch:
        slow = ch.unary_unary(path("Slow"))
        futures = [slow.future(b"10", timeout=CALL_TIMEOUT) for _ in range(5)]
        deadline = time.monotonic() + 3
        while app.calls.get("Slow", 0) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        stopper = threading.Thread(target=app.server.stop, args=(0,))
        started = time.monotonic()
        stopper.start()
        codes = []
        for future in futures:
            try:
                future.result()
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
        stopper.join(5)
    assert time.monotonic() - started < 3.0
    assert codes == ["UNAVAILABLE"] * 5, codes


# --- plain HTTP/2 -------------------------------------------------------------------------------------


def test_plain_http2_is_forwarded_to_an_h2c_app(h2mesh: H2Mesh) -> None:
    server = H2EchoServer()
    h2mesh.lt.run(server.start())
    try:
        h2mesh.provide("web", server.port)
        client = RawH2(h2mesh.egress)
        try:
            for i in range(3):
                status, headers, body, reset = client.request(
                    [
                        (":method", "POST"),
                        (":scheme", "http"),
                        (":authority", "web"),
                        (":path", f"/things/{i}"),
                        ("x-note", "n"),
                        ("te", "trailers"),
                    ],
                    b"payload",
                )
                assert (status, body, reset) == (200, b"POST /things/%d\npayload" % i, None)
                assert headers["echo-x-note"] == "n"
                assert "echo-x-plexus-service" not in headers  # the provider's ingress strips it
        finally:
            client.close()
        assert server.requests == 3
    finally:
        h2mesh.lt.run(server.stop())


def test_plain_http2_local_reply_has_status_and_reason_headers(h2mesh: H2Mesh) -> None:
    client = RawH2(h2mesh.egress)
    try:
        status, headers, body, reset = client.request(
            [(":method", "GET"), (":scheme", "http"), (":authority", "nowhere"), (":path", "/")]
        )
    finally:
        client.close()
    assert status == 503 and reset is None
    assert headers["x-plexus-error"] == "unknown_service; service=nowhere"
    assert headers["x-plexus-hop"] == "consumer"
    assert body.startswith(b"503 Service Unavailable")


def test_http2_to_an_http1_app_is_a_clear_not_implemented(h2mesh: H2Mesh, lt: LoopThread) -> None:
    up = HttpUpstream("h1")
    lt.run(up.start())
    try:
        h2mesh.provide("legacy", up.port, protocol="http")
        client = RawH2(h2mesh.egress)
        try:
            status, headers, body, _ = client.request(
                [(":method", "GET"), (":scheme", "http"), (":authority", "legacy"), (":path", "/")]
            )
        finally:
            client.close()
        assert status == 501
        assert headers["x-plexus-error"] == "not_implemented; service=legacy"
        assert headers["x-plexus-hop"] == "provider"
        assert b"HTTP/1.1" in body and b"not supported" in body
        assert up.received == []
    finally:
        lt.run(up.stop())


def test_large_request_stream_flows_under_flow_control(h2mesh: H2Mesh) -> None:
    """5 MB up through both sidecars (far more than any window): the caller is slowed, nothing is lost."""
    app = h2mesh.app()
    h2mesh.provide("orders", app.port)
    chunks = [bytes([i % 251]) * 100_000 for i in range(50)]
    with channel(h2mesh.service_port("orders")) as ch:
        replies = list(ch.stream_stream(path("Bidi"))(iter(chunks), timeout=CALL_TIMEOUT * 2))
    assert replies == [b"echo:" + c for c in chunks]


def test_drain_lets_in_flight_calls_finish(h2mesh: H2Mesh) -> None:
    app = h2mesh.app()
    h2mesh.provide("orders", app.port)
    port = h2mesh.service_port("orders")
    with channel(port) as ch:
        future = ch.unary_unary(path("Slow")).future(b"0.5", timeout=CALL_TIMEOUT)
        deadline = time.monotonic() + 3
        while app.calls.get("Slow", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        h2mesh.lt.run(h2mesh.consumer.close(drain_seconds=3.0))  # GOAWAY to the caller, then wait
        assert future.result() == b"slept"
    with pytest.raises(OSError):
        socket.create_connection(port, timeout=1).close()  # the listener is gone


def test_response_before_request_end_leaves_no_half_open_stream(h2mesh: H2Mesh) -> None:
    """The app answers a client stream after its first message: the proxies stop the rest of the request,
    so no stream stays open against the app's limit of 5 (twenty such calls on one connection)."""
    app = h2mesh.app("early", max_streams=5)
    h2mesh.provide("orders", app.port)

    def requests() -> Iterator[bytes]:
        yield b"first"
        time.sleep(0.05)
        yield b"second"

    with channel(h2mesh.service_port("orders")) as ch:
        first = ch.stream_unary(path("First"))
        for _ in range(20):
            assert first(requests(), timeout=CALL_TIMEOUT) == b"first"
    pool = h2mesh.provider.h2.pool
    assert h2mesh.lt.call(pool.connections, f"127.0.0.1:{app.port}") == 1


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("rapid_reset", "h2_rapid_reset"),
        ("ping_flood", "h2_ping_flood"),
        ("settings_flood", "h2_settings_flood"),
    ],
)
def test_floods_get_goaway_enhance_your_calm(h2mesh: H2Mesh, attack: str, reason: str) -> None:
    """Both engines stop an abusive client with GOAWAY ENHANCE_YOUR_CALM, count the reason, and forward
    nothing of the attack to the app (frames from tests/e2e/h2_attack_clients.py)."""
    from e2e import h2_attack_clients as atk

    app = h2mesh.app()
    h2mesh.provide("orders", app.port)
    port = h2mesh.service_port("orders")
    address = f"{port.host}:{port.port}"
    head = atk.grpc_request(address, path("Bidi"), "orders")
    chunks = {
        "rapid_reset": atk.rapid_reset(head),
        "ping_flood": atk.ping_flood(),
        "settings_flood": atk.settings_flood(),
    }
    outcome = atk.attack(address, chunks[attack])
    assert outcome.closed and outcome.goaways, outcome.describe()
    assert outcome.goaways[-1].error_code == 11, outcome.describe()  # ENHANCE_YOUR_CALM
    assert f'plexus_downstream_rejects_total{{reason="{reason}"}} 1' in h2mesh.metrics(h2mesh.consumer)
    assert app.calls.get("Bidi", 0) == 0
    with channel(port) as ch:  # and the next client is served
        assert ch.unary_unary(path("Echo"))(b"after", timeout=CALL_TIMEOUT) == b"after"

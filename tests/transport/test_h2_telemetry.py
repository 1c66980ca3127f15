"""What the HTTP/2 and gRPC paths report when a stream ends (one RequestEntry per hop, Istio's series keys)
and the trace context they forward: grpcio client → consumer sidecar → provider sidecar → grpcio app."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from plexus.core.address import HostPort
from plexus.discovery.model import Instance
from plexus.proxy.telemetry import RequestEntry
from plexus.transport import DataPlane
from transport import h2_peers
from transport.h2_peers import H2EchoServer, H2Mesh, RawH2, channel
from transport.upstreams import LoopThread

SERVICE = "plexus.test.Traced"
CALLER = "web-v1"  # the consumer sidecar's workload (sent as x-plexus-caller)
PROVIDER = "orders-v2"  # the provider instance's workload, as the registry publishes it
CALL_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0  # generous: these tests are not about connect failures, and CI machines are busy
WAIT = 5.0  # bound for entries to show up (they are written before the response leaves the sidecar)


class TracedApp:
    """A grpcio server that keeps each call's metadata: ``Echo`` answers the request, ``Missing`` aborts
    NOT_FOUND, ``Slow`` sleeps the request's seconds unless cancelled."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.started = threading.Event()
        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "Missing": grpc.unary_unary_rpc_method_handler(self.missing),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
        }
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8), options=list(h2_peers.OPTIONS))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _keep(self, context: grpc.ServicerContext) -> None:
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._keep(context)
        return request

    def missing(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._keep(context)
        context.abort(grpc.StatusCode.NOT_FOUND, "no order " + request.decode())
        raise AssertionError("unreachable")

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._keep(context)
        context.send_initial_metadata((("x-begun", "1"),))
        self.started.set()
        end = time.monotonic() + float(request)
        while time.monotonic() < end and context.is_active():
            time.sleep(0.01)
        return b"slept"

    def stop(self) -> None:
        self.server.stop(0)


def rpc(method: str) -> str:
    return f"/{SERVICE}/{method}"


@pytest.fixture(params=["h2", "ngh2"])
def mesh(request: pytest.FixtureRequest, lt: LoopThread) -> Iterator[H2Mesh]:
    h2_peers.ENGINE[0] = request.param
    m = H2Mesh(lt, workload=CALLER, connect_timeout=CONNECT_TIMEOUT)
    try:
        yield m
    finally:
        m.close()
        h2_peers.ENGINE[0] = "h2"


@pytest.fixture
def app() -> Iterator[TracedApp]:
    a = TracedApp()
    try:
        yield a
    finally:
        a.stop()


def provide(mesh: H2Mesh, service: str, port: int, protocol: str = "grpc") -> None:
    """The app behind the provider sidecar, published to the consumer with its workload."""
    mesh.lt.call(mesh.provider.set_local_service, service, protocol, HostPort("127.0.0.1", port))
    instance = Instance(service=service, address=str(mesh.ingress), protocol=protocol, workload=PROVIDER)
    mesh.lt.call(mesh.consumer.update_service, service, [instance])


def entries(mesh: H2Mesh, plane: DataPlane, count: int) -> list[RequestEntry]:
    """The plane's recent entries once there are ``count`` of them (bounded wait)."""
    deadline = time.monotonic() + WAIT
    while True:
        got: list[RequestEntry] = mesh.lt.call(lambda: list(plane.stats.telemetry.recent))
        if len(got) >= count:
            return got
        assert time.monotonic() < deadline, f"{len(got)} of {count} entries within {WAIT}s"
        time.sleep(0.01)


SeriesCounts = dict[tuple[str, int, str, str], int]  # (peer workload, status, grpc status, flags) -> requests


def series(mesh: H2Mesh, plane: DataPlane, service: str, direction: str) -> SeriesCounts:
    def read() -> SeriesCounts:
        stats = plane.stats.services[(service, direction)]
        return {key: s.count for key, s in stats.series.items()}

    result: SeriesCounts = mesh.lt.call(read)
    return result


def error_of(fn: Callable[[], object]) -> grpc.RpcError:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def test_grpc_ok_and_error_each_give_one_entry_per_hop(mesh: H2Mesh, app: TracedApp) -> None:
    provide(mesh, "orders", app.port)
    port = mesh.service_port("orders")
    with channel(port) as ch:
        assert ch.unary_unary(rpc("Echo"))(b"hello", timeout=CALL_TIMEOUT) == b"hello"
        exc = error_of(lambda: ch.unary_unary(rpc("Missing"))(b"7", timeout=CALL_TIMEOUT))
    assert exc.code() is grpc.StatusCode.NOT_FOUND
    out_ok, out_err = entries(mesh, mesh.consumer, 2)
    in_ok, in_err = entries(mesh, mesh.provider, 2)

    for entry in (out_ok, out_err, in_ok, in_err):
        assert (entry.service, entry.protocol, entry.method, entry.status) == ("orders", "grpc", "POST", 200)
        assert entry.reason == "" and entry.flags == "-" and entry.attempts == 1
        assert entry.request_id and entry.trace_id and entry.span_id
        assert "grpc-python" in entry.user_agent
    assert (out_ok.path, out_ok.grpc_status, out_err.path, out_err.grpc_status) == (
        rpc("Echo"), "0", rpc("Missing"), "5"
    )
    assert (in_ok.grpc_status, in_err.grpc_status) == ("0", "5")
    # DATA payload both ways: the 5-byte gRPC message prefix plus the message; an error carries none.
    assert (out_ok.request_bytes, out_ok.response_bytes, in_ok.response_bytes) == (10, 10, 10)
    assert (out_err.request_bytes, out_err.response_bytes, in_err.response_bytes) == (6, 0, 0)
    assert (out_ok.direction, in_ok.direction) == ("outbound", "inbound")
    assert (out_ok.peer_workload, in_ok.peer_workload) == (PROVIDER, CALLER)
    assert out_ok.upstream == str(mesh.ingress)
    assert in_ok.upstream == f"127.0.0.1:{app.port}"
    # One request across both hops: the same request id and trace, the provider's span a child of ours.
    assert (in_ok.request_id, in_ok.trace_id) == (out_ok.request_id, out_ok.trace_id)
    assert in_ok.parent_span_id == out_ok.span_id and out_ok.parent_span_id == ""
    assert out_ok.request_id != out_err.request_id

    assert series(mesh, mesh.consumer, "orders", "egress") == {
        (PROVIDER, 200, "0", "-"): 1,
        (PROVIDER, 200, "5", "-"): 1,
    }
    assert series(mesh, mesh.provider, "orders", "ingress") == {
        (CALLER, 200, "0", "-"): 1,
        (CALLER, 200, "5", "-"): 1,
    }
    text = mesh.metrics(mesh.consumer)  # the plexus_* families count as before
    assert 'plexus_requests_total{service="orders",direction="egress",code_class="2xx"} 2' in text


def test_traceparent_reaches_the_app_with_the_provider_sidecars_span_as_parent(
    mesh: H2Mesh, app: TracedApp
) -> None:
    provide(mesh, "orders", app.port)
    trace_id, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    metadata = (
        ("traceparent", f"00-{trace_id}-{client_span}-01"),
        ("tracestate", "vendor=opaque"),
        ("x-request-id", "req-42"),
    )
    with channel(mesh.service_port("orders")) as ch:
        assert ch.unary_unary(rpc("Echo"))(b"x", timeout=CALL_TIMEOUT, metadata=metadata) == b"x"
    (out,) = entries(mesh, mesh.consumer, 1)
    (inbound,) = entries(mesh, mesh.provider, 1)
    (seen,) = app.metadata
    assert out.trace_id == inbound.trace_id == trace_id
    assert out.parent_span_id == client_span
    assert inbound.parent_span_id == out.span_id != client_span
    assert seen["traceparent"] == f"00-{trace_id}-{inbound.span_id}-01"
    assert seen["tracestate"] == "vendor=opaque"  # passed through untouched
    assert seen["x-request-id"] == out.request_id == inbound.request_id == "req-42"
    assert out.sampled and inbound.sampled  # the caller's sampled flag is followed, whatever the rate


def test_a_request_id_is_made_when_the_caller_sends_none(mesh: H2Mesh, app: TracedApp) -> None:
    provide(mesh, "orders", app.port)
    with channel(mesh.service_port("orders")) as ch:
        for _ in range(2):
            ch.unary_unary(rpc("Echo"))(b"x", timeout=CALL_TIMEOUT)
    first, second = app.metadata
    outs = entries(mesh, mesh.consumer, 2)
    assert [first["x-request-id"], second["x-request-id"]] == [e.request_id for e in outs]
    assert first["x-request-id"] != second["x-request-id"]
    assert first["traceparent"].split("-")[1] == outs[0].trace_id


def test_b3_headers_are_continued_on_plain_http2(mesh: H2Mesh) -> None:
    server = H2EchoServer()
    mesh.lt.run(server.start())
    try:
        provide(mesh, "web", server.port)
        client = RawH2(mesh.egress)
        try:
            status, headers, body, _ = client.request(
                [
                    (":method", "PUT"),
                    (":scheme", "http"),
                    (":authority", "web"),
                    (":path", "/things/1?x=y"),
                    ("x-b3-traceid", "463ac35c9f6413ad"),
                    ("x-b3-spanid", "a2fb4a1d1a96d312"),
                    ("x-b3-sampled", "1"),
                    ("user-agent", "probe/1"),
                ],
                b"payload",
            )
        finally:
            client.close()
    finally:
        mesh.lt.run(server.stop())
    assert status == 200, headers
    (out,) = entries(mesh, mesh.consumer, 1)
    (inbound,) = entries(mesh, mesh.provider, 1)
    assert (out.protocol, out.method, out.path, out.authority) == ("http", "PUT", "/things/1?x=y", "web")
    assert (out.grpc_status, out.user_agent, out.request_bytes, out.response_bytes) == (
        "", "probe/1", len(b"payload"), len(body)
    )
    assert out.trace_id == inbound.trace_id == "463ac35c9f6413ad".rjust(32, "0")
    assert out.parent_span_id == "a2fb4a1d1a96d312" and inbound.parent_span_id == out.span_id
    # The consumer sidecar continued B3 (rewritten for the next hop, with a traceparent the provider
    # sidecar continues): the trace id and sampling decision reach the app.
    assert headers["echo-x-b3-traceid"] == "463ac35c9f6413ad"
    assert headers["echo-x-b3-sampled"] == "1"
    assert headers["echo-x-request-id"] == out.request_id
    assert series(mesh, mesh.consumer, "web", "egress") == {(PROVIDER, 200, "", "-"): 1}


def test_unrouted_streams_count_under_unknown_with_the_local_replys_flag(mesh: H2Mesh) -> None:
    with channel(mesh.egress, **{"grpc.default_authority": "nowhere"}) as ch:
        for _ in range(3):
            exc = error_of(lambda: ch.unary_unary(rpc("Echo"))(b"x", timeout=CALL_TIMEOUT))
            assert exc.code() is grpc.StatusCode.UNIMPLEMENTED
    got = entries(mesh, mesh.consumer, 3)
    assert {(e.service, e.status, e.grpc_status, e.flags, e.reason) for e in got} == {
        ("unknown", 200, "12", "NR", "unknown_service")
    }
    assert all(e.authority == "nowhere" and e.peer_workload == "unknown" for e in got)
    assert series(mesh, mesh.consumer, "unknown", "egress") == {("unknown", 200, "12", "NR"): 3}
    text = mesh.metrics(mesh.consumer)
    # plexus_requests_total counts a gRPC local reply by the status it stands for, as it always did.
    assert 'plexus_requests_total{service="unknown",direction="egress",code_class="5xx"} 3' in text


def test_no_healthy_upstream_is_flagged_uh(mesh: H2Mesh) -> None:
    with channel(mesh.service_port("orders")) as ch:
        exc = error_of(lambda: ch.unary_unary(rpc("Echo"))(b"x", timeout=CALL_TIMEOUT))
    assert exc.code() is grpc.StatusCode.UNAVAILABLE
    (entry,) = entries(mesh, mesh.consumer, 1)
    assert (entry.service, entry.status, entry.grpc_status, entry.flags) == ("orders", 200, "14", "UH")
    assert entry.upstream == "" and entry.attempts == 0


def test_a_caller_that_cancels_is_flagged_dc_on_both_hops(mesh: H2Mesh, app: TracedApp) -> None:
    provide(mesh, "orders", app.port)
    with channel(mesh.service_port("orders")) as ch:
        future = ch.unary_unary(rpc("Slow")).future(b"3", timeout=CALL_TIMEOUT)
        assert app.started.wait(WAIT)
        future.cancel()
        (out,) = entries(mesh, mesh.consumer, 1)
        (inbound,) = entries(mesh, mesh.provider, 1)
    assert (out.flags, inbound.flags) == ("DC", "DC")
    assert inbound.status == 200  # the app's headers had gone out (they may not have reached the consumer)
    assert out.grpc_status == "" and out.reason == ""


def test_fresh_ids_are_read_back_from_what_was_forwarded(mesh: H2Mesh, app: TracedApp) -> None:
    """No trace field came in: the ids the entry reports (decoded only when read) are the ones sent on, and
    the sampled flag of the forwarded traceparent is the entry's."""
    provide(mesh, "orders", app.port)
    tracer = mesh.consumer.stats.telemetry.tracer

    def sample_all() -> None:
        tracer.sample_rate = 1.0

    mesh.lt.call(sample_all)
    with channel(mesh.service_port("orders")) as ch:
        ch.unary_unary(rpc("Echo"))(b"x", timeout=CALL_TIMEOUT)
    (sent,) = app.metadata
    (out,) = entries(mesh, mesh.consumer, 1)
    (inbound,) = entries(mesh, mesh.provider, 1)
    version, trace_id, span_id, flags = sent["traceparent"].split("-")  # the provider sidecar's span
    assert (version, flags) == ("00", "01") and out.sampled and inbound.sampled
    assert (out.trace_id, out.parent_span_id) == (trace_id, "")
    assert (inbound.trace_id, inbound.span_id, inbound.parent_span_id) == (trace_id, span_id, out.span_id)
    request_id = sent["x-request-id"]
    assert out.request_id == request_id and len(request_id) == 36 and request_id[14] == "4"
    assert out.authority and "grpc-python" in out.user_agent

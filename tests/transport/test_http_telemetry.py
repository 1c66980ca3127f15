"""HTTP/1.1 telemetry over real sockets: a consumer sidecar's egress → a provider sidecar's ingress → an app.

Every request ends as one RequestEntry per hop (plexus.proxy.telemetry), counted by ServiceStats.done; trace
context (W3C traceparent, B3) and x-request-id are propagated hop by hop, each hop forwarding its own span as
the parent. Entries are read from each data plane's Telemetry.recent ring, on the data plane's loop.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator

import h11
import pytest

from plexus.core.address import HostPort
from plexus.discovery.model import Instance
from plexus.proxy.telemetry import RequestEntry
from plexus.proxy.tracing import Tracer, parse_traceparent
from plexus.transport import DataPlane, DataPlaneSettings
from transport.upstreams import HttpUpstream, LoopThread, closed_port, read_response

CONSUMER_WORKLOAD = "shop-v1"
PROVIDER_WORKLOAD = "orders-v1"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"
WAIT_S = 5.0  # bound on waiting for an entry (a request's end is reported on the data plane's loop)


class RawHeadersUpstream(HttpUpstream):
    """HttpUpstream that also keeps each request's header pairs as sent (to see a name sent twice)."""

    raw: list[list[tuple[str, str]]]

    async def _answer(self, conn: h11.Connection, writer, req: h11.Request, body: bytes) -> None:  # type: ignore[no-untyped-def]
        if not hasattr(self, "raw"):
            self.raw = []
        self.raw.append([(k.decode().lower(), v.decode()) for k, v in req.headers])
        await super()._answer(conn, writer, req, body)


class Chain:
    """Consumer data plane (shared egress) → provider data plane (ingress) → one app, on one loop."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.consumer = DataPlane(
            DataPlaneSettings(hop_name="consumer", workload=CONSUMER_WORKLOAD, connect_timeout=0.5)
        )
        self.provider = DataPlane(
            DataPlaneSettings(hop_name="provider", workload=PROVIDER_WORKLOAD, connect_timeout=0.5)
        )
        self.egress: HostPort = lt.run(self.consumer.listen_shared_egress("127.0.0.1", 0))
        self.ingress: HostPort = lt.run(self.provider.listen_ingress("127.0.0.1", 0))
        self.app = RawHeadersUpstream("orders-app")
        lt.run(self.app.start())
        lt.call(self.provider.set_local_service, "orders", "http", HostPort("127.0.0.1", self.app.port))
        instance = Instance(service="orders", address=str(self.ingress), workload=PROVIDER_WORKLOAD)
        lt.call(self.consumer.update_service, "orders", [instance])

    def sample_percent(self, percent: float) -> None:
        for plane in (self.consumer, self.provider):
            plane.stats.telemetry.tracer = Tracer(percent)

    def entries(self, plane: DataPlane) -> list[RequestEntry]:
        return list(self.lt.call(lambda: list(plane.stats.telemetry.recent)))

    def wait_entries(self, plane: DataPlane, count: int) -> list[RequestEntry]:
        deadline = time.monotonic() + WAIT_S
        while True:
            found = self.entries(plane)
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, f"{len(found)} entries after {WAIT_S}s, wanted {count}: {found}"
                return found
            time.sleep(0.02)

    def close(self) -> None:
        self.lt.run(self.consumer.close())
        self.lt.run(self.provider.close())
        self.lt.run(self.app.stop())


@pytest.fixture
def chain(lt: LoopThread) -> Iterator[Chain]:
    c = Chain(lt)
    try:
        yield c
    finally:
        c.close()


def _call(address: HostPort, request: bytes, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(request)
        status, headers, body, _ = read_response(s, method=method)
        return status, headers, body


def _one(entries: list[RequestEntry], pred: Callable[[RequestEntry], bool] = lambda e: True) -> RequestEntry:
    found = [e for e in entries if pred(e)]
    assert len(found) == 1, found
    return found[0]


def test_traceparent_follows_hops_and_stays_sampled(chain: Chain) -> None:
    chain.sample_percent(0.0)  # the client's sampled flag must win over this hop's rate
    status, _, _ = _call(
        chain.egress,
        b"GET /items?id=7 HTTP/1.1\r\nHost: orders\r\n"
        b"traceparent: 00-" + CLIENT_TRACE.encode() + b"-" + CLIENT_PARENT.encode() + b"-01\r\n"
        b"tracestate: vendor=abc\r\n\r\n",
    )
    assert status == 200
    out = _one(chain.wait_entries(chain.consumer, 1))
    inn = _one(chain.wait_entries(chain.provider, 1))
    raw = chain.app.raw[-1]
    parents = [v for k, v in raw if k == "traceparent"]
    assert len(parents) == 1, raw  # the incoming traceparent is replaced, not sent along
    parsed = parse_traceparent(parents[0])
    assert parsed is not None
    trace_id, parent, sampled = parsed
    assert trace_id == CLIENT_TRACE == out.trace_id == inn.trace_id
    assert parent == inn.span_id and parent != CLIENT_PARENT and parent != out.span_id
    assert out.parent_span_id == CLIENT_PARENT and inn.parent_span_id == out.span_id
    assert sampled and out.sampled and inn.sampled
    assert [v for k, v in raw if k == "tracestate"] == ["vendor=abc"]
    # x-request-id: made once by the first hop, the same at both hops and at the app
    ids = [v for k, v in raw if k == "x-request-id"]
    assert len(ids) == 1 and ids[0] and ids[0] == out.request_id == inn.request_id
    assert (out.path, inn.path, out.method) == ("/items", "/items", "GET")


def test_request_id_kept_and_unsampled_at_zero_percent(chain: Chain) -> None:
    chain.sample_percent(0.0)
    status, _, _ = _call(chain.egress, b"GET / HTTP/1.1\r\nHost: orders\r\nx-request-id: req-42\r\n\r\n")
    assert status == 200
    out = _one(chain.wait_entries(chain.consumer, 1))
    inn = _one(chain.wait_entries(chain.provider, 1))
    raw = chain.app.raw[-1]
    assert [v for k, v in raw if k == "x-request-id"] == ["req-42"]
    assert out.request_id == inn.request_id == "req-42"
    assert not out.sampled and not inn.sampled and out.trace_id == inn.trace_id != ""
    assert out.parent_span_id == "" and inn.parent_span_id == out.span_id
    # Unsampled: the inbound hop passes the traceparent through (W3C allows a proxy that) and has no span.
    assert [v for k, v in raw if k == "traceparent"] == [f"00-{out.trace_id}-{out.span_id}-00"]
    assert inn.span_id == ""


def test_b3_only_request_gets_b3_forwarded(chain: Chain) -> None:
    b3_trace, b3_span = "a3ce929d0e0e4736", "1122334455667788"
    status, _, _ = _call(
        chain.egress,
        b"GET / HTTP/1.1\r\nHost: orders\r\nX-B3-TraceId: " + b3_trace.encode() + b"\r\n"
        b"X-B3-SpanId: " + b3_span.encode() + b"\r\nX-B3-Sampled: 1\r\n\r\n",
    )
    assert status == 200
    out = _one(chain.wait_entries(chain.consumer, 1))
    inn = _one(chain.wait_entries(chain.provider, 1))
    raw = chain.app.raw[-1]
    names = [k for k, _ in raw]
    for name in ("x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "traceparent"):
        assert names.count(name) == 1, raw
    got = dict(raw)
    assert got["x-b3-traceid"] == b3_trace
    # The first hop rewrote B3 with its span; the second hop (which also got a traceparent) follows the
    # traceparent, so the B3 span is a sidecar's span either way (plexus.proxy.tracing: B3 is updated only
    # when it was read), never the client's.
    assert got["x-b3-spanid"] in (out.span_id, inn.span_id) and got["x-b3-spanid"] != b3_span
    assert parse_traceparent(got["traceparent"]) == (out.trace_id, inn.span_id, True)
    assert got["x-b3-sampled"] == "1"
    assert out.parent_span_id == b3_span and out.trace_id == b3_trace.rjust(32, "0") == inn.trace_id
    assert out.sampled and inn.sampled


def test_entries_carry_bytes_status_peers_and_series(chain: Chain) -> None:
    body = b"hello world"
    with socket.create_connection(chain.egress, timeout=5) as s:
        for _ in range(3):
            s.sendall(
                b"POST /echo HTTP/1.1\r\nHost: orders\r\nUser-Agent: tele-test/1\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            status, _, got, _ = read_response(s)
            assert (status, got) == (200, body)
        s.sendall(b"GET /chunked HTTP/1.1\r\nHost: orders\r\n\r\n")
        status, _, got, _ = read_response(s)
        assert (status, got) == (200, b"part1-part2-part3")
    outs = chain.wait_entries(chain.consumer, 4)
    inns = chain.wait_entries(chain.provider, 4)
    hops = ((outs, "outbound", PROVIDER_WORKLOAD), (inns, "inbound", CONSUMER_WORKLOAD))
    for entries, direction, peer in hops:
        posts = [e for e in entries if e.method == "POST"]
        assert len(posts) == 3
        for e in posts:
            assert (e.direction, e.service, e.protocol, e.path, e.status, e.flags, e.reason) == (
                direction, "orders", "http", "/echo", 200, "-", "",
            )
            assert (e.request_bytes, e.response_bytes, e.peer_workload) == (len(body), len(body), peer)
            assert e.user_agent == "tele-test/1" and e.authority == "orders" and e.attempts == 1
            assert e.duration_ms >= 0.0
        chunked = _one(entries, lambda e: e.path == "/chunked")
        assert (chunked.response_bytes, chunked.request_bytes, chunked.status) == (17, 0, 200)
    assert {e.upstream for e in outs} == {str(chain.ingress)}
    assert {e.upstream for e in inns} == {f"127.0.0.1:{chain.app.port}"}

    def series(plane: DataPlane, direction: str) -> dict[tuple[str, int, str, str], int]:
        stats = plane.stats.services[("orders", direction)]
        return {key: s.count for key, s in stats.series.items()}

    assert chain.lt.call(series, chain.consumer, "egress") == {(PROVIDER_WORKLOAD, 200, "", "-"): 4}
    assert chain.lt.call(series, chain.provider, "ingress") == {(CONSUMER_WORKLOAD, 200, "", "-"): 4}
    text = chain.lt.call(chain.consumer.metrics_text)
    assert 'plexus_requests_total{service="orders",direction="egress",code_class="2xx"} 4' in text


def test_failures_carry_flags(chain: Chain) -> None:
    lt = chain.lt
    # UH: a known service with no endpoint
    lt.call(chain.consumer.update_service, "empty", [])
    assert _call(chain.egress, b"GET / HTTP/1.1\r\nHost: empty\r\n\r\n")[0] == 503
    # UF: the provider's app is not listening
    lt.call(chain.provider.set_local_service, "gone", "http", HostPort("127.0.0.1", closed_port()))
    assert _call(chain.ingress, b"GET / HTTP/1.1\r\nHost: gone\r\n\r\n")[0] == 503
    # NR: unknown services all count under one "unknown" service, whatever Host the client chose
    for i in range(3):
        assert _call(chain.egress, b"GET / HTTP/1.1\r\nHost: nosuch-%d\r\n\r\n" % i)[0] == 503
    # DC: the client goes away (a reset: a half-close still gets its answer) while the app is answering
    with socket.create_connection(chain.egress, timeout=5) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"GET /slow/1500 HTTP/1.1\r\nHost: orders\r\n\r\n")
        deadline = time.monotonic() + WAIT_S
        while not any(r.target == "/slow/1500" for r in chain.app.received) and time.monotonic() < deadline:
            time.sleep(0.01)
    outs = chain.wait_entries(chain.consumer, 5)
    uh = _one(outs, lambda e: e.service == "empty")
    assert (uh.status, uh.flags, uh.reason, uh.peer_workload) == (503, "UH", "no_healthy_upstream", "unknown")
    assert uh.response_bytes > 0 and uh.request_id != ""
    unknown = [e for e in outs if e.service == "unknown"]
    assert len(unknown) == 3 and {(e.flags, e.status) for e in unknown} == {("NR", 503)}
    assert {e.authority for e in unknown} == {"nosuch-0", "nosuch-1", "nosuch-2"}
    services = lt.call(lambda: sorted(k for k in chain.consumer.stats.services))
    assert services == [("empty", "egress"), ("orders", "egress"), ("unknown", "egress")]
    dc = _one(outs, lambda e: e.path == "/slow/1500")
    assert (dc.flags, dc.status, dc.peer_workload) == ("DC", 0, PROVIDER_WORKLOAD)
    # (the provider hop saw its downstream half-close, so it still answers: not a DC there)
    inns = chain.wait_entries(chain.provider, 1)
    uf = _one(inns, lambda e: e.service == "gone")
    assert (uf.status, uf.flags, uf.reason) == (503, "UF", "local_app_unavailable")
    counts = lt.call(
        lambda: {k: s.count for k, s in chain.consumer.stats.services[("unknown", "egress")].series.items()}
    )
    assert counts == {("unknown", 503, "", "NR"): 3}


def test_malformed_requests_count_under_unknown(chain: Chain) -> None:
    for request in (b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"):
        with socket.create_connection(chain.egress, timeout=5) as s:
            s.sendall(request)
            assert read_response(s)[0] == 400
    outs = chain.wait_entries(chain.consumer, 2)
    assert {(e.service, e.status, e.flags) for e in outs} == {("unknown", 400, "DPE")}
    keys = chain.lt.call(lambda: sorted(chain.consumer.stats.services))
    assert keys == [("unknown", "egress")]

"""Telemetry's sinks: the recent ring, the access-log queue, sampled spans, taps; every queue bounded."""

from __future__ import annotations

import time

import pytest

from plexus.core import reasons
from plexus.proxy import DataPlaneStats
from plexus.proxy.telemetry import (
    ACCESS_LOG_BUFFER,
    INBOUND,
    OUTBOUND,
    RECENT_FAILURES,
    RECENT_REQUESTS,
    SPAN_BUFFER,
    TAP_BUFFER,
    RequestEntry,
    Telemetry,
    response_flag,
)
from plexus.proxy.tracing import Tracer


def _entry(service: str = "orders", status: int = 200, **kw: object) -> RequestEntry:
    return RequestEntry(OUTBOUND, service, "http", "GET", "/", 0.0, 1.0, status, **kw)  # type: ignore[arg-type]


def test_access_log_queue_only_while_on_and_bounded() -> None:
    telemetry = Telemetry("w")
    stats = DataPlaneStats(telemetry).service("orders", "egress")
    stats.done(_entry())
    assert telemetry.access_log is None  # off by default: nothing is kept for it
    telemetry.access_log = []
    for _ in range(ACCESS_LOG_BUFFER + 5):
        stats.done(_entry())
    assert len(telemetry.access_log) == ACCESS_LOG_BUFFER and telemetry.access_log_dropped == 5


def test_spans_only_sampled_and_only_while_exporting() -> None:
    telemetry = Telemetry("w")
    telemetry.observe(_entry(sampled=True))
    assert telemetry.spans == []  # no exporter: the decision travels on, nothing is held here
    telemetry.exporting_spans = True
    telemetry.observe(_entry(sampled=False))
    telemetry.observe(_entry(sampled=True, trace_id="a" * 32))
    assert [e.trace_id for e in telemetry.spans] == ["a" * 32]
    telemetry.spans = [telemetry.spans[0]] * SPAN_BUFFER
    telemetry.observe(_entry(sampled=True))
    assert len(telemetry.spans) == SPAN_BUFFER and telemetry.spans_dropped == 1


def test_taps_filter_by_service_and_count_drops() -> None:
    telemetry = Telemetry("w")
    telemetry.open_tap("t1", "orders")
    telemetry.open_tap("t2", "")
    telemetry.observe(_entry("orders"))
    telemetry.observe(_entry("cart"))
    assert [e.service for e in telemetry.taps["t1"].lines] == ["orders"]
    assert [e.service for e in telemetry.taps["t2"].lines] == ["orders", "cart"]
    for _ in range(TAP_BUFFER):
        telemetry.observe(_entry("cart"))
    assert telemetry.taps["t2"].dropped == 2 and telemetry.tap_dropped == 2
    telemetry.close_tap("t1")
    telemetry.close_tap("t2")
    assert not telemetry.tapping


def test_recent_ring_finds_a_request_and_forgets_old_ones() -> None:
    telemetry = Telemetry("w")
    telemetry.observe(_entry(request_id="r-1"))
    telemetry.observe(RequestEntry(INBOUND, "orders", "http", "GET", "/", 0.0, 1.0, 503, request_id="r-1"))
    telemetry.observe(_entry(request_id="ok-1"))
    assert [e.direction for e in telemetry.find("r-1")] == [OUTBOUND, INBOUND]
    for i in range(RECENT_REQUESTS):
        telemetry.observe(_entry(request_id=f"x-{i}"))
    # The successes are forgotten with the short ring; the failure stays in the failures' ring.
    assert telemetry.find("ok-1") == [] and len(telemetry.recent) == RECENT_REQUESTS
    assert [(e.direction, e.status) for e in telemetry.find("r-1")] == [(INBOUND, 503)]
    for i in range(RECENT_FAILURES):
        telemetry.observe(_entry(status=502, request_id=f"f-{i}"))
    assert telemetry.find("r-1") == [] and len(telemetry.recent_failures) == RECENT_FAILURES
    assert [e.status for e in telemetry.find(f"f-{RECENT_FAILURES - 1}")] == [502]  # in both rings: once


def test_wall_clock_from_the_loop_clock() -> None:
    telemetry = Telemetry("")
    assert telemetry.workload == "unknown" and telemetry.namespace == "default"
    telemetry.set_clock(100.0)
    assert abs(telemetry.wall(101.0) - (time.time() + 1.0)) < 5.0


def test_response_flags_and_failure() -> None:
    assert response_flag("") == "-"
    assert response_flag(reasons.NO_HEALTHY_UPSTREAM) == "UH"
    assert response_flag(reasons.RATE_LIMITED) == "RL"
    assert response_flag("something_new") == "something_new"
    assert not _entry(status=404).failed
    assert _entry(status=503).failed and _entry(status=0).failed
    assert _entry(status=200, grpc_status="2").failed and not _entry(status=200, grpc_status="0").failed
    assert _entry(status=429, reason=reasons.RATE_LIMITED).failed
    assert not _entry(status=200, reason=reasons.RETRY_BUDGET_EXHAUSTED).failed


def test_lazy_fields_are_decoded_once_from_the_wire_fields() -> None:
    """A transport may leave the fields that cost a decode to RequestEntry._lazy: the raw Host and User-Agent,
    and its trace context (a lines block as HTTP/1.1 forwards it, or a TraceStart)."""
    tracer = Tracer()
    incoming = b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01"
    lines = tracer.follow_lines(incoming, b"req-9")
    assert lines is not None
    entry = _entry()
    del entry._authority, entry._user_agent, entry._request_id  # as a transport that never set them
    del entry._trace_id, entry._span_id, entry._parent_span_id
    entry._lazy = (
        b"orders:8080",
        b"curl",
        lines,
        {b"traceparent": b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01"},
    )
    assert entry.status == 200 and entry.method == "GET" and entry._lazy is not None  # plain slots: no fill
    assert (entry.authority, entry.user_agent) == ("orders:8080", "curl") and entry._lazy is None
    assert (entry.request_id, entry.trace_id, entry.parent_span_id) == ("req-9", "ab" * 16, "cd" * 8)
    assert len(entry.span_id) == 16 and entry.span_id != "cd" * 8

    start = tracer.begin(None, None)
    other = _entry()
    other._lazy = (None, None, start, None)
    assert (other.authority, other.user_agent) == ("", "")
    assert (other.request_id, other.trace_id, other.span_id) == (
        start.request_id,
        start.trace_id,
        start.span_id,
    )
    refused = _entry()
    refused._lazy = (b"h", None, b"", None)  # refused before it started: no trace context
    assert (refused.request_id, refused.trace_id, refused.parent_span_id) == ("", "", "")
    bare = _entry()
    del bare._trace_id
    with pytest.raises(AttributeError):
        _ = bare.trace_id  # unset, and nothing to fill it from

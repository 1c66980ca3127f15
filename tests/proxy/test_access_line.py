"""Access-log lines: the HTTP/1.1 line formatted from raw bytes says exactly what the general one says for
the same request, and hands a request whose text needs escaping back to the general one."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from plexus.proxy.access_line import entry_line, format_batch
from plexus.proxy.outcomes import outcome_for
from plexus.proxy.stats import ServiceStats
from plexus.proxy.telemetry import INBOUND, OUTBOUND, RequestEntry, Telemetry
from plexus.proxy.tracing import Tracer, TraceStart, ids_from_lines


def _entry(**fields: Any) -> RequestEntry:
    base: dict[str, Any] = {
        "direction": INBOUND,
        "service": "orders",
        "protocol": "http",
        "method": "GET",
        "path": "/orders/42",
        "start": 100.25,
        "duration_ms": 1.23456,
        "status": 200,
        "request_bytes": 7,
        "response_bytes": 120,
        "peer_workload": "web",
        "upstream": "127.0.0.1:8080",
        "attempts": 1,
    }
    base.update(fields)
    positional = [base.pop(k) for k in ("direction", "service", "protocol", "method", "path", "start")]
    positional += [base.pop("duration_ms"), base.pop("status")]
    return RequestEntry(*positional, **base)


def _line(
    telemetry: Telemetry,
    entry: RequestEntry,
    method: bytes,
    path: bytes,
    host: bytes | None,
    agent: bytes | None,
    lines: bytes,
    request_id: str | None,
    trace_id: str | None,
) -> bytes:
    """The line format_batch writes for ``entry`` as an HTTP/1.1 request queued from its raw bytes (its
    Outcome's tuple, with the trace lines, or a TraceStart holding the given ids): one line, one
    newline at its end."""
    stats = ServiceStats(entry.service, "ingress" if entry.direction == INBOUND else "egress", telemetry)
    peer = entry.peer_workload.encode() if entry.direction == INBOUND else entry.peer_workload
    key = (method, path, host, agent, entry.status, entry.reason, entry.flags, entry.upstream, peer, 1)
    ids: TraceStart | bytes = lines
    if request_id is not None or trace_id is not None:
        ids = TraceStart(trace_id or "", "", "", False, request_id or "", [])
    item = (
        outcome_for(stats, key),
        entry.start,
        entry.duration_ms,
        entry.request_bytes,
        entry.response_bytes,
    )
    raw = format_batch(telemetry, [(*item, (host, agent, ids, None), False)])
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    return raw[:-1]


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry("orders-v1", loop_clock_offset=1_764_000_000.0)


def test_the_raw_line_equals_the_general_one(telemetry: Telemetry) -> None:
    lines = Tracer(sample_percent=0).fresh_lines()
    request_id, trace_id, _, _ = ids_from_lines(lines)
    raw = _line(telemetry, _entry(), b"GET", b"/orders/42", b"orders", b"wrk/4.2", lines, None, None)
    general = entry_line(
        _entry(authority="orders", user_agent="wrk/4.2", request_id=request_id, trace_id=trace_id), telemetry
    )
    record = orjson.loads(raw)
    assert record == orjson.loads(general)
    assert list(record) == list(orjson.loads(general))  # the same keys in the same order
    assert record["request_id"] == request_id and record["trace_id"] == trace_id
    assert record["start_time"] == "2025-11-24T16:01:40.250Z"
    assert record["upstream_cluster"] == "inbound|||orders" and record["workload"] == "orders-v1"
    assert record["duration_ms"] == 1.235 and record["duration"] == 1


def test_missing_values_are_null_and_a_local_reply_names_its_reason(telemetry: Telemetry) -> None:
    entry = _entry(direction=OUTBOUND, status=503, reason="no_healthy_upstream", flags="UH", upstream="")
    raw = _line(telemetry, entry, b"POST", b"/pay", None, None, b"", None, None)
    record = orjson.loads(raw)
    assert record["authority"] is None and record["user_agent"] is None and record["upstream_host"] is None
    assert record["request_id"] is None and record["trace_id"] is None
    assert (record["response_flags"], record["response_code_details"]) == ("UH", "no_healthy_upstream")
    assert record == orjson.loads(entry_line(_entry(**_same(entry)), telemetry))


def _same(entry: RequestEntry) -> dict[str, Any]:
    return {
        "direction": entry.direction,
        "method": "POST",
        "path": "/pay",
        "status": entry.status,
        "reason": entry.reason,
        "flags": entry.flags,
        "upstream": "",
    }


def test_ids_of_a_trace_begun_on_the_general_path(telemetry: Telemetry) -> None:
    raw = _line(telemetry, _entry(), b"GET", b"/", b"h", None, b"", 'my "request"', "ab" * 16)
    record = orjson.loads(raw)
    assert (record["request_id"], record["trace_id"]) == ('my "request"', "ab" * 16)


@pytest.mark.parametrize(
    ("host", "agent", "path"),
    [
        (b'a"b', b"ua", b"/"),
        (b"h", b"back\\slash", b"/"),
        (b"h", b"ua", b"/caf\xe9"),
        (b"h", b"tab\there", b"/"),
    ],
)
def test_text_that_needs_escaping_is_escaped(
    telemetry: Telemetry, host: bytes, agent: bytes, path: bytes
) -> None:
    raw = _line(telemetry, _entry(), b"GET", path, host, agent, b"", None, None)
    text = (host.decode("latin-1"), agent.decode("latin-1"), path.decode("latin-1"))
    general = entry_line(_entry(path=text[2], authority=text[0], user_agent=text[1]), telemetry)
    record = orjson.loads(raw)  # one valid JSON object (UTF-8), with the text as it came (Latin-1)
    assert (record["authority"], record["user_agent"], record["path"]) == text
    assert record == orjson.loads(general)


def test_a_request_id_with_a_quote_takes_the_general_trace_path() -> None:
    """tracing.follow_lines keeps only ids that need no escaping (the lines path writes them as they are)."""
    tracer = Tracer()
    traceparent = b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01"
    assert tracer.follow_lines(traceparent, b'id"1') is None
    assert tracer.follow_lines(traceparent, b"id\\1") is None
    assert tracer.follow_lines(traceparent, b"id-1") is not None

"""Access-log lines: the HTTP/1.1 line formatted from raw bytes says exactly what the general one says for
the same request, and hands a request whose text needs escaping back to the general one."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plexus.proxy.access_line import (
    _DURATIONS_KEPT,
    _REQUEST_ID_AT,
    _TRACE_ID,
    _TRACE_ID_AT,
    _TRACE_ID_JSON,
    _duration_pieces,
    _second_bytes,
    duration_piece,
    entry_line,
    format_batch,
)
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
    assert record["duration"] == 1  # 1.23456 ms: Envoy's whole milliseconds
    assert list(record) == LINE_FIELDS


# A line's fields in their order. Not the hop's direction and service (upstream_cluster says both) nor a
# duration finer than the loop's clock: a line costs the sidecar in proportion to its bytes.
LINE_FIELDS = [
    "start_time",
    "method",
    "path",
    "protocol",
    "authority",
    "user_agent",
    "response_code",
    "response_flags",
    "response_code_details",
    "attempts",
    "upstream_host",
    "upstream_cluster",
    "workload",
    "peer_workload",
    "bytes_received",
    "bytes_sent",
    "duration",
    "request_id",
    "trace_id",
    "grpc_status",
]


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


# format_batch against the line-by-line formatter it replaced: byte-identical output.


def _reference_batch(telemetry: Telemetry, batch: list[Any]) -> bytes:
    """format_batch as it was before it was vectorized (one Python turn per line), the reference."""
    out: list[bytes] = []
    add = out.extend
    offset = telemetry.loop_clock_offset
    durations = _duration_pieces
    last_started, last_millis, start = -1.0, -1, b""
    for item in batch:
        if item.__class__ is not tuple:
            out.append(entry_line(item, telemetry).encode() + b"\n")
            continue
        outcome, started, duration_ms, request_bytes, response_bytes, wire, _ = item
        if started != last_started:
            last_started = started
            millis = int((started + offset) * 1000)
            if millis != last_millis:
                last_millis = millis
                seconds, ms = divmod(millis, 1000)
                start = b'{"start_time":"%b.%03dZ",' % (_second_bytes(seconds), ms)
        if request_bytes == outcome.sized_request and response_bytes == outcome.sized_response:
            sized = outcome.sized_parts
        else:
            sized = outcome.parts_sized(request_bytes, response_bytes)
        us = int(duration_ms * 1000.0 + 0.5)
        duration = durations[us] if 0 <= us < _DURATIONS_KEPT else None
        if duration is None:
            duration = duration_piece(duration_ms)
        ids = wire[2]
        if ids.__class__ is bytes and ids:
            add((start, sized, duration, ids[_REQUEST_ID_AT], _TRACE_ID, ids[_TRACE_ID_AT], outcome.tail))
            continue
        trace = ids if isinstance(ids, TraceStart) else None
        add(
            (
                start,
                sized,
                duration[:-1],
                orjson.dumps(trace.request_id or None if trace is not None else None),
                _TRACE_ID_JSON,
                orjson.dumps(trace.trace_id or None if trace is not None else None),
                outcome.tail_json,
            )
        )
    return b"".join(out)


_OFFSETS = (1_764_000_000.0, 1_764_000_000.9995, 0.0)
_TELEMETRIES = [Telemetry("orders-v1", loop_clock_offset=offset) for offset in _OFFSETS]
_TRACER = Tracer(sample_percent=50)
_TRACEPARENT = b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01"


def _outcomes(telemetry: Telemetry) -> list[Any]:
    """A few ways of ending: HTTP/1.1 ones (outbound and inbound, a path that needs escaping, a local reply)
    and gRPC ones (their lines end with a gRPC status, not null)."""
    out = ServiceStats("orders", "egress", telemetry)
    into = ServiceStats("orders", "ingress", telemetry)
    keys = [
        (out, (b"GET", b"/orders/42", b"orders", b"wrk/4.2", 200, "", "-", "127.0.0.1:1", "provider", 1)),
        (out, (b"POST", b'/pay"me', None, None, 503, "no_healthy_upstream", "UH", "", None, 1)),
        (into, (b"GET", b"/caf\xe9", b"h", b"ua", 200, "", "-", "127.0.0.1:2", b"web", 2)),
        (
            out,
            (
                b"POST",
                b"/pkg.S/M",
                b"orders",
                b"grpc-go",
                200,
                "",
                "-",
                "127.0.0.1:1",
                "p",
                1,
                "0",
                "grpc",
                200,
            ),
        ),
        (
            out,
            (b"POST", b"/pkg.S/N", b"orders", None, 200, "", "-", "127.0.0.1:1", "p", 1, "14", "grpc", 503),
        ),
    ]
    return [outcome_for(stats, key) for stats, key in keys]


_OUTCOMES = {id(t): _outcomes(t) for t in _TELEMETRIES}

_ids = st.one_of(
    st.builds(lambda _: _TRACER.fresh_lines(), st.none()),
    st.builds(
        lambda rid: _TRACER.follow_lines(_TRACEPARENT, rid.encode()) or b"",
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    ),
    st.builds(
        lambda rid, trace: TraceStart(trace, "", "", False, rid, []),
        st.sampled_from(["", "plain", 'q"uote', "back\\slash", "caf\u00e9", "tab\t"]),
        st.sampled_from(["", "ab" * 16]),
    ),
    st.just(b""),
    st.none(),
)
_started = st.one_of(
    st.integers(77_109_000, 77_112_100).map(lambda ms: ms / 1000.0),  # uvloop's clock: whole milliseconds
    st.floats(77_109.0, 77_112.0, allow_nan=False),
)
_duration = st.one_of(
    st.integers(-2, 12).map(float),
    st.floats(-3.0, 12.0, allow_nan=False),
    st.sampled_from([4.9994999, 4.9995, 4.9995001, 5.0, -0.0005, -0.0004999]),
)


@st.composite
def _batches(draw: st.DrawFn) -> tuple[Telemetry, list[Any]]:
    telemetry = draw(st.sampled_from(_TELEMETRIES))
    outcomes = _OUTCOMES[id(telemetry)]
    # Runs share values, as a batch's lines usually do: each field is drawn from a small pool.
    starts = draw(st.lists(_started, min_size=1, max_size=4))
    durations = draw(st.lists(_duration, min_size=1, max_size=4))
    sizes = draw(st.lists(st.integers(0, 70_000), min_size=1, max_size=3))
    ids_shape = draw(st.sampled_from(["fresh", "mixed"]))
    batch: list[Any] = []
    for _ in range(draw(st.integers(1, 40))):
        if draw(st.integers(0, 9)) == 0:
            batch.append(
                _entry(start=draw(st.sampled_from(starts)), duration_ms=draw(st.sampled_from(durations)))
            )
            continue
        ids = _TRACER.fresh_lines() if ids_shape == "fresh" else draw(_ids)
        outcome = draw(st.sampled_from(outcomes))
        wire = (b"h", b"ua", ids, None)
        batch.append(
            (
                outcome,
                draw(st.sampled_from(starts)),
                draw(st.sampled_from(durations)),
                draw(st.sampled_from(sizes)),
                draw(st.sampled_from(sizes)),
                wire,
                False,
            )
        )
    return telemetry, batch


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_batches())
def test_format_batch_is_the_line_by_line_formatter(case: tuple[Telemetry, list[Any]]) -> None:
    telemetry, batch = case
    assert format_batch(telemetry, batch) == _reference_batch(telemetry, batch)


@pytest.mark.parametrize("count", [1, 255, 256, 257, 700, 1000])
@pytest.mark.parametrize("ids_kind", ["fresh", "followed", "one_odd"])
def test_large_batches_are_the_line_by_line_formatter(count: int, ids_kind: str) -> None:
    """Batches past the ids unpacker's chunk, with blocks of one shape (fresh ones; followed ones with other
    request id lengths), and with one request whose ids came as a TraceStart."""
    rnd = random.Random(count)
    telemetry = _TELEMETRIES[0]
    outcomes = _OUTCOMES[id(telemetry)][:3]
    batch: list[Any] = []
    for i in range(count):
        ms = 77_109_148 + i // 10 + rnd.randrange(-3, 1)
        if ids_kind == "followed":
            ids = _TRACER.follow_lines(_TRACEPARENT, b"req-%d" % (i % 7)) or b""
        else:
            ids = _TRACER.fresh_lines()
        if ids_kind == "one_odd" and i == count // 2:
            ids = TraceStart("ab" * 16, "", "", False, 'id "x"', [])  # type: ignore[assignment]
        batch.append(
            (
                rnd.choice(outcomes),
                ms / 1000.0,
                rnd.choice((0.0, 1.0000000038, 2.9999999969)),
                0,
                13,
                (None, None, ids, None),
                False,
            )
        )
    got = format_batch(telemetry, batch)
    assert got == _reference_batch(telemetry, batch)
    assert got.count(b"\n") == count


def test_an_empty_batch_and_a_start_in_the_second_before_the_epoch() -> None:
    telemetry = _TELEMETRIES[2]  # offset 0: a loop-clock value is Unix time
    assert format_batch(telemetry, []) == b""
    outcome = _OUTCOMES[id(telemetry)][0]
    batch: list[Any] = [
        (outcome, started, 1.0, 0, 13, (None, None, _TRACER.fresh_lines(), None), False)
        for started in (-0.5, -0.25, -1.5, 0.0)
    ]
    got = format_batch(telemetry, batch)
    assert got == _reference_batch(telemetry, batch)
    assert got.startswith(b'{"start_time":"1969-12-31T23:59:59.500Z",')

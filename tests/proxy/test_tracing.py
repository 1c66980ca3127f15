"""Trace context: W3C traceparent, B3, sampling decided once and followed, x-request-id."""

from __future__ import annotations

import random

import pytest

from plexus.proxy.tracing import (
    B3_SAMPLED,
    B3_SPAN_ID,
    B3_TRACE_ID,
    MAX_REQUEST_ID,
    REQUEST_ID,
    TRACEPARENT,
    Tracer,
    parse_traceparent,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_first_hop_starts_a_trace_and_names_itself_parent_of_the_next() -> None:
    start = Tracer(100.0, random.Random(1)).begin(None, None)
    headers = dict(start.headers)
    assert start.sampled and start.parent_span_id == ""
    assert headers[TRACEPARENT] == f"00-{start.trace_id}-{start.span_id}-01"
    assert parse_traceparent(headers[TRACEPARENT]) == (start.trace_id, start.span_id, True)
    assert headers[REQUEST_ID] == start.request_id and len(start.request_id) == 36


def test_incoming_sampling_decision_is_followed_whatever_this_hops_rate() -> None:
    never = Tracer(0.0)
    start = never.begin(f"00-{TRACE}-{PARENT}-01", "req-1")
    assert start.sampled and start.trace_id == TRACE and start.parent_span_id == PARENT
    assert start.request_id == "req-1" and REQUEST_ID not in dict(start.headers)  # kept, not rewritten
    assert dict(start.headers)[TRACEPARENT] == f"00-{TRACE}-{start.span_id}-01"
    always = Tracer(100.0)
    assert not always.begin(f"00-{TRACE}-{PARENT}-00", None).sampled


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        f"00-{'0' * 32}-{PARENT}-01",  # zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # zero span id
        f"ff-{TRACE}-{PARENT}-01",  # forbidden version
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four parts
        f"00-{TRACE[:-1]}-{PARENT}-01",
    ],
)
def test_invalid_traceparent_starts_a_new_trace(bad: str) -> None:
    start = Tracer(0.0).begin(bad, None)
    assert start.trace_id != TRACE and start.parent_span_id == "" and not start.sampled


def test_b3_is_read_without_traceparent_and_updated() -> None:
    start = Tracer(0.0).begin(None, "r", b3_trace_id=TRACE[:16], b3_span_id=PARENT, b3_sampled="1")
    headers = dict(start.headers)
    assert start.trace_id == TRACE[:16].rjust(32, "0") and start.parent_span_id == PARENT and start.sampled
    assert headers[B3_TRACE_ID] == TRACE[:16] and headers[B3_SPAN_ID] == start.span_id
    assert headers[B3_SAMPLED] == "1"


def test_request_id_too_long_or_unprintable_is_replaced() -> None:
    tracer = Tracer()
    assert tracer.begin(None, "x" * (MAX_REQUEST_ID + 1)).request_id != "x" * (MAX_REQUEST_ID + 1)
    assert tracer.begin(None, "a\nb").request_id != "a\nb"


def test_sample_percent_is_checked_and_roughly_followed() -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        Tracer(101.0)
    tracer = Tracer(10.0, random.Random(7))
    sampled = sum(tracer.begin(None, "r").sampled for _ in range(2000))
    assert 100 < sampled < 300

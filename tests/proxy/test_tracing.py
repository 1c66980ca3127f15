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
    ids_from_lines,
    parse_traceparent,
    sampled_in_lines,
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


def _lines(block: bytes) -> dict[str, str]:
    assert block.endswith(b"\r\n")
    return dict(line.split(": ", 1) for line in block.decode().split("\r\n")[:-1])


def test_fresh_lines_are_begin_without_headers_as_ready_bytes() -> None:
    """HTTP/1's first hop: the forwarded lines as one block, ids read back from it, sampling at the rate."""
    always, never = Tracer(100.0, random.Random(5)), Tracer(0.0, random.Random(5))
    block = always.fresh_lines()
    lines = _lines(block)
    assert list(lines) == [REQUEST_ID, TRACEPARENT]
    request_id, trace_id, span_id, sampled = ids_from_lines(block)
    assert lines[REQUEST_ID] == request_id and len(request_id) == 36 and request_id[14] == "4"
    assert request_id[19] in "89ab" and [len(p) for p in request_id.split("-")] == [8, 4, 4, 4, 12]
    assert parse_traceparent(lines[TRACEPARENT]) == (trace_id, span_id, True) and sampled
    assert sampled_in_lines(block) and not sampled_in_lines(never.fresh_lines()) and not sampled_in_lines(b"")
    assert ids_from_lines(always.fresh_lines())[:3] != (request_id, trace_id, span_id)  # new ids each time


def test_follow_lines_keep_the_trace_and_request_id_and_name_this_hop_the_parent() -> None:
    tracer = Tracer(0.0, random.Random(6))  # the incoming sampled flag wins over this hop's rate
    block = tracer.follow_lines(f"00-{TRACE}-{PARENT}-01".encode(), b"req-7")
    assert block is not None
    request_id, trace_id, span_id, sampled = ids_from_lines(block)
    assert (request_id, trace_id, sampled) == ("req-7", TRACE, True) and span_id != PARENT
    assert _lines(block) == {REQUEST_ID: "req-7", TRACEPARENT: f"00-{TRACE}-{span_id}-01"}
    # Unsampled: passed through unchanged (no span of this hop is recorded, so none is named).
    unsampled = tracer.follow_lines(f"00-{TRACE}-{PARENT}-00".encode(), b"r")
    assert unsampled is not None and not sampled_in_lines(unsampled)
    assert _lines(unsampled) == {REQUEST_ID: "r", TRACEPARENT: f"00-{TRACE}-{PARENT}-00"}
    # What begin must judge (it also decides what to forward then): None, never a guess.
    for traceparent, raw_id in (
        (f"00-{TRACE.upper()}-{PARENT}-01", b"r"),  # upper case: begin lower-cases it
        (f"01-{TRACE}-{PARENT}-01", b"r"),  # a later version
        (f"00-{'0' * 32}-{PARENT}-01", b"r"),
        (f"00-{TRACE}-{'0' * 16}-01", b"r"),
        (f"00-{TRACE}-{PARENT}-01", b""),
        (f"00-{TRACE}-{PARENT}-01", b"a\nb"),
        (f"00-{TRACE}-{PARENT}-01", b"x" * (MAX_REQUEST_ID + 1)),
        (f"00-{TRACE}-{PARENT}-00", b'a"b'),  # (would need escaping in an access line)
        (f"00-{TRACE}-{PARENT}-00", b"a\\b"),
        (f"00-{TRACE}-{PARENT}-00", "é".encode()),
        (f"00-{TRACE}-{PARENT}-0", b"r"),  # too short
        (f"00-{TRACE}-{PARENT}-001", b"r"),  # too long
        (f"00-{TRACE[:-1]}-{PARENT}0-00", b"r"),  # a dash out of place
        (f"00-{TRACE}-{PARENT}-0g", b"r"),
    ):
        assert tracer.follow_lines(traceparent.encode(), raw_id) is None, (traceparent, raw_id)


def test_b3_that_came_with_traceparent_names_this_hop_for_the_next() -> None:
    """A second hop gets both (the first hop added traceparent): B3 must not keep the first hop's span."""
    incoming = f"00-{TRACE}-{PARENT}-01"
    start = Tracer(0.0).begin(incoming, "r", b3_trace_id=TRACE, b3_span_id="1" * 16, b3_sampled="1")
    headers = dict(start.headers)
    assert start.trace_id == TRACE and start.parent_span_id == PARENT and start.sampled
    assert headers[B3_TRACE_ID] == TRACE and headers[B3_SPAN_ID] == start.span_id != "1" * 16
    assert headers[B3_SAMPLED] == "1"


def test_fresh_start_is_begin_without_trace_fields_from_one_draw() -> None:
    start, request_id, traceparent = Tracer(100.0).fresh_start()
    assert parse_traceparent(traceparent.decode()) == (start.trace_id, start.span_id, True)
    assert request_id.decode() == start.request_id and len(start.request_id) == 36
    assert start.parent_span_id == "" and dict(start.headers)[REQUEST_ID] == start.request_id
    unsampled, _, line = Tracer(0.0).fresh_start()
    assert not unsampled.sampled and line.endswith(b"-00")


def test_fresh_lines_sample_at_the_current_rate() -> None:
    """The first hop's blocks are made ahead, each a valid traceparent; a new rate applies to the next
    block at once."""
    tracer = Tracer(10.0, random.Random(8))
    blocks = [tracer.fresh_lines() for _ in range(3000)]
    sampled = [b for b in blocks if sampled_in_lines(b)]
    assert 200 < len(sampled) < 400
    for block in blocks:
        _, trace_id, span_id, is_sampled = ids_from_lines(block)
        assert parse_traceparent(_lines(block)[TRACEPARENT]) == (trace_id, span_id, is_sampled)
    request_ids = [ids_from_lines(b)[0] for b in blocks]
    assert len(set(request_ids)) == 3000 and request_ids == sorted(request_ids)  # a counter, in order
    assert len({ids_from_lines(b)[1] for b in blocks}) == 3000
    tracer.sample_rate = 1.0
    assert sampled_in_lines(tracer.fresh_lines())
    tracer.sample_rate = 0.0
    assert not any(sampled_in_lines(tracer.fresh_lines()) for _ in range(300))

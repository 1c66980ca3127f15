"""Trace context: W3C traceparent, B3, sampling decided once and followed, x-request-id."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


_HEX = "0123456789abcdef"
_hex = st.text(_HEX, min_size=0, max_size=34)
_printable = st.binary(min_size=1, max_size=MAX_REQUEST_ID + 20).map(
    lambda v: bytes(33 + b % 94 for b in v)  # [!-~]: what the decoder takes as a block's value
)
_traceparents = st.one_of(
    st.builds(
        lambda version, trace, span, flags: f"{version}-{trace}-{span}-{flags}".encode(),
        st.sampled_from(["00", "01", "ff", "0", "000", "0A", "zz"]),
        st.sampled_from([TRACE, TRACE.upper(), "0" * 32, TRACE[:-1], TRACE + "0", "g" * 32]) | _hex,
        st.sampled_from([PARENT, PARENT.upper(), "0" * 16, PARENT[:-1]]) | _hex,
        st.sampled_from(["00", "01", "03", "ff", "0F", "0", "001", "0g"]) | _hex,
    ),
    _printable,
    st.builds(  # (valid, but for a zero id now and then: followed)
        lambda trace, span, flags: f"00-{trace}-{span}-{flags}".encode(),
        st.text("0a", min_size=32, max_size=32),
        st.text("0f", min_size=16, max_size=16),
        st.sampled_from(["00", "01", "02", "03"]),
    ),
)
_request_ids = st.one_of(
    st.sampled_from([b"r", b"req-7", b'a"b', b"a\\b", b"x" * MAX_REQUEST_ID, b"x" * (MAX_REQUEST_ID + 1)]),
    _printable,
)


@settings(max_examples=500, deadline=None)
@given(_traceparents, _request_ids, st.integers(0, 2**32))
def test_follow_block_is_follow_lines_for_the_blocks_values(
    parent: bytes, request_id: bytes, seed: int
) -> None:
    block = b"x-request-id: " + request_id + b"\r\ntraceparent: " + parent + b"\r\n"
    expected = Tracer(0.0, random.Random(seed)).follow_lines(parent, request_id)
    got = Tracer(0.0, random.Random(seed)).follow_block(block)  # (the same span id when sampled)
    assert got == expected
    if expected is not None and not sampled_in_lines(expected):
        assert got is block  # unsampled: the lines that came, not a copy


def test_follow_block_for_the_usual_blocks() -> None:
    tracer = Tracer(0.0, random.Random(3))
    sampled = f"x-request-id: r\r\ntraceparent: 00-{TRACE}-{PARENT}-01\r\n".encode()
    followed = tracer.follow_block(sampled)
    assert followed is not None and ids_from_lines(followed)[:2] == ("r", TRACE)
    assert ids_from_lines(followed)[2] != PARENT and sampled_in_lines(followed)
    for block in (Tracer(0.0).fresh_lines(), Tracer(100.0).fresh_lines()):
        assert Tracer(0.0, random.Random(1)).follow_block(block) == Tracer(
            0.0, random.Random(1)
        ).follow_lines(block[-57:-2], block[14:-72])


def test_fresh_lines_batches_from_the_os_or_a_seeded_generator() -> None:
    """Blocks come 256 to a batch: each batch's blocks are valid, and go on from the last one's counter; a
    seeded tracer repeats its blocks, one without a generator draws from the OS."""
    for tracer in (Tracer(50.0), Tracer(50.0, random.Random(9))):
        blocks = [tracer.fresh_lines() for _ in range(700)]
        ids = [ids_from_lines(b) for b in blocks]
        counters = [int(i[0][-12:], 16) for i in ids]
        assert counters == list(range(counters[0], counters[0] + 700))
        assert len({i[1] for i in ids}) == 700 and len({i[2] for i in ids}) == 700
        assert 250 < sum(i[3] for i in ids) < 450
        for block, (request_id, trace_id, span_id, sampled) in zip(blocks, ids, strict=True):
            flags = "01" if sampled else "00"
            assert (
                block
                == f"x-request-id: {request_id}\r\ntraceparent: 00-{trace_id}-{span_id}-{flags}\r\n".encode()
            )
            assert parse_traceparent(block[-57:-2].decode()) == (trace_id, span_id, sampled)
    first = [Tracer(1.0, random.Random(4)).fresh_lines() for _ in range(3)]
    again = [Tracer(1.0, random.Random(4)).fresh_lines() for _ in range(3)]
    assert first == again and first != [Tracer(1.0).fresh_lines() for _ in range(3)]


def _same_classes(block: bytes, draw: random.Random) -> bytes:
    """Another block whose bytes have the same classes in plexus.codec.http1's decoder (the classes its
    block_check verdict is kept for): each byte swapped for a random one of its class."""
    from plexus.codec.http1.request_decoder import _BLOCK_CLASSES

    members: dict[int, list[int]] = {}
    for byte in range(256):
        members.setdefault(_BLOCK_CLASSES[byte], []).append(byte)
    return bytes(draw.choice(members[_BLOCK_CLASSES[b]]) for b in block)


@settings(max_examples=400, deadline=None)
@given(_traceparents, _request_ids, st.integers(0, 2**32))
def test_approves_block_depends_only_on_the_decoders_byte_classes(
    parent: bytes, request_id: bytes, seed: int
) -> None:
    """A decoder asks Tracer.approves_block once per shape of block and trusts the answer for every block
    of the same byte classes; follow_approved then gives follow_block's answer."""
    block = b"x-request-id: " + request_id + b"\r\ntraceparent: " + parent + b"\r\n"
    draw = random.Random(seed)
    for _ in range(5):
        other = (
            b"x-request-id: "
            + _same_classes(request_id, draw)
            + b"\r\ntraceparent: "
            + _same_classes(parent, draw)
            + b"\r\n"
        )
        assert Tracer.approves_block(other) == Tracer.approves_block(block)
        if Tracer.approves_block(other):
            got = Tracer(0.0, random.Random(seed)).follow_approved(other)
            assert got == Tracer(0.0, random.Random(seed)).follow_block(other)
    if not Tracer.approves_block(block):
        assert Tracer(0.0).follow_block(block) is None

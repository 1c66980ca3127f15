"""The request decoder's fast path (whole heads, no per-header callback) against its general path.

Every input of the catalogue (attacks and valid requests, alone and pipelined, whole and split) must give
the same events, heads (every field, headers as pairs) and encoded heads on both paths; the usual heads must
stay on the fast path, and everything else must be handed to the general path before the sink hears of it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from codec.catalogue import CASES, LENIENT, VALID
from plexus.codec.http1 import Http1Limits, RequestDecoder, RequestHead, encode_request_head
from plexus.codec.http1.request_decoder import _HEADS_KEPT, _heads_by_limits
from plexus.core.errors import ProtocolError

TRACE = b"x-request-id: 0123abcd-0000-4000-8000-000000000001\r\n"
PARENT = b"traceparent: 00-0123456789abcdef0123456789abcdef-0123456789abcdef-00\r\n"
# What the proxy itself sends a provider sidecar: the client's lines, the trace lines, its own lines.
INBOUND = (
    b"GET /orders?id=7 HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\n"
    + TRACE
    + PARENT
    + b"x-plexus-service: bench\r\nx-plexus-caller: Consumer-A\r\n\r\n"
)
USUAL = [
    b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\n\r\n",
    INBOUND,
    b"POST /p HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nhost: svc\r\nconnection: Close\r\n\r\n",
    b"GET / HTTP/1.0\r\nUser-Agent: old\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nHOST: svc\r\nX-B3-TraceId: 80f198ee56343ba864fe8b2a57d3eff7\r\n"
    b"Accept: */*\r\n\r\n",
]
MORE = [
    b"GET  /two-spaces HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc \t\r\nUser-Agent:\t ua  \r\nX-Empty:\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc\r\nGET / HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframes",
    b"GET / HTTP/1.1\r\nHost: svc\r\nTE: trailers\r\nKeep-Alive: 5\r\n\r\n",
]
INPUTS = USUAL + MORE + VALID + LENIENT + [c.data for c in CASES]


def _normal(encoded: bytes) -> bytes:
    """An encoded head with one space after each colon: the fast path forwards a line's whitespace as it
    came (``Name:\\tvalue``), the general path writes ``Name: value`` (the same header to any reader)."""
    line, _, rest = encoded.partition(b"\r\n")
    pairs = [(n, v.lstrip(b" \t")) for n, _, v in (x.partition(b":") for x in rest.split(b"\r\n") if x)]
    return line + b"".join(b"\r\n%b: %b" % pair for pair in pairs)


class Recorder:
    """Every event of a decoder, heads as their fields and encoded form (the way the proxy forwards them)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.heads: list[RequestHead] = []

    def on_request_head(self, head: RequestHead) -> None:
        self.heads.append(head)
        self.events.append(("head", _normal(encode_request_head(head, b"x-extra: 1\r\n")), head.fields()))

    def on_request_body(self, data: bytes) -> None:
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)  # (how a body is cut may differ)
        else:
            self.events.append(("body", data))

    def on_request_end(self) -> None:
        self.events.append(("end",))

    def on_upgrade(self, tail: bytes) -> None:
        self.events.append(("upgrade", tail))

    def on_request_error(self, error: ProtocolError) -> None:
        self.events.append(("error", error.status_hint, error.reason))


def decode(pieces: list[bytes], fast: bool, limits: Http1Limits | None = None) -> tuple[list[Any], bool]:
    recorder = Recorder()
    decoder = RequestDecoder(recorder, limits, fast_path=fast)
    for piece in pieces:
        decoder.feed(piece)
    return recorder.events, decoder._fast


def test_every_input_decodes_alike_on_both_paths() -> None:
    for data in INPUTS:
        assert decode([data], True)[0] == decode([data], False)[0], data
        pipelined = [data, data + USUAL[0]]
        assert decode(pipelined, True)[0] == decode(pipelined, False)[0], data


def test_the_usual_heads_stay_on_the_fast_path_and_forward_their_lines_unchanged() -> None:
    for data in USUAL:
        events, fast = decode([data, USUAL[0]], True)
        kinds = [e[0] for e in events if e[0] != "body"]
        closes = b"HTTP/1.0" in data or b"Close" in data  # (then llhttp refuses what follows, on both paths)
        assert kinds == (["head", "end", "error"] if closes else ["head", "end", "head", "end"]), data
        assert fast, data
    recorder = Recorder()
    recorder.on_request_head = recorder.heads.append  # type: ignore[method-assign,assignment]  # (no fields())
    RequestDecoder(recorder).feed(INBOUND)
    head = recorder.heads[0]
    # The trace lines and x-plexus-service are held apart; the caller is kept, in its case.
    assert head._headers is None and encode_request_head(head, b"x-extra: 1\r\n") == (
        b"GET /orders?id=7 HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nx-plexus-caller: Consumer-A\r\n"
        b"x-extra: 1\r\n\r\n"
    )
    assert head.fields()[10:14] == (
        b"bench",
        b"wrk",
        b"Consumer-A",
        {b"x-request-id": TRACE[14:-2], b"traceparent": PARENT[13:-2]},
    )


def test_a_head_for_the_general_path_leaves_the_fast_path_before_the_sink_hears_of_it() -> None:
    chunked = b"POST /p HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    data = USUAL[0] + chunked + USUAL[0]
    events, fast = decode([data], True)
    assert not fast
    assert [e[0] for e in events] == ["head", "end", "head", "body", "end", "head", "end"]
    assert events == decode([data], False)[0]


def test_heads_are_remembered_per_limits_and_never_shared_between_requests() -> None:
    data = b"GET /limits HTTP/1.1\r\nHost: svc\r\nX-1: a\r\nX-2: b\r\n\r\n"
    assert decode([data], True)[0][-1] == ("end",)
    # The same bytes under tighter limits are refused, as the general path refuses them.
    tight = Http1Limits(max_headers=2)
    assert decode([data], True, tight)[0] == decode([data], False, tight)[0]
    assert decode([data], True, tight)[0][-1][:2] == ("error", 431)
    recorder = Recorder()
    decoder = RequestDecoder(recorder)
    decoder.feed(data + data)
    first, second = recorder.heads
    assert first is not second and first == second
    first.headers.append((b"X-Added", b"1"))
    assert second.headers == [(b"Host", b"svc"), (b"X-1", b"a"), (b"X-2", b"b")]


def test_the_heads_table_is_bounded_and_keeps_heads_without_their_trace_lines() -> None:
    heads = _heads_by_limits.setdefault(Http1Limits(), {})
    heads.clear()
    decode([INBOUND], True)
    residual = INBOUND.replace(TRACE + PARENT, b"")
    assert list(heads) == [residual] and heads[residual][13] is None
    # Found there with other ids: the head has the new ids, and is the same as the general path's.
    other = INBOUND.replace(b"0123abcd", b"feedbeef").replace(b"-0123456789abcdef-", b"-fedcba9876543210-")
    assert decode([other], True) == (decode([other], False)[0], True)
    assert decode([other], True)[0][0][2][13] == {
        b"x-request-id": b"feedbeef-0000-4000-8000-000000000001",
        b"traceparent": b"00-0123456789abcdef0123456789abcdef-fedcba9876543210-00",
    }
    # The same head without trace lines is found there too, with no trace context.
    assert decode([residual], True)[0][0][2][13] is None
    # Trace lines elsewhere, or more of them, are not kept (their values differ per request).
    heads.clear()
    decode([INBOUND.replace(b"Host: bench\r\n", b"Host: bench\r\nX-B3-Sampled: 1\r\n")], True)
    decode([INBOUND.replace(TRACE + PARENT, PARENT + TRACE)], True)
    assert heads == {}
    decode([b"GET /%d HTTP/1.1\r\nHost: svc\r\n\r\n" % i for i in range(_HEADS_KEPT + 10)], True)
    assert 0 < len(heads) <= _HEADS_KEPT


def test_a_head_found_without_its_trace_lines_still_meets_the_limits() -> None:
    limits = Http1Limits(max_headers=4)
    plain = b"GET / HTTP/1.1\r\nHost: svc\r\nX-1: a\r\nX-2: b\r\nX-3: c\r\n\r\n"  # 4 lines: taken
    assert decode([plain], True, limits)[0][-1] == ("end",)
    traced = plain.replace(b"\r\n\r\n", b"\r\n" + TRACE + PARENT + b"\r\n")  # 6 lines: refused
    assert decode([traced], True, limits)[0] == decode([traced], False, limits)[0]
    assert decode([traced], True, limits)[0][-1][:2] == ("error", 431)


_pieces = st.sampled_from(INPUTS)


@settings(max_examples=300, deadline=None)
@given(st.lists(_pieces, min_size=1, max_size=3), st.lists(st.integers(0, 400), max_size=8))
def test_splits_and_pipelines_decode_alike_on_both_paths(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    pieces, last = [], 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    # (the same pieces on both paths: the tail after an Upgrade head is what its read held, on either path)
    assert decode(pieces, True)[0] == decode(pieces, False)[0]


# -- trace blocks: a proxy's trace lines, found by their place after the first head with them --------------

BLOCK = TRACE + PARENT  # (as a consumer sidecar forwards them)


def _traced(request_id: bytes, parent: bytes, before: bytes = b"", after: bytes = b"") -> bytes:
    """INBOUND with these values in its block, and lines before or after the block."""
    return INBOUND.replace(
        BLOCK, before + b"x-request-id: " + request_id + b"\r\ntraceparent: " + parent + b"\r\n" + after
    )


def _heads(pieces: list[bytes], limits: Http1Limits | None = None) -> list[RequestHead]:
    recorder = Recorder()
    recorder.on_request_head = recorder.heads.append  # type: ignore[method-assign,assignment]
    decoder = RequestDecoder(recorder, limits)
    for piece in pieces:
        decoder.feed(piece)
    return recorder.heads


def _block_ok(head: RequestHead) -> bool:
    """No block, or the block its trace context came in."""
    return head.trace_block == b"" or head.trace_block == _block_of(head)


def _block_of(head: RequestHead) -> bytes:
    trace = head.trace_context()
    assert trace is not None
    return b"x-request-id: %b\r\ntraceparent: %b\r\n" % (trace[b"x-request-id"], trace[b"traceparent"])


def test_a_heads_block_is_handed_up_as_it_came_and_as_its_values() -> None:
    ids = [
        (b"feed%04d-0000-4000-8000-000000000001" % i, PARENT[13:-2].replace(b"-00", b"-%02x" % i))
        for i in range(20)
    ]
    heads = _heads([_traced(*pair) for pair in ids])
    assert len(heads) == 20
    for head, (request_id, parent) in zip(heads, ids, strict=True):
        assert head.trace_context() == {b"x-request-id": request_id, b"traceparent": parent}
        assert head.trace_block == b"x-request-id: " + request_id + b"\r\ntraceparent: " + parent + b"\r\n"
        assert head.trace is None  # (the block alone: no headers made for the usual inbound hop)
        assert head.caller == b"Consumer-A" and head.service == b"bench"
    # Not one of the fields (the general path never sets it), but kept by copy().
    assert heads[0].copy().trace_block == heads[0].trace_block and heads[0] == heads[0].copy()
    assert decode([_traced(*ids[0])], False)[0] == decode([_traced(*ids[0])], True)[0]
    # Other trace lines, another spelling, or none: no block (trace says what came).
    for data in (
        INBOUND.replace(b"Host: bench\r\n", b"Host: bench\r\nX-B3-Sampled: 1\r\n"),
        INBOUND.replace(TRACE, TRACE.replace(b"x-request-id", b"X-Request-Id")),
        INBOUND.replace(TRACE + PARENT, PARENT + TRACE),
        INBOUND.replace(TRACE, TRACE.replace(b": ", b":  ")),
        USUAL[0],
    ):
        head = _heads([data, data])[-1]
        assert head.trace_block == b"" and (head.trace is None) == (data is USUAL[0])


def test_a_block_of_other_lengths_or_at_another_place_is_found_by_its_search() -> None:
    pieces = [
        _traced(b"r1", PARENT[13:-2]),
        _traced(b"a-much-longer-request-id-" * 3, PARENT[13:-2]),
        _traced(b"r2", b"not-a-traceparent"),
        _traced(b"r3", PARENT[13:-2], before=b"X-Before: 1\r\n"),
        _traced(b"r4", PARENT[13:-2], after=b"X-After: 2\r\n"),
        _traced(b"r5", PARENT[13:-2]),
    ]
    heads = _heads(pieces)
    assert [h.trace_block == _block_of(h) for h in heads] == [True] * 6
    assert [t[b"x-request-id"] for h in heads if (t := h.trace_context())] == [
        b"r1",
        b"a-much-longer-request-id-" * 3,
        b"r2",
        b"r3",
        b"r4",
        b"r5",
    ]
    assert decode(pieces, True)[0] == decode(pieces, False)[0]


# Values the block's search takes ([!-~]+) and values it does not: each must decode as on the general path,
# right after a head that the decoder remembers by its block's place (so the place is checked first).
_VALUE_BYTES = [b"\x00", b"\t", b" ", b"\x7f", b"\x80", b"\xff", b"\x01", b"\r", b"\n", b"\r\n", b"\r\n\r\n"]


def test_bad_bytes_in_a_blocks_values_are_judged_as_on_the_general_path() -> None:
    good_id, good_parent = TRACE[14:-2], PARENT[13:-2]
    for bad in _VALUE_BYTES:
        for at in (0, 5, len(good_id) - 1):
            request_id = good_id[:at] + bad + good_id[at + len(bad) :]
            parent = good_parent[:at] + bad + good_parent[at + len(bad) :]
            for data in (_traced(request_id, good_parent), _traced(good_id, parent)):
                pieces = [INBOUND, data, INBOUND]
                fast = decode(pieces, True)[0]
                assert fast == decode(pieces, False)[0], data
                heads = _heads(pieces)
                assert all(map(_block_ok, heads))
                if (
                    len(heads) > 1 and b"\n" not in bad
                ):  # (a CRLF ends the value, and the line: then it is one)
                    assert heads[1].trace_block == b""  # (not [!-~]+: never taken as a block)


def test_a_block_after_a_blank_line_or_in_a_body_is_not_in_the_head() -> None:
    residual = INBOUND.replace(BLOCK, b"")
    body = BLOCK[:-2]
    with_body = residual.replace(b"\r\n\r\n", b"\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    after_blank = residual[:-2] + BLOCK
    pieces_list = [
        [INBOUND, residual[:-2] + b"\r\n" + BLOCK],
        [INBOUND, with_body],
        [INBOUND, after_blank],
        [INBOUND, INBOUND + residual],
    ]
    for pieces in pieces_list:
        assert decode(pieces, True)[0] == decode(pieces, False)[0], pieces
        assert all(map(_block_ok, _heads(pieces)))


def test_a_traced_head_over_the_limits_is_refused_after_one_within_them() -> None:
    limits = Http1Limits(max_headers=6, max_header_bytes=400)
    within = INBOUND
    too_many = INBOUND.replace(b"Host: bench\r\n", b"Host: bench\r\nX-1: a\r\nX-2: b\r\n")
    too_big = INBOUND.replace(b"Host: bench\r\n", b"Host: bench\r\nX-1: " + b"a" * 300 + b"\r\n")
    long_id = _traced(b"r" * 300, PARENT[13:-2])
    for data in (too_many, too_big, long_id):
        pieces = [within, data]
        events = decode(pieces, True, limits)[0]
        assert events == decode(pieces, False, limits)[0]
        assert events[-1][:2] == ("error", 431), data


_value = st.binary(min_size=0, max_size=70).map(lambda v: v.replace(b"\r\n\r\n", b"\r\n")) | st.sampled_from(
    [TRACE[14:-2], PARENT[13:-2], b"0123abcd-0000-4000-8000-000000000002", b"x"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_value, _value), min_size=1, max_size=4))
def test_heads_with_any_block_values_decode_alike_on_both_paths(values: list[tuple[bytes, bytes]]) -> None:
    pieces = [INBOUND] + [_traced(r, p) for r, p in values]
    assert decode(pieces, True)[0] == decode(pieces, False)[0]
    assert all(map(_block_ok, _heads(pieces)))


def test_a_block_check_is_asked_once_per_shape_and_its_no_keeps_the_block_back() -> None:
    """With a block_check (a proxy passes its tracer's), a block becomes trace_block only when the check
    approved a block of the same byte classes; the check is asked once per shape, and a refused block's
    values still come as the trace context."""
    asked: list[bytes] = []

    def check(block: bytes) -> bool:
        asked.append(block)
        return b'"' not in block

    recorder = Recorder()
    recorder.on_request_head = recorder.heads.append  # type: ignore[method-assign,assignment]
    decoder = RequestDecoder(recorder, block_check=check)
    plain = [b"feed%04d-0000-4000-8000-000000000001" % i for i in range(6)]
    quoted = [b'feed%04d-0000-4000-8000-00000000000"' % i for i in range(6)]
    for request_id in plain + quoted + plain[:2]:
        decoder.feed(_traced(request_id, PARENT[13:-2]))
    heads = recorder.heads
    assert [head.trace_block != b"" for head in heads] == [True] * 6 + [False] * 6 + [True] * 2
    assert all(_block_of(head).startswith(b"x-request-id: feed") for head in heads)
    # A refused block's values come as the headers; an approved one's as the block alone.
    assert [head.trace is None for head in heads] == [True] * 6 + [False] * 6 + [True] * 2
    # Asked for the first block, the first quoted one, and the first plain one after those: once a shape.
    assert [b'"' in block for block in asked] == [False, True, False]

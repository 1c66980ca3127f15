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

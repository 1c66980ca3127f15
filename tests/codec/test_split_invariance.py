"""Hypothesis: the decoder's verdict and output do not depend on how the bytes are split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.catalogue import CASES, VALID
from codec.harness import plexus_parse
from plexus.codec.http1 import ResponseDecoder, ResponseHead
from plexus.core.errors import ProtocolError

_inputs = st.sampled_from([c.data for c in CASES if len(c.data) < 4096] + VALID)


@st.composite
def _split(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    base = draw(st.lists(_inputs, min_size=1, max_size=4))
    data = b"".join(base)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=12))))
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    return data, pieces


@settings(max_examples=300, deadline=None)
@given(_split())
def test_split_invariance(sample: tuple[bytes, list[bytes]]) -> None:
    data, pieces = sample
    assert plexus_parse(pieces) == plexus_parse([data])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_arbitrary_bytes_never_crash_and_split_invariant(data: bytes, cut: int) -> None:
    prefix = b"POST / HTTP/1.1\r\nHost: a\r\n"
    whole = plexus_parse([prefix + data])
    cut = min(cut, len(data))
    assert plexus_parse([prefix + data[:cut], data[cut:]]) == whole


# -- the response decoder (upstream side): raw heads, hop-by-hop lines cut, the same whatever the split --

_RESPONSES = [
    # nginx's shape: Content-Length, Connection last
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Connection: keep-alive\r\n\r\nhello",
    # Connection first and lower-cased, Keep-Alive
    b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n"
    b"content-length: 2\r\n\r\nok",
    # chunked: the coding is removed (the proxy re-frames), trailers are not forwarded
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-B: 2\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    # an interim 100, then the final response
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\nX-C: 3\r\n\r\n",
    # a provider sidecar's refusal, with its reason
    b"HTTP/1.1 503 Service Unavailable\r\nx-plexus-error: upstream_connect_failed\r\n"
    b"Content-Length: 0\r\n\r\n",
    # Upgrade on a non-101 (426) stays; TE, Trailer and Proxy-Connection go
    b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: h2c\r\nTE: trailers\r\nTrailer: X\r\n"
    b"Proxy-Connection: close\r\nContent-Length: 0\r\n\r\n",
    # no headers at all; the body runs to close
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
]
_EXPECTED_RAW = [
    b"\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 5",
    b"\r\nX-A: 1\r\ncontent-length: 2",
    b"\r\nX-B: 2",
    b"\r\nContent-Length: 0\r\nX-C: 3",
    b"\r\nx-plexus-error: upstream_connect_failed\r\nContent-Length: 0",
    b"\r\nUpgrade: h2c\r\nContent-Length: 0",
    b"",
]


class _ResponseEvents:
    def __init__(self) -> None:
        self.events: list[object] = []

    def on_response_head(self, head: ResponseHead) -> None:
        self.events.append(("head", head.status, head.raw, head.has_length, head.chunked, head.error_reason))

    def on_response_body(self, data: bytes) -> None:
        if self.events and self.events[-1][0] == "body":  # type: ignore[index]
            self.events[-1] = ("body", self.events[-1][1] + data)  # type: ignore[index]
        else:
            self.events.append(("body", data))

    def on_response_end(self) -> None:
        self.events.append("end")

    def on_response_upgrade(self, head: ResponseHead, tail: bytes) -> None:
        self.events.append(("upgrade", head.status, tail))

    def on_response_error(self, error: ProtocolError) -> None:
        self.events.append(("error", error.reason))


def _decode_response(pieces: list[bytes], is_head: bool = False) -> list[object]:
    sink = _ResponseEvents()
    decoder = ResponseDecoder(sink)
    decoder.set_sink(sink, is_head)
    for piece in pieces:
        decoder.feed(piece)
    decoder.eof()
    return sink.events


def test_response_heads_are_forwarded_raw_without_hop_by_hop_lines() -> None:
    for data, raw in zip(_RESPONSES, _EXPECTED_RAW, strict=True):
        heads = [e for e in _decode_response([data]) if isinstance(e, tuple) and e[0] == "head"]
        assert heads[-1][2] == raw, data  # type: ignore[index]
    events = _decode_response([_RESPONSES[4]])
    assert events[0] == ("head", 503, _EXPECTED_RAW[4], True, False, b"upstream_connect_failed")
    assert _decode_response([_RESPONSES[2]]) == [
        ("head", 200, b"\r\nX-B: 2", False, True, None),
        ("body", b"abc"),
        "end",
    ]


@pytest.mark.parametrize("index", range(len(_RESPONSES)))
def test_response_decoding_does_not_depend_on_the_split(index: int) -> None:
    data = _RESPONSES[index]
    whole = _decode_response([data])
    assert whole[-1] == "end" and not any(isinstance(e, tuple) and e[0] == "error" for e in whole)
    for offset in range(1, len(data)):
        assert _decode_response([data[:offset], data[offset:]]) == whole, offset
        assert _decode_response([data[:offset], data[offset : offset + 3], data[offset + 3 :]]) == whole


def test_response_refusals() -> None:
    def error(data: bytes, is_head: bool = False) -> object:
        return _decode_response([data], is_head)[-1]

    assert error(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx") == (
        "error",
        "upstream_protocol_error",
    )
    assert error(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", is_head=True) == (
        "error",
        "upstream_protocol_error",
    )  # a body after the head of a HEAD response
    many = (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(101))
        + b"Content-Length: 0\r\n\r\n"
    )
    assert error(many) == ("error", "upstream_protocol_error")
    ok = _decode_response([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"], is_head=True)
    assert ok == [("head", 200, b"\r\nContent-Length: 2", True, False, None), "end"]
    # a second response in the read that ended the first, with nobody asking: an error, never a response
    two = _RESPONSES[0] + _RESPONSES[0]
    assert _decode_response([two])[-1] == ("error", "upstream_protocol_error")

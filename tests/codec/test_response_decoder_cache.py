"""The response decoder's memo of analysed heads and its skip of llhttp give the answers a fresh decode gives.

The reference is the same decoder made to forget (no memo, an empty table) before every read, so every head is
found, analysed and framed by llhttp as if seen for the first time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from plexus.codec.http1 import Http1Limits, ResponseDecoder, ResponseHead
from plexus.codec.http1 import response_decoder as rd
from plexus.core.errors import ProtocolError

_NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
    b"Connection: keep-alive\r\n\r\nhello, bench\n"
)
_RESPONSES = [
    _NGINX,
    _NGINX.replace(b"nginx", b"nginy"),  # one byte apart
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nDate: Thu, 26 Nov 2026 16:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nDate: Thu, 26 Nov 2026 16:00:01 GMT\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",  # HTTP/1.0: closes unless asked
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n"
    b"content-length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length:  3 \r\nX-Last: 1\r\n\r\nabc",  # blanks around the length
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-B: 2\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",  # refused
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\nX-C: 3\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",  # llhttp ignores the length of a 204
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",  # ... so these bytes are an error
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 13\r\n\r\n",
    b"HTTP/1.1 503 Service Unavailable\r\nx-plexus-error: upstream_connect_failed\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nframes",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    _NGINX + _NGINX,  # a second response in the read that ended the first
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 5000 + b"\r\nContent-Length: 2\r\n\r\nok",  # kept as a memo only
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"Content-Length: 0\r\n\r\n",
]


class _Events:
    def __init__(self, fail_on: str | None = None) -> None:
        self.events: list[Any] = []
        self.heads: list[ResponseHead] = []
        self.fail_on = fail_on

    def _fail(self, name: str) -> None:
        if self.fail_on == name:
            raise RuntimeError(f"sink failed in {name}")

    def on_response_head(self, head: ResponseHead) -> None:
        self.heads.append(head)
        self.events.append(
            ("head", head.status, head.raw, head.has_length, head.chunked, head.keep_alive, head.error_reason)
        )
        self._fail("head")

    def on_response_body(self, data: bytes) -> None:
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        else:
            self.events.append(("body", data))
        self._fail("body")

    def on_response_end(self) -> None:
        self.events.append("end")
        self._fail("end")

    def on_response_upgrade(self, head: ResponseHead, tail: bytes) -> None:
        self.events.append(("upgrade", head.status, tail))

    def on_response_error(self, error: ProtocolError) -> None:
        self.events.append(("error", error.reason))


class _Forgetful(ResponseDecoder):
    """The reference: no memo and an empty table before every read, so llhttp and the analysis see all."""

    __slots__ = ()

    def feed(self, data: bytes) -> None:
        self._memo_key = None
        self._memo_len = 0
        self._memo_whole = -1
        self._cache.clear()
        super().feed(data)


Step = tuple[int, bool, tuple[int, ...]]  # (response, is_head, cuts)


def _run(
    decoder_type: type[ResponseDecoder], steps: Sequence[Step], sink: _Events | None = None
) -> list[Any]:
    sink = sink or _Events()
    decoder = decoder_type(sink)
    for index, is_head, cuts in steps:
        data = _RESPONSES[index]
        decoder.set_sink(sink, is_head)
        last = 0
        for cut in sorted({min(c, len(data)) for c in cuts}):
            decoder.feed(data[last:cut])
            last = cut
        decoder.feed(data[last:])
    decoder.eof()
    return sink.events


def _warm(steps: Sequence[Step]) -> list[Any]:
    """Two decoders over the same steps (the table filled by the first), the second's events."""
    _run(ResponseDecoder, steps)
    return _run(ResponseDecoder, steps)


_step = st.tuples(
    st.integers(0, len(_RESPONSES) - 1),
    st.booleans(),
    st.lists(st.integers(1, 300), max_size=2).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_step, _step.map(lambda s: (s[0] % 10, False, ()))), min_size=1, max_size=8))
def test_memoized_decoding_gives_a_fresh_decodes_answers(steps: list[Step]) -> None:
    expected = _run(_Forgetful, steps)
    assert _run(ResponseDecoder, steps) == expected
    assert _warm(steps) == expected


def test_every_response_repeated_then_any_other_decodes_as_fresh() -> None:
    count = len(_RESPONSES)
    for index in range(count):
        for is_head in (False, True):
            steps: list[Step] = [(index, is_head, ())] * 4
            expected = _run(_Forgetful, steps)
            assert _run(ResponseDecoder, steps) == expected, (index, is_head)
            assert _warm(steps) == expected, (index, is_head)
        for then in range(count):  # a head seen twice, then another response (the same head, other bytes)
            steps = [(index, False, ()), (index, False, ()), (then, False, ())]
            assert _run(ResponseDecoder, steps) == _run(_Forgetful, steps), (index, then)


def _keep_alive_of(data: bytes, times: int = 3) -> list[bool]:
    sink = _Events()
    decoder = ResponseDecoder(sink)
    for _ in range(times):
        decoder.feed(data)
    return [head.keep_alive for head in sink.heads]


def test_keep_alive_on_hits_follows_version_and_connection() -> None:
    body = b"Content-Length: 2\r\n\r\nok"
    # Keep-alive heads come back each time (hits); a head that closes ends the connection after one response.
    assert _keep_alive_of(b"HTTP/1.1 200 OK\r\n" + body) == [True, True, True]
    assert _keep_alive_of(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n" + body) == [True, True, True]
    assert _keep_alive_of(b"HTTP/1.1 200 OK\r\nConnection: close\r\n" + body) == [False]
    assert _keep_alive_of(b"HTTP/1.0 200 OK\r\n" + body) == [False]
    # The version is part of the key: warm with 1.1, then 1.0 with otherwise the same bytes.
    sink = _Events()
    decoder = ResponseDecoder(sink)
    decoder.feed(b"HTTP/1.1 200 OK\r\n" + body)
    decoder.feed(b"HTTP/1.1 200 OK\r\n" + body)
    fresh = ResponseDecoder(sink)
    fresh.feed(b"HTTP/1.0 200 OK\r\n" + body)
    assert [head.keep_alive for head in sink.heads] == [True, True, False]


def test_a_response_after_connection_close_is_refused_on_a_hit() -> None:
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    for _ in range(3):  # the later connections find the head in the table
        sink = _Events()
        decoder = ResponseDecoder(sink)
        decoder.feed(closing)
        decoder.feed(closing)
        assert sink.events[-2:] == ["end", ("error", "upstream_protocol_error")]
        assert decoder.dead


def test_a_head_one_byte_apart_is_not_confused() -> None:
    sink = _Events()
    decoder = ResponseDecoder(sink)
    a = b"HTTP/1.1 200 OK\r\nX-Id: a\r\nContent-Length: 2\r\n\r\nok"
    b = a.replace(b"X-Id: a", b"X-Id: b")
    c = a.replace(b"200 OK", b"201 OK")
    for data in (a, a, b, a, c, c, b):
        decoder.feed(data)
    assert [(h.status, h.raw) for h in sink.heads] == [
        (200, b"\r\nX-Id: a\r\nContent-Length: 2"),
        (200, b"\r\nX-Id: a\r\nContent-Length: 2"),
        (200, b"\r\nX-Id: b\r\nContent-Length: 2"),
        (200, b"\r\nX-Id: a\r\nContent-Length: 2"),
        (201, b"\r\nX-Id: a\r\nContent-Length: 2"),
        (201, b"\r\nX-Id: a\r\nContent-Length: 2"),
        (200, b"\r\nX-Id: b\r\nContent-Length: 2"),
    ]
    assert sink.events.count("end") == 7


def test_a_repeated_head_is_the_same_object_and_skips_the_parser() -> None:
    sink = _Events()
    decoder = ResponseDecoder(sink)
    for _ in range(3):
        decoder.feed(_NGINX)
    assert sink.heads[0] is sink.heads[1] is sink.heads[2]
    # From the second sight on, the whole response's length is known: the third read skipped llhttp.
    assert decoder._memo_whole == len(_NGINX)
    assert sink.events[-3:] == [sink.events[0], ("body", b"hello, bench\n"), "end"]
    # Another decoder (another connection) finds the head in the shared table.
    other = _Events()
    ResponseDecoder(other).feed(_NGINX)
    assert other.heads[0] is sink.heads[0]


def test_the_table_is_bounded() -> None:
    sink = _Events()
    decoder = ResponseDecoder(sink)
    for i in range(3 * rd._HEADS_MAX):
        decoder.feed(b"HTTP/1.1 200 OK\r\nX-N: %d\r\nContent-Length: 0\r\n\r\n" % i)
        assert len(decoder._cache) <= rd._HEADS_MAX
    assert sink.events.count("end") == 3 * rd._HEADS_MAX
    assert sink.heads[-1].raw == b"\r\nX-N: %d\r\nContent-Length: 0" % (3 * rd._HEADS_MAX - 1)
    # A long head is not kept in the table, but a connection that sees it again still skips llhttp for it.
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * rd._HEAD_KEPT_MAX + b"\r\nContent-Length: 2\r\n\r\nok"
    decoder._cache.clear()
    for _ in range(3):
        decoder.feed(big)
    assert not decoder._cache
    assert decoder._memo_whole == len(big)
    assert sink.heads[-1] is sink.heads[-3]
    assert sink.events[-2:] == [("body", b"ok"), "end"]


def test_a_head_accepted_under_loose_limits_is_refused_under_tight_ones() -> None:
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(20))
    data = b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 0\r\n\r\n"
    loose = _Events()
    decoder = ResponseDecoder(loose)
    decoder.feed(data)
    decoder.feed(data)
    assert loose.events.count("end") == 2
    tight = _Events()
    ResponseDecoder(tight, Http1Limits(max_headers=10)).feed(data)
    assert tight.events == [("error", "upstream_protocol_error")]


def test_a_head_response_with_a_known_head_still_refuses_a_body() -> None:
    sink = _Events()
    decoder = ResponseDecoder(sink)
    decoder.feed(_NGINX)
    decoder.feed(_NGINX)
    decoder.set_sink(sink, True)
    decoder.feed(_NGINX)  # the whole length of a known head, but it answers a HEAD: the body is an error
    assert sink.events[-1] == ("error", "upstream_protocol_error")


def test_body_out_and_split_reads_on_hits() -> None:
    sink = _Events()
    decoder = ResponseDecoder(sink)
    decoder.feed(_NGINX)
    decoder.feed(_NGINX)
    out: list[bytes] = []
    decoder.body_out = out
    decoder.feed(_NGINX)  # skipped: the body goes to body_out
    decoder.feed(_NGINX[:50])  # a known head in two reads: through llhttp
    decoder.feed(_NGINX[50:])
    decoder.body_out = None
    decoder.feed(_NGINX[:-1])  # the body's last byte in the next read
    decoder.feed(_NGINX[-1:])
    assert out == [b"hello, bench\n", b"hello, bench\n"]
    assert sink.events.count("end") == 5
    assert sink.events[-3:] == [sink.events[0], ("body", b"hello, bench\n"), "end"]


def test_a_failing_sink_ends_the_decoder_alike_on_both_paths() -> None:
    for where in ("head", "body", "end"):
        results = []
        for warm in (False, True):
            sink = _Events()
            decoder = ResponseDecoder(sink)
            if warm:
                decoder.feed(_NGINX)
                decoder.feed(_NGINX)
                sink.events.clear()
            sink.fail_on = where
            decoder.feed(_NGINX)
            decoder.feed(_NGINX)  # ignored: the decoder is dead
            results.append((sink.events, decoder.dead))
        assert results[0] == results[1], where
        assert results[0][0][-1] == ("error", "upstream_protocol_error")

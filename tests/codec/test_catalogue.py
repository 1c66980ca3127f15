"""TESTING.md §A against the decoder: every case refused with its status, whole and split at every offset,
and no refused case ever completes a request (so nothing complete could be forwarded)."""

from __future__ import annotations

import pytest

from codec.catalogue import CASES, VALID, Case
from codec.harness import plexus_parse


def _offsets(data: bytes) -> range | list[int]:
    if len(data) < 2048:
        return range(1, len(data))
    # Large cases: every offset near the start and the end (where the limits trip), a stride in between.
    return sorted({*range(1, 300), *range(len(data) - 300, len(data)), *range(300, len(data), 97)})


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_whole_and_split(case: Case) -> None:
    whole = plexus_parse([case.data])
    assert whole.status == case.status, f"{case.name}: {whole}"
    assert whole.requests == [], "a refused request must never complete"
    for offset in _offsets(case.data):
        split = plexus_parse([case.data[:offset], case.data[offset:]])
        assert split.status == case.status, f"{case.name} split at {offset}: {split}"
        assert split.requests == []


@pytest.mark.parametrize("data", VALID)
def test_valid_requests_accepted_whole_and_split(data: bytes) -> None:
    whole = plexus_parse([data])
    assert whole.accepted and len(whole.requests) == 1, whole
    for offset in range(1, len(data)):
        assert plexus_parse([data[:offset], data[offset:]]) == whole


def test_byte_at_a_time_equals_whole() -> None:
    data = b"".join(VALID[:7])
    assert plexus_parse([data[i : i + 1] for i in range(len(data))]) == plexus_parse([data])


def test_trailers_are_not_forwarded_as_headers() -> None:
    from plexus.codec.http1 import Http1ServerCodec, Request

    codec = Http1ServerCodec()
    codec.receive_data(
        b"POST /p HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\nX-Plexus-Service: admin\r\nHost: evil\r\n\r\n"
    )
    event = codec.next_event()
    assert isinstance(event, Request)
    names = [n.lower() for n, _ in event.head.headers]
    assert names == [b"host"] and event.head.host == b"svc" and event.head.service is None


def test_body_over_limit_is_413() -> None:
    from plexus.codec.http1 import Http1Limits

    limits = Http1Limits(max_body_bytes=4)
    assert (
        plexus_parse([b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"], limits).status == 413
    )
    chunked = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
    )
    outcome = plexus_parse([chunked], limits)
    assert outcome.status == 413 and outcome.requests == []


def test_hop_by_hop_headers_are_stripped() -> None:
    from plexus.codec.http1 import Http1ServerCodec, Request

    codec = Http1ServerCodec()
    codec.receive_data(
        b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: 5\r\nTE: trailers\r\nX-Keep: 2\r\n\r\n"
    )
    event = codec.next_event()
    assert isinstance(event, Request)
    assert [n for n, _ in event.head.headers] == [b"Host", b"X-Keep"]
    assert event.head.keep_alive is False


def test_large_body_in_one_read_does_not_count_as_head_bytes() -> None:
    body = b"x" * 200_000
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n"
        + body
        + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    outcome = plexus_parse([data])
    assert outcome.accepted and [r[1] for r in outcome.requests] == [b"/", b"/next"]


def test_version_is_read_from_the_request_line_however_the_bytes_are_split() -> None:
    """The decoder reads the version from the raw request line when it can; a header value that ends in
    "HTTP/1.1" must never be mistaken for it, whatever the split and whatever came before in the read."""
    from plexus.codec.http1 import NEED_DATA, Http1ServerCodec, Request

    first = b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n"
    second = b"GET /b HTTP/1.0\r\nX-A: HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"
    third = b"\r\nGET /c HTTP/1.1\r\nHost: svc\r\nX-B: HTTP/1.0\r\n\r\n"
    data = first + second + third
    for offset in range(len(data) + 1):
        for cut in (offset, min(offset + 7, len(data))):
            codec = Http1ServerCodec()
            for piece in (data[:offset], data[offset:cut], data[cut:]):
                codec.receive_data(piece)
            heads = []
            while (event := codec.next_event()) is not NEED_DATA:
                if isinstance(event, Request):
                    heads.append((event.head.target, event.head.version, event.head.keep_alive))
            assert heads == [(b"/a", "1.1", True), (b"/b", "1.0", True), (b"/c", "1.1", True)], offset

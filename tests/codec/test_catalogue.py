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

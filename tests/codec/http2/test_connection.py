"""Server codec talking to client codec in memory: requests, bodies, trailers, concurrency, flow control."""

from __future__ import annotations

from plexus.codec.http2 import (
    ConnectionTerminated,
    DataReceived,
    Http2ClientCodec,
    Http2Limits,
    Http2ServerCodec,
    RequestHeadersReceived,
    ResponseHeadersReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

from .helpers import pump, request


def _pair() -> tuple[Http2ClientCodec, Http2ServerCodec]:
    client, server = Http2ClientCodec(), Http2ServerCodec()
    pump(client, server)
    return client, server


def test_get_round_trip() -> None:
    client, server = _pair()
    sid = client.send_request(request(b"/hello"), end_stream=True)
    _, sev = pump(client, server)
    heads = [e for e in sev if isinstance(e, RequestHeadersReceived)]
    assert len(heads) == 1 and heads[0].stream_id == sid and heads[0].end_stream
    assert (b":path", b"/hello") in heads[0].headers and heads[0].headers[0] == (b":method", b"GET")
    assert StreamEnded(sid) in sev
    server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
    assert server.send_data(sid, b"hi", end_stream=True) == 2
    cev, _ = pump(client, server)
    resp = [e for e in cev if isinstance(e, ResponseHeadersReceived)]
    assert resp[0].headers[0] == (b":status", b"200") and not resp[0].end_stream
    data = [e for e in cev if isinstance(e, DataReceived)]
    assert b"".join(d.data for d in data) == b"hi" and data[-1].end_stream
    assert StreamEnded(sid) in cev


def test_post_body_and_trailers_both_ways() -> None:
    client, server = _pair()
    body = bytes(range(256)) * 40
    sid = client.send_request(request(b"/p", b"POST"))
    assert client.send_data(sid, body) == len(body)
    client.send_trailers(sid, [(b"x-sum", b"42")])
    _, sev = pump(client, server)
    got = b"".join(e.data for e in sev if isinstance(e, DataReceived))
    assert got == body
    assert TrailersReceived(sid, [(b"x-sum", b"42")]) in sev
    server.send_headers(sid, [(b":status", b"200")])
    server.send_trailers(sid, [(b"grpc-status", b"0")])
    cev, _ = pump(client, server)
    assert TrailersReceived(sid, [(b"grpc-status", b"0")]) in cev


def test_two_hundred_streams_with_max_one_hundred() -> None:
    """Client respects SETTINGS_MAX_CONCURRENT_STREAMS by queueing; every call is answered."""
    client, server = _pair()
    assert server.limits.max_concurrent_streams == 100
    waiting = list(range(200))
    answered: dict[int, int] = {}
    sids: dict[int, int] = {}
    for _ in range(100):
        while waiting and client.can_open_stream():
            n = waiting.pop(0)
            sids[client.send_request(request(f"/call/{n}".encode()), end_stream=True)] = n
        cev, sev = pump(client, server)
        for e in sev:
            if isinstance(e, RequestHeadersReceived):
                path = dict(e.headers)[b":path"]
                server.send_headers(e.stream_id, [(b":status", b"200")])
                server.send_data(e.stream_id, path, end_stream=True)
        cev, _ = pump(client, server)
        for e in cev:
            if isinstance(e, DataReceived):
                answered[e.stream_id] = int(e.data.rsplit(b"/", 1)[1])
        if len(answered) == 200:
            break
    assert answered == sids and sorted(answered.values()) == list(range(200))
    assert not server.rejects


def test_stream_over_limit_refused_connection_kept() -> None:
    """A client ignoring the limit gets RST_STREAM REFUSED_STREAM for the extra stream only."""
    client = Http2ClientCodec()
    server = Http2ServerCodec(Http2Limits(max_concurrent_streams=2))
    # Open three before the client has seen the server's SETTINGS.
    sids = [client.send_request(request()) for _ in range(3)]
    cev, sev = pump(client, server)
    opened = [e.stream_id for e in sev if isinstance(e, RequestHeadersReceived)]
    assert opened == sids[:2]
    assert any(isinstance(e, StreamReset) and e.stream_id == sids[2] and e.error_code == 7 for e in cev)
    assert server.rejects["h2_refused_stream"] == 1 and not server.closed
    # The connection still carries the first two, and new streams once they finish.
    for sid in sids[:2]:
        client.end_stream(sid)
        server.send_headers(sid, [(b":status", b"204")], end_stream=True)
    pump(client, server)
    sid = client.send_request(request(b"/after"), end_stream=True)
    _, sev = pump(client, server)
    assert any(isinstance(e, RequestHeadersReceived) and e.stream_id == sid for e in sev)


def test_flow_control_large_body() -> None:
    """A 1 MiB body crosses a 64 KiB window: send_data takes what fits, the rest after WindowUpdated."""
    client, server = _pair()
    body = bytes(i % 251 for i in range(1 << 20))
    sid = client.send_request(request(b"/up", b"POST"))
    pending = body
    received = bytearray()
    for _ in range(1000):
        taken = client.send_data(sid, pending, end_stream=True)
        assert taken <= 65_535
        pending = pending[taken:]
        cev, sev = pump(client, server)
        for e in sev:
            if isinstance(e, DataReceived):
                received += e.data
                server.acknowledge(e.stream_id, e.flow_controlled_length)
        cev, _ = pump(client, server)
        if not pending:
            break
        assert any(isinstance(e, WindowUpdated) for e in cev)
    assert bytes(received) == body


def test_unread_data_stops_at_the_window() -> None:
    """Without acknowledge() the sender can send no more than the initial window."""
    client, server = _pair()
    sid = client.send_request(request(b"/up", b"POST"))
    assert client.send_data(sid, b"x" * 200_000) == 65_535
    pump(client, server)
    assert client.send_data(sid, b"x") == 0
    assert client.send_window(sid) == 0


def test_graceful_goaway_lets_streams_below_last_id_finish() -> None:
    client, server = _pair()
    first = client.send_request(request(b"/1"), end_stream=True)
    pump(client, server)
    server.goaway(last_stream_id=first)
    cev, _ = pump(client, server)
    assert ConnectionTerminated(0, first) in cev
    assert client.goaway_received and not client.can_open_stream() and not client.closed
    server.send_headers(first, [(b":status", b"200")])
    server.send_data(first, b"done", end_stream=True)
    cev, _ = pump(client, server)
    assert b"".join(e.data for e in cev if isinstance(e, DataReceived)) == b"done"
    assert StreamEnded(first) in cev
    assert server.open_streams == 0 and client.open_streams == 0


def test_graceful_goaway_both_ways_and_late_streams_refused() -> None:
    """Stream 1 drains (its body still arriving after GOAWAY); stream 3, opened after, is refused."""
    client, server = _pair()
    first = client.send_request(request(b"/up", b"POST"))
    client.send_data(first, b"part1")
    pump(client, server)
    server.goaway()
    late = client.send_request(request(b"/late"), end_stream=True)  # crosses the GOAWAY on the wire
    client.send_data(first, b"part2", end_stream=True)
    cev, sev = pump(client, server)
    assert not any(isinstance(e, RequestHeadersReceived) for e in sev)
    assert b"".join(e.data for e in sev if isinstance(e, DataReceived)) == b"part2"
    assert any(isinstance(e, StreamReset) and e.stream_id == late and e.error_code == 7 for e in cev)
    assert ConnectionTerminated(0, first) in cev
    server.send_headers(first, [(b":status", b"200")], end_stream=True)
    cev, _ = pump(client, server)
    assert any(isinstance(e, ResponseHeadersReceived) and e.stream_id == first for e in cev)
    assert server.open_streams == 0

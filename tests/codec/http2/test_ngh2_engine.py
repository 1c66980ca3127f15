"""The nghttp2 engine where it differs from the h2 engine by design, the engine registry, and the two
engines talking to each other (each one's encoder checked by the other's decoder)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hpack import Encoder
from hyperframe.frame import GoAwayFrame, RstStreamFrame

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
    engines,
)
from plexus.codec.http2.ngh2_engine import Ngh2ClientCodec, Ngh2ServerCodec
from plexus.core.errors import ConfigError

from . import frames as fr
from .helpers import FakeClock, pump, request
from .test_attacks import ENHANCE_YOUR_CALM, REFUSED_STREAM

STREAM_CLOSED = 0x5


def _terminated(events: Sequence[object]) -> ConnectionTerminated:
    found = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert found, events[-3:]
    return found[-1]


def test_hpack_bomb_stopped_while_inflating() -> None:
    """100 one-byte references to a 4 KB header: libnghttp2 stops inflating at 64 KiB and is unusable after,
    so the wrapper writes GOAWAY ENHANCE_YOUR_CALM itself (as the h2 engine answers)."""
    server = Ngh2ServerCodec()
    server.receive_data(fr.preface())
    block = Encoder().encode([*request(b"/x"), *([(b"x-bomb", b"a" * 4000)] * 100)])
    events = server.receive_data(fr.headers(1, block))
    end = _terminated(events)
    assert (end.reason, end.error_code, end.remote) == ("h2_header_list_too_large", ENHANCE_YOUR_CALM, False)
    assert not any(isinstance(e, RequestHeadersReceived) for e in events)
    assert server.rejects["h2_header_list_too_large"] == 1 and server.closed
    assert fr.goaway_code(server.data_to_send()) == ENHANCE_YOUR_CALM
    assert server.receive_data(fr.headers(3, fr.request_block(Encoder()))) == []


def test_header_list_limit_follows_the_limits() -> None:
    server = Ngh2ServerCodec(Http2Limits(max_header_list_bytes=8 * 1024))
    server.receive_data(fr.preface())
    block = Encoder().encode([*request(b"/x"), *([(b"x-big", b"a" * 4000)] * 3)])
    events = server.receive_data(fr.headers(1, block))
    assert _terminated(events).reason == "h2_header_list_too_large"


def test_refused_streams_count_as_resets() -> None:
    """500 streams in one read with max_concurrent_streams=1: each refusal counted until the window trips."""
    server = Ngh2ServerCodec(Http2Limits(max_concurrent_streams=1), clock=FakeClock())
    enc = Encoder()
    server.receive_data(fr.preface())
    chunk = b"".join(fr.headers(sid, fr.request_block(enc), end_stream=False) for sid in range(1, 1001, 2))
    events = server.receive_data(chunk)
    # libnghttp2 refused the whole read in C; our window (200 per second) trips at the 201st refusal.
    assert server.rejects["h2_refused_stream"] == 201
    refused = [e for e in events if isinstance(e, StreamReset) and e.reason == "h2_refused_stream"]
    assert [e.stream_id for e in refused] == list(range(3, 3 + 2 * 201, 2))
    end = _terminated(events)
    assert (end.reason, end.error_code) == ("h2_rapid_reset", ENHANCE_YOUR_CALM)
    out = fr.parse(server.data_to_send())
    assert sum(isinstance(f, RstStreamFrame) and f.error_code == REFUSED_STREAM for f in out) >= 201
    assert isinstance(out[-1], GoAwayFrame) and out[-1].error_code == ENHANCE_YOUR_CALM


def test_invalid_header_closes_only_that_stream() -> None:
    """An upper-case field name (RFC 9113 §8.2.1) is a stream error: RST_STREAM, the connection lives."""
    server = Ngh2ServerCodec()
    enc = Encoder()
    bad = enc.encode([*request(b"/x"), (b"X-Upper", b"1")])
    events = server.receive_data(fr.preface() + fr.headers(1, bad))
    assert events == [StreamReset(1, 1, remote=False, reason="h2_stream_error")]
    assert not server.closed and server.rejects["h2_stream_error"] == 1
    assert any(isinstance(f, RstStreamFrame) and f.stream_id == 1 for f in fr.parse(server.data_to_send()))
    events = server.receive_data(fr.headers(3, fr.request_block(enc)))
    assert any(isinstance(e, RequestHeadersReceived) and e.stream_id == 3 for e in events)


def test_data_after_end_stream_is_a_connection_error() -> None:
    """libnghttp2 treats DATA on a half-closed (remote) stream as a connection error (RFC 9113 §5.4.1 allows
    it); the h2 engine resets the stream only."""
    server = Ngh2ServerCodec()
    enc = Encoder()
    server.receive_data(fr.preface() + fr.headers(1, fr.request_block(enc)))
    events = server.receive_data(fr.data(1, b"late"))
    end = _terminated(events)
    assert (end.reason, end.error_code, end.last_stream_id) == ("h2_protocol_error", STREAM_CLOSED, 1)
    assert fr.goaway_code(server.data_to_send()) == STREAM_CLOSED
    assert server.receive_data(fr.headers(3, fr.request_block(enc))) == []


@pytest.mark.parametrize(
    ("client_cls", "server_cls"),
    [(Http2ClientCodec, Ngh2ServerCodec), (Ngh2ClientCodec, Http2ServerCodec)],
    ids=["h2-client-ngh2-server", "ngh2-client-h2-server"],
)
def test_engines_interoperate(client_cls: type, server_cls: type) -> None:
    client, server = client_cls(), server_cls()
    sid = client.send_request(request(b"/svc/Call", b"POST"))
    body = bytes(range(256)) * 300  # over the 64 KiB window: needs acknowledge() and WindowUpdated
    pending = body
    got = bytearray()
    for _ in range(100):
        pending = pending[client.send_data(sid, pending, end_stream=True) :]
        _, sev = pump(client, server)
        for e in sev:
            if isinstance(e, DataReceived):
                got += e.data
                server.acknowledge(e.stream_id, e.flow_controlled_length)
        pump(client, server)
        if not pending and StreamEnded(sid) in sev:
            break
    assert bytes(got) == body
    server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(sid, b"answer")
    server.send_trailers(sid, [(b"grpc-status", b"0")])
    cev, _ = pump(client, server)
    assert [type(e) for e in cev] == [ResponseHeadersReceived, DataReceived, TrailersReceived, StreamEnded]
    assert cev[2] == TrailersReceived(sid, [(b"grpc-status", b"0")])
    assert client.open_streams == 0 and server.open_streams == 0


def test_registry_builds_each_engine() -> None:
    limits = Http2Limits(max_concurrent_streams=7)
    assert isinstance(engines.server_codec("h2", limits), Http2ServerCodec)
    assert isinstance(engines.client_codec("h2"), Http2ClientCodec)
    server = engines.server_codec("nghttp2", limits, clock=FakeClock())
    assert isinstance(server, Ngh2ServerCodec) and server.limits.max_concurrent_streams == 7
    assert isinstance(engines.client_codec("nghttp2"), Ngh2ClientCodec)
    assert engines.server_codec().__class__ is Http2ServerCodec  # the default stays h2
    with pytest.raises(ConfigError, match="nghttp2"):
        engines.server_codec("envoy")


def test_client_ping_and_settings_seen() -> None:
    """What the proxy's upstream pool reads: the peer's SETTINGS, its stream limit, and PING ACKs."""
    client: Any = Ngh2ClientCodec()
    server: Any = Ngh2ServerCodec(Http2Limits(max_concurrent_streams=3))  # pump() is typed for h2's codecs
    assert client.max_streams() == 100 and not client.settings_received
    pump(client, server)
    assert client.settings_received and client.max_streams() == 3
    client.ping()
    pump(client, server)
    assert client.pings_acked == 1


def test_connection_window_opened_for_a_stalled_stream() -> None:
    """With set_connection_window, one stream's unacknowledged 64 KiB does not stall a second stream."""
    client: Any = Ngh2ClientCodec()
    server: Any = Ngh2ServerCodec(connection_window=1 << 20)
    pump(client, server)
    stalled = client.send_request(request(b"/stalled", b"POST"))
    assert client.send_data(stalled, b"s" * 65_535) == 65_535  # never acknowledged by the server
    pump(client, server)
    other = client.send_request(request(b"/other", b"POST"))
    assert client.send_window(other) == 65_535  # the connection window still has room
    assert client.send_data(other, b"o" * 1000, end_stream=True) == 1000
    _, sev = pump(client, server)
    assert (
        b"".join(e.data for e in sev if isinstance(e, DataReceived) and e.stream_id == other) == b"o" * 1000
    )


def test_without_it_the_connection_window_is_shared() -> None:
    client: Any = Ngh2ClientCodec()
    server: Any = Ngh2ServerCodec()
    pump(client, server)
    stalled = client.send_request(request(b"/stalled", b"POST"))
    client.send_data(stalled, b"s" * 65_535)
    pump(client, server)
    other = client.send_request(request(b"/other", b"POST"))
    assert client.send_window(other) == 0


def test_request_held_by_the_peers_stream_limit_still_takes_its_body() -> None:
    """nghttp2 holds HEADERS beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS; the body waits with them."""
    client: Any = Ngh2ClientCodec()
    server: Any = Ngh2ServerCodec(Http2Limits(max_concurrent_streams=1))
    pump(client, server)
    first = client.send_request(request(b"/1"), end_stream=True)
    pump(client, server)
    assert not client.can_open_stream()
    held = client.send_request(request(b"/2", b"POST"))  # over the limit: nghttp2 keeps it back
    client.data_to_send()
    assert client.send_data(held, b"body", end_stream=True) == 4
    _, sev = pump(client, server)
    assert not any(isinstance(e, RequestHeadersReceived) and e.stream_id == held for e in sev)
    server.send_headers(first, [(b":status", b"204")], end_stream=True)
    _, sev = pump(client, server)
    _, more = pump(client, server)
    sev += more
    assert any(isinstance(e, RequestHeadersReceived) and e.stream_id == held for e in sev)
    assert b"".join(e.data for e in sev if isinstance(e, DataReceived)) == b"body"
    assert not server.rejects

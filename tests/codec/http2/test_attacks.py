"""Each attack as raw frames: rejected fast, its reason counted, only the offender closed."""

from __future__ import annotations

import time
from collections.abc import Sequence

from hpack import Encoder
from hyperframe.frame import RstStreamFrame, SettingsFrame

from plexus.codec.http2 import (
    ConnectionTerminated,
    DataReceived,
    Http2ClientCodec,
    Http2Limits,
    Http2ServerCodec,
    RequestHeadersReceived,
    StreamReset,
)

from . import frames as fr
from .helpers import FakeClock, pump, request

ENHANCE_YOUR_CALM = 0xB
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7


def assert_normal_call_works() -> None:
    """A well-behaved connection next to the attacked one is unaffected."""
    client, server = Http2ClientCodec(), Http2ServerCodec()
    sid = client.send_request(request(b"/ok"), end_stream=True)
    _, sev = pump(client, server)
    assert any(isinstance(e, RequestHeadersReceived) for e in sev)
    server.send_headers(sid, [(b":status", b"200")])
    server.send_data(sid, b"fine", end_stream=True)
    cev, _ = pump(client, server)
    assert b"".join(e.data for e in cev if isinstance(e, DataReceived)) == b"fine"
    assert not server.rejects and not client.rejects


def _terminated(events: Sequence[object]) -> ConnectionTerminated:
    found = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert found, events[-3:]
    return found[-1]


def test_rapid_reset_ten_thousand_times_gets_goaway() -> None:
    clock = FakeClock()
    server = Http2ServerCodec(clock=clock)
    enc = Encoder()
    events: list[object] = [*server.receive_data(fr.preface())]
    started = time.monotonic()
    closed_after = None
    for batch in range(50):  # 50 reads of 200 HEADERS+RST_STREAM pairs: 10,000 in all
        chunk = b"".join(
            fr.headers(sid, fr.request_block(enc)) + fr.rst(sid)
            for sid in range(1 + 400 * batch, 1 + 400 * (batch + 1), 2)
        )
        got = server.receive_data(chunk)
        if closed_after is not None:
            assert got == []  # the attacker keeps going; nothing more is processed
        events += got
        if server.closed and closed_after is None:
            closed_after = batch
    assert closed_after is not None and closed_after <= 1
    end = _terminated(events)
    assert (end.reason, end.error_code, end.remote) == ("h2_rapid_reset", ENHANCE_YOUR_CALM, False)
    assert server.rejects["h2_rapid_reset"] == 1
    assert fr.goaway_code(server.data_to_send()) == ENHANCE_YOUR_CALM
    # Nothing after the offence is reported, and input after close is ignored.
    assert server.receive_data(fr.headers(30_001, fr.request_block(enc))) == []
    assert server.error is not None and server.error.reason == "h2_rapid_reset"
    assert time.monotonic() - started < 20  # bounded, not a speed assertion: a hang would trip it
    assert_normal_call_works()


def test_resets_spread_over_time_are_tolerated() -> None:
    """A client cancelling 50 calls a second for 20 seconds is not an attacker."""
    clock = FakeClock()
    server = Http2ServerCodec(clock=clock)
    enc = Encoder()
    server.receive_data(fr.preface())
    for sid in range(1, 2001, 2):
        clock.now += 0.02
        events = server.receive_data(fr.headers(sid, fr.request_block(enc)) + fr.rst(sid))
        assert any(isinstance(e, StreamReset) and e.remote for e in events)
    assert not server.closed and not server.rejects


def test_refused_streams_count_as_resets() -> None:
    """Opening past max_concurrent_streams over and over (refused each time) also ends in GOAWAY."""
    server = Http2ServerCodec(Http2Limits(max_concurrent_streams=1), clock=FakeClock())
    enc = Encoder()
    server.receive_data(fr.preface())
    chunk = b"".join(fr.headers(sid, fr.request_block(enc), end_stream=False) for sid in range(1, 1001, 2))
    events = server.receive_data(chunk)
    assert server.rejects["h2_refused_stream"] == 201  # the 201st refusal in one window trips the limit
    assert _terminated(events).reason == "h2_rapid_reset"
    out = fr.parse(server.data_to_send())
    assert sum(isinstance(f, RstStreamFrame) and f.error_code == REFUSED_STREAM for f in out) == 201


def test_continuation_flood() -> None:
    server = Http2ServerCodec()
    server.receive_data(fr.preface())
    enc = Encoder()
    block = fr.request_block(enc)
    wire = fr.headers(1, block[:3], end_headers=False) + b"".join(
        fr.continuation(1, b"\x00") for _ in range(1000)
    )
    events: list[object] = []
    for i in range(0, len(wire), 97):  # arrives in small pieces
        events += server.receive_data(wire[i : i + 97])
        if server.closed:
            break
    end = _terminated(events)
    assert end.reason == "h2_continuation_flood" and server.rejects["h2_continuation_flood"] == 1
    assert i < len(wire) // 5  # stopped near 64 frames, not after 1000
    assert fr.goaway_code(server.data_to_send()) is not None
    assert_normal_call_works()


def test_hpack_bomb() -> None:
    """100 one-byte references to a 4 KB indexed header inflate past 64 KiB: refused while decoding."""
    server = Http2ServerCodec()
    server.receive_data(fr.preface())
    enc = Encoder()
    block = enc.encode([*request(b"/x"), *([(b"x-bomb", b"a" * 4000)] * 100)])
    assert len(block) < 5000
    events = server.receive_data(fr.headers(1, block))
    end = _terminated(events)
    assert end.reason == "h2_header_list_too_large" and end.error_code == ENHANCE_YOUR_CALM
    assert not any(isinstance(e, RequestHeadersReceived) for e in events)
    assert fr.goaway_code(server.data_to_send()) == ENHANCE_YOUR_CALM
    assert_normal_call_works()


def test_decoded_size_rechecked_after_hpack() -> None:
    """Defence in depth: were hpack's own bound looser, our decoded-size check still resets the stream."""
    server = Http2ServerCodec(Http2Limits(max_header_list_bytes=8 * 1024))
    server._conn.decoder.max_header_list_size = 1 << 20  # simulate a laxer hpack
    server.receive_data(fr.preface())
    block = Encoder().encode([*request(b"/x"), *([(b"x-big", b"a" * 4000)] * 3)])
    events = server.receive_data(fr.headers(1, block))
    assert any(isinstance(e, StreamReset) and e.reason == "h2_header_list_too_large" for e in events)
    assert not any(isinstance(e, RequestHeadersReceived) for e in events) and not server.closed
    assert any(isinstance(f, RstStreamFrame) and f.stream_id == 1 for f in fr.parse(server.data_to_send()))


def test_headers_just_under_the_limit_pass() -> None:
    server = Http2ServerCodec()
    server.receive_data(fr.preface())
    block = Encoder().encode([*request(b"/x"), *([(b"x-big", b"a" * 4000)] * 10)])
    events = server.receive_data(fr.headers(1, block))
    assert any(isinstance(e, RequestHeadersReceived) for e in events) and not server.rejects


def test_settings_flood() -> None:
    server = Http2ServerCodec(clock=FakeClock())
    events = server.receive_data(fr.preface() + fr.settings() * 100)
    assert _terminated(events).reason == "h2_settings_flood"
    assert server.rejects["h2_settings_flood"] == 1
    assert fr.goaway_code(server.data_to_send()) == ENHANCE_YOUR_CALM
    assert_normal_call_works()


def test_ping_flood_fed_byte_by_byte() -> None:
    server = Http2ServerCodec(clock=FakeClock())
    wire = fr.preface() + b"".join(fr.ping(n) for n in range(100))
    events: list[object] = []
    for i in range(len(wire)):
        events += server.receive_data(wire[i : i + 1])
    assert _terminated(events).reason == "h2_ping_flood" and server.rejects["h2_ping_flood"] == 1
    assert fr.goaway_code(server.data_to_send()) == ENHANCE_YOUR_CALM


def test_pings_within_the_rate_are_answered() -> None:
    clock = FakeClock()
    server = Http2ServerCodec(clock=clock)
    server.receive_data(fr.preface())
    for n in range(200):
        clock.now += 0.1
        server.receive_data(fr.ping(n))
    acks = [f for f in fr.parse(server.data_to_send()) if "ACK" in f.flags and f.type == 0x6]
    assert len(acks) == 200 and not server.rejects


def test_oversized_frame_length_rejected_before_buffering() -> None:
    server = Http2ServerCodec()
    server.receive_data(fr.preface())
    # A DATA frame header announcing 16 MiB - 1: refused from the 9-byte header alone.
    events = server.receive_data(fr.raw_frame_header(0xFFFFFF, 0x0, 0, 1))
    assert _terminated(events).reason == "h2_frame_too_large"
    assert fr.goaway_code(server.data_to_send()) == FRAME_SIZE_ERROR
    assert_normal_call_works()


def test_frame_of_exactly_max_size_passes_and_one_more_fails() -> None:
    server = Http2ServerCodec()
    enc = Encoder()
    server.receive_data(fr.preface() + fr.headers(1, fr.request_block(enc), end_stream=False))
    events = server.receive_data(fr.data(1, b"a" * 16_384))
    assert any(isinstance(e, DataReceived) for e in events) and not server.closed
    events = server.receive_data(fr.data(1, b"a" * 16_385)[:9])
    assert _terminated(events).reason == "h2_frame_too_large"


def test_peer_that_does_not_read_overflows_outbound_buffer() -> None:
    server = Http2ServerCodec(Http2Limits(max_outbound_bytes=500), clock=FakeClock())
    events = server.receive_data(fr.preface())
    for n in range(40):
        events += server.receive_data(fr.ping(n))  # each ACK is 17 bytes queued, never read
    assert _terminated(events).reason == "h2_outbound_overflow"
    assert server.rejects["h2_outbound_overflow"] == 1


def test_stream_error_closes_only_that_stream() -> None:
    """DATA on a stream the client already half-closed: h2 resets that stream, the connection lives."""
    server = Http2ServerCodec()
    enc = Encoder()
    server.receive_data(fr.preface() + fr.headers(1, fr.request_block(enc)))
    events = server.receive_data(fr.data(1, b"late"))
    assert any(isinstance(e, StreamReset) and not e.remote for e in events) or any(
        isinstance(f, RstStreamFrame) for f in fr.parse(server.data_to_send())
    )
    assert not server.closed
    events = server.receive_data(fr.headers(3, fr.request_block(enc)))
    assert any(isinstance(e, RequestHeadersReceived) and e.stream_id == 3 for e in events)


def test_limits_are_advertised_in_settings() -> None:
    out = fr.parse(Http2ServerCodec().data_to_send())
    assert isinstance(out[0], SettingsFrame)
    assert out[0].settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 100
    assert out[0].settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 64 * 1024
    assert out[0].settings[SettingsFrame.MAX_FRAME_SIZE] == 16 * 1024

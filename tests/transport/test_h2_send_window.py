"""The ngh2 client codec's send window for a request whose HEADERS are still queued, and the peer's limits it
keeps between SETTINGS.

nghttp2 has no state for a stream until its HEADERS are written, so asking it for that stream's window
raises; the codec answers with the peer's initial window instead, without asking (the exception cost ~16k
instructions per call, bench/profiles/grpc-telemetry-NOTES.md). These tests drive the codec against a real
nghttp2 server connection, bytes only, and check that flow control still holds: never more body than the
peer allows.
"""

from __future__ import annotations

from typing import Any

import ngh2

from plexus.codec.http2 import Http2Limits
from plexus.transport.h2_codecs import NgClientCodec
from plexus.transport.h2_stream import filter_headers

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/p.S/M"), (b":authority", b"app")]


def _pair(settings: dict[Any, int]) -> tuple[NgClientCodec, Any]:
    """Our client codec, connected to an nghttp2 server that announced ``settings``."""
    client = NgClientCodec(Http2Limits())
    server = ngh2.Connection(ngh2.Role.SERVER, ngh2.Configuration(auto_window_update=False))
    server.initiate_connection(settings)
    server.receive_data(client.data_to_send())
    client.receive_data(bytes(server.data_to_send()))
    server.receive_data(client.data_to_send())
    server.events()
    return client, server


def _body_at_server(client: NgClientCodec, server: Any) -> int:
    server.receive_data(client.data_to_send())
    return sum(len(ev.data) for ev in server.events() if isinstance(ev, ngh2.DataReceived))


def test_a_request_whose_headers_are_queued_gets_the_peers_initial_window() -> None:
    client, server = _pair({ngh2.Setting.INITIAL_WINDOW_SIZE: 1000})
    sid = client.send_request(REQUEST)
    assert client.send_window(sid) == 1000  # HEADERS not written yet: nothing to ask nghttp2
    assert client.send_data(sid, b"x" * 600) == 600
    assert client.send_window(sid) == 400  # what it queued counts against the window
    assert client.send_data(sid, b"y" * 600, end_stream=True) == 400  # cut at the window: no END_STREAM
    assert _body_at_server(client, server) == 1000
    assert client.send_window(sid) == 0  # now asked of nghttp2: the stream exists
    assert client.send_data(sid, b"z") == 0


def test_the_initial_window_follows_the_peers_next_settings() -> None:
    client, server = _pair({ngh2.Setting.INITIAL_WINDOW_SIZE: 1000})
    first = client.send_request(REQUEST)
    assert client.send_window(first) == 1000
    server.receive_data(client.data_to_send())
    server.events()
    server.update_settings({ngh2.Setting.INITIAL_WINDOW_SIZE: 300})
    client.receive_data(bytes(server.data_to_send()))
    sid = client.send_request(REQUEST)
    assert client.send_window(sid) == 300
    assert client.send_data(sid, b"x" * 500, end_stream=True) == 300
    assert _body_at_server(client, server) == 300


def test_a_request_held_for_a_concurrency_slot_still_gets_its_window() -> None:
    """Past the peer's SETTINGS_MAX_CONCURRENT_STREAMS nghttp2 keeps a request's HEADERS after the write: its
    window is then asked of nghttp2, which has no stream yet either (the fallback answer)."""
    client, server = _pair({ngh2.Setting.MAX_CONCURRENT_STREAMS: 1, ngh2.Setting.INITIAL_WINDOW_SIZE: 700})
    assert client.max_streams() == 1 and client.max_streams_known == 1
    first = client.send_request(REQUEST)
    held = client.send_request(REQUEST)
    server.receive_data(client.data_to_send())  # the first one's HEADERS only
    opened = [ev.stream_id for ev in server.events() if isinstance(ev, ngh2.RequestReceived)]
    assert opened == [first]
    assert client.send_window(held) == 700
    assert client.send_data(held, b"x" * 900, end_stream=True) == 700


def test_max_streams_is_read_again_after_the_peers_next_settings() -> None:
    client, server = _pair({ngh2.Setting.MAX_CONCURRENT_STREAMS: 5})
    assert client.max_streams() == 5 and client.max_streams_known == 5
    server.update_settings({ngh2.Setting.MAX_CONCURRENT_STREAMS: 2})
    client.receive_data(bytes(server.data_to_send()))
    assert client.max_streams_known == 0  # forgotten with the SETTINGS
    assert client.max_streams() == 2


def test_a_request_body_reaches_the_server_whole_when_it_fits() -> None:
    client, server = _pair({})
    sid = client.send_request(REQUEST)
    assert client.send_data(sid, b"abc", end_stream=True) == 3
    server.receive_data(client.data_to_send())
    data = [ev for ev in server.events() if isinstance(ev, ngh2.DataReceived)]
    assert [(ev.data, ev.end_stream) for ev in data] == [(b"abc", True)]


def test_filter_headers_passes_a_clean_block_itself_and_strips_connection_fields() -> None:
    clean = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"te", b"trailers")][:2]
    assert filter_headers(clean) is clean
    dirty = [
        (b":status", b"200"),
        (b"connection", b"close"),
        (b"te", b"gzip"),
        (b"host", b"app"),
        (b"grpc-encoding", b"identity"),
    ]
    assert filter_headers(dirty) == [(b":status", b"200"), (b"grpc-encoding", b"identity")]
    request = [(b":path", b"/p.S/M"), (b"te", b"trailers"), (b"keep-alive", b"1")]
    assert filter_headers(request) == [(b":path", b"/p.S/M"), (b"te", b"trailers")]

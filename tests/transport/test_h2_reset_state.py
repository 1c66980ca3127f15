"""The ngh2 codec keeps no state per reset stream once the reset is over.

nginx answers a request on its HEADERS, before it reads the DATA that ends it, then sends RST_STREAM(NO_ERROR)
for a stream that is already closed on both sides: one per call. The codec used to remember every peer reset
until the stream's close event, which never comes for a stream already closed, so the set grew by one id per
call for the connection's life; resets we sent were never forgotten either (their close is reported while
writing). These tests drive the proxy's client codec against a real nghttp2 server connection, bytes only.
"""

from __future__ import annotations

import struct
from typing import Any

import ngh2
from h2.errors import ErrorCodes

from plexus.codec.http2 import Http2Limits, StreamReset
from plexus.codec.http2.events import Event
from plexus.transport.h2_codecs import NgClientCodec

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/p.S/M"), (b":authority", b"app")]


def _pair() -> tuple[NgClientCodec, Any]:
    client = NgClientCodec(Http2Limits())
    server = ngh2.Connection(ngh2.Role.SERVER, ngh2.Configuration(auto_window_update=False))
    server.initiate_connection({})
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    server.events()
    return client, server


def _to_client(client: NgClientCodec, server: Any) -> list[Event]:
    return client.receive_data(bytes(server.data_to_send()))


def _rst(sid: int, code: int) -> bytes:
    """RST_STREAM written by hand: nghttp2 writes none for a stream it already closed, nginx does."""
    return struct.pack(">I", 4)[1:] + b"\x03\x00" + struct.pack(">II", sid, code)


def _kinds(events: list[Event]) -> list[str]:
    return [type(ev).__name__ for ev in events]


def test_peer_reset_after_a_complete_answer_leaves_nothing_behind() -> None:
    client, server = _pair()
    for _ in range(50):
        sid = client.send_request(REQUEST, end_stream=True)
        server.receive_data(client.data_to_send())
        server.events()
        server.send_response(sid, [(b":status", b"200")], end_stream=True)
        assert _kinds(_to_client(client, server)) == ["ResponseHeadersReceived", "StreamEnded"]
        events = client.receive_data(_rst(sid, ErrorCodes.NO_ERROR))  # nginx's, for a stream it answered
        assert _kinds(events) == ["StreamReset"]  # reported, and nothing else
    assert not client._peer_resets and not client.local_resets
    assert not client.rejects and not client.closed


def test_peer_cancel_of_an_open_stream_is_the_peers_not_a_refusal() -> None:
    client, server = _pair()
    sid = client.send_request(REQUEST)
    server.receive_data(client.data_to_send())
    server.events()
    server.reset_stream(sid, ErrorCodes.CANCEL)
    events = _to_client(client, server)
    assert _kinds(events) == ["StreamReset"]
    reset = events[0]
    assert isinstance(reset, StreamReset) and reset.remote and reset.error_code == ErrorCodes.CANCEL
    assert not client.rejects and not client._peer_resets


def test_our_resets_are_forgotten_once_written() -> None:
    client, server = _pair()
    for code in (ErrorCodes.CANCEL, ErrorCodes.NO_ERROR, ErrorCodes.INTERNAL_ERROR):
        sid = client.send_request(REQUEST)
        server.receive_data(client.data_to_send())
        assert _kinds(server.events()) == ["RequestReceived"]
        client.reset_stream(sid, code)
        server.receive_data(client.data_to_send())
        assert "StreamReset" in _kinds(server.events())
    closed = client.send_request(REQUEST, end_stream=True)  # answered and closed, then reset by us
    server.receive_data(client.data_to_send())
    server.events()
    server.send_response(closed, [(b":status", b"200")], end_stream=True)
    _to_client(client, server)
    client.reset_stream(closed, ErrorCodes.CANCEL)
    assert client.data_to_send() == b""  # nothing to reset: nghttp2 writes nothing
    assert not client.local_resets and not client._peer_resets
    assert not client.rejects and not client.closed

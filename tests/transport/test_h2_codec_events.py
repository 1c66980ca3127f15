"""What the ngh2 codecs hand their connection (``receive_into``): the calls a request and an answer make.

The server codec does not follow a DATA frame that ends the request with ``h2_end`` (``h2_data``'s end_stream
says it); the client codec does. Neither follows trailers with it (the sink's ``h2_trailers`` ends the
stream). The client codec reports a server's RST_STREAM as ``h2_reset``. ``receive_data`` (tests, tools)
still lists StreamEnded in both places. Real nghttp2 peers, bytes only.
"""

from __future__ import annotations

from typing import Any

import ngh2
from h2.errors import ErrorCodes

from plexus.codec.http2 import ConnectionTerminated, DataReceived, Headers, Http2Limits, StreamEnded
from plexus.transport.h2_codecs import NgClientCodec, NgServerCodec

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/p.S/M"), (b":authority", b"app")]


class Calls:
    """An EventSink that records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def h2_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        self.calls.append(("headers", stream_id, end_stream))

    def h2_data(self, stream_id: int, data: bytes, flow_controlled_length: int, end_stream: bool) -> None:
        self.calls.append(("data", stream_id, data, end_stream))

    def h2_end(self, stream_id: int) -> None:
        self.calls.append(("end", stream_id))

    def h2_trailers(self, stream_id: int, headers: Headers) -> None:
        self.calls.append(("trailers", stream_id))

    def h2_reset(self, stream_id: int, error_code: int, remote: bool, reason: str) -> None:
        self.calls.append(("reset", stream_id, error_code, remote))

    def h2_window(self, stream_id: int) -> None:
        self.calls.append(("window", stream_id))

    def h2_terminated(self, ev: ConnectionTerminated) -> None:
        self.calls.append(("terminated", ev.error_code))

    def h2_failed(self, stream_id: int, what: str) -> None:
        raise AssertionError(f"{what} of stream {stream_id} failed")


def _client_and_engine() -> tuple[Any, NgServerCodec]:
    """An nghttp2 client connection and our server codec, past both SETTINGS."""
    client = ngh2.Connection(ngh2.Role.CLIENT, ngh2.Configuration(auto_window_update=False))
    client.initiate_connection({})
    server = NgServerCodec(Http2Limits())
    server.receive_data(bytes(client.data_to_send()))
    client.receive_data(server.data_to_send())
    server.receive_data(bytes(client.data_to_send()))
    client.events()
    return client, server


def _client_and_engine_server() -> tuple[NgClientCodec, Any]:
    """Our client codec and an nghttp2 server connection, past both SETTINGS."""
    codec = NgClientCodec(Http2Limits())
    server = ngh2.Connection(ngh2.Role.SERVER, ngh2.Configuration(auto_window_update=False))
    server.initiate_connection({})
    server.receive_data(codec.data_to_send())
    codec.receive_data(bytes(server.data_to_send()))
    server.receive_data(codec.data_to_send())
    server.events()
    return codec, server


def test_a_request_ended_by_its_data_gets_no_h2_end_on_the_server_side() -> None:
    client, server = _client_and_engine()
    sid = client.send_request(REQUEST)
    client.send_data(sid, b"body", end_stream=True)
    sink = Calls()
    server.receive_into(bytes(client.data_to_send()), sink)
    assert sink.calls == [("headers", sid, False), ("data", sid, b"body", True)]


def test_receive_data_still_lists_the_end_after_such_data() -> None:
    client, server = _client_and_engine()
    sid = client.send_request(REQUEST)
    client.send_data(sid, b"body", end_stream=True)
    events = server.receive_data(bytes(client.data_to_send()))
    assert [type(ev).__name__ for ev in events] == [
        "RequestHeadersReceived",
        "DataReceived",
        "StreamEnded",
    ]
    data, end = events[1], events[2]
    assert isinstance(data, DataReceived) and data.end_stream and isinstance(end, StreamEnded)


def test_a_request_ended_by_its_headers_gets_h2_end() -> None:
    client, server = _client_and_engine()
    sid = client.send_request(REQUEST, end_stream=True)
    sink = Calls()
    server.receive_into(bytes(client.data_to_send()), sink)
    assert sink.calls == [("headers", sid, True), ("end", sid)]


def test_the_client_side_reports_the_end_after_data_not_after_trailers_and_a_servers_reset() -> None:
    codec, server = _client_and_engine_server()
    first = codec.send_request(REQUEST, end_stream=True)
    second = codec.send_request(REQUEST)
    third = codec.send_request(REQUEST, end_stream=True)
    server.receive_data(codec.data_to_send())
    server.events()
    server.send_response(first, [(b":status", b"200")])
    server.send_data(first, b"answer", end_stream=True)
    server.reset_stream(second, ErrorCodes.CANCEL)
    server.send_response(third, [(b":status", b"200")])
    server.send_data(third, b"grpc")
    server.send_trailers(third, [(b"grpc-status", b"0")])
    sink = Calls()
    codec.receive_into(bytes(server.data_to_send()), sink)
    assert [call for call in sink.calls if call[1] == first] == [
        ("headers", first, False),
        ("data", first, b"answer", True),
        ("end", first),
    ]
    assert [call for call in sink.calls if call[1] == second] == [("reset", second, ErrorCodes.CANCEL, True)]
    # trailers end the stream: the sink's h2_trailers says it, no h2_end follows
    assert [call for call in sink.calls if call[1] == third] == [
        ("headers", third, False),
        ("data", third, b"grpc", False),
        ("trailers", third),
    ]
    assert not codec.rejects and not codec.closed


def test_receive_data_lists_the_end_after_trailers() -> None:
    codec, server = _client_and_engine_server()
    sid = codec.send_request(REQUEST, end_stream=True)
    server.receive_data(codec.data_to_send())
    server.events()
    server.send_response(sid, [(b":status", b"200")])
    server.send_trailers(sid, [(b"grpc-status", b"0")])
    events = codec.receive_data(bytes(server.data_to_send()))
    assert [type(ev).__name__ for ev in events] == [
        "ResponseHeadersReceived",
        "TrailersReceived",
        "StreamEnded",
    ]
    assert not codec.rejects and not codec.closed

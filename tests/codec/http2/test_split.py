"""The same bytes, whole or split at every offset, give the same events (both directions)."""

from __future__ import annotations

from plexus.codec.http2 import Event, Http2ClientCodec, Http2ServerCodec

from .helpers import request


def _client_bytes() -> bytes:
    client = Http2ClientCodec()
    a = client.send_request(request(b"/a"), end_stream=True)
    b = client.send_request(request(b"/b", b"POST"))
    client.send_data(b, b"0123456789" * 5)
    client.send_trailers(b, [(b"x-t", b"1")])
    assert (a, b) == (1, 3)
    return client.data_to_send()


def _server_bytes() -> bytes:
    """Everything a server says (SETTINGS, ACK, a response with trailers) to a client asking for /a."""
    client, server = Http2ClientCodec(), Http2ServerCodec()
    sid = client.send_request(request(b"/a"), end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(sid, [(b":status", b"200")])
    server.send_data(sid, b"body" * 10)
    server.send_trailers(sid, [(b"grpc-status", b"0")])
    return server.data_to_send()


def _feed(codec: Http2ServerCodec | Http2ClientCodec, pieces: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events += codec.receive_data(piece)
    return events


def test_server_input_split_at_every_offset() -> None:
    data = _client_bytes()
    whole = _feed(Http2ServerCodec(), [data])
    assert len(whole) >= 6
    for cut in range(1, len(data)):
        assert _feed(Http2ServerCodec(), [data[:cut], data[cut:]]) == whole, cut
    assert _feed(Http2ServerCodec(), [data[i : i + 1] for i in range(len(data))]) == whole


def test_client_input_split_at_every_offset() -> None:
    down = _server_bytes()

    def fresh() -> Http2ClientCodec:
        client = Http2ClientCodec()
        client.send_request(request(b"/a"), end_stream=True)  # so that stream 1 exists on this client
        client.data_to_send()
        return client

    whole = _feed(fresh(), [down])
    assert len(whole) >= 4
    for cut in range(1, len(down)):
        assert _feed(fresh(), [down[:cut], down[cut:]]) == whole, cut

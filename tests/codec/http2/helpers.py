"""In-memory plumbing: a client codec and a server codec wired back to back."""

from __future__ import annotations

from plexus.codec.http2 import Event, Http2ClientCodec, Http2ServerCodec

MAX_ROUNDS = 10_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pump(client: Http2ClientCodec, server: Http2ServerCodec) -> tuple[list[Event], list[Event]]:
    """Move bytes both ways until neither side has anything to say; returns (client events, server events)."""
    client_events: list[Event] = []
    server_events: list[Event] = []
    for _ in range(MAX_ROUNDS):
        up = client.data_to_send()
        if up:
            server_events += server.receive_data(up)
        down = server.data_to_send()
        if down:
            client_events += client.receive_data(down)
        if not up and not down:
            return client_events, server_events
    raise AssertionError("codecs kept talking")


def request(path: bytes = b"/", method: bytes = b"GET") -> list[tuple[bytes, bytes]]:
    return [(b":method", method), (b":scheme", b"http"), (b":authority", b"orders"), (b":path", path)]

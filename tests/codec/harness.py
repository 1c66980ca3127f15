"""Feed bytes to the Plexus request decoder or to h11 and summarise the outcome comparably."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import h11

from plexus.codec.http1 import Http1Limits, RequestDecoder, RequestHead
from plexus.core.errors import ProtocolError


@dataclass
class Outcome:
    requests: list[tuple[bytes, bytes, bytes]] = field(
        default_factory=list
    )  # method, target, body (complete)
    started: int = 0  # heads delivered
    status: int | None = None  # refusal status, None when everything fed was accepted
    upgraded: bool = False

    @property
    def accepted(self) -> bool:
        return self.status is None


class _Sink:
    def __init__(self, outcome: Outcome) -> None:
        self.o = outcome
        self.head: RequestHead | None = None
        self.body = b""

    def on_request_head(self, head: RequestHead) -> None:
        self.o.started += 1
        self.head, self.body = head, b""

    def on_request_body(self, data: bytes) -> None:
        self.body += data

    def on_request_end(self) -> None:
        assert self.head is not None
        self.o.requests.append((self.head.method, self.head.target, self.body))

    def on_upgrade(self, tail: bytes) -> None:
        self.o.upgraded = True

    def on_request_error(self, error: ProtocolError) -> None:
        self.o.status = error.status_hint


def plexus_parse(pieces: Sequence[bytes], limits: Http1Limits | None = None) -> Outcome:
    outcome = Outcome()
    decoder = RequestDecoder(_Sink(outcome), limits)
    for piece in pieces:
        decoder.feed(piece)
    return outcome


def h11_parse(data: bytes) -> Outcome:
    """h11's verdict on the same bytes (max header size set to ours, 60 KiB)."""
    outcome = Outcome()
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=60 * 1024)
    conn.receive_data(data)
    method = target = body = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if conn.their_state is h11.DONE and conn.our_state is h11.SEND_RESPONSE:
                    conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                    conn.send(h11.EndOfMessage())
                    if conn.our_state is h11.MUST_CLOSE:
                        return outcome
                    conn.start_next_cycle()
                    continue
                return outcome
            if isinstance(event, h11.Request):
                outcome.started += 1
                method, target, body = event.method, event.target, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                outcome.requests.append((method, target, body))
    except h11.RemoteProtocolError as exc:
        outcome.status = exc.error_status_hint
    return outcome

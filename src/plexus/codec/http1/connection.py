"""An h11-shaped, event-pulling face on ``RequestDecoder``: ``receive_data(bytes)`` then ``next_event()``.

The proxy itself uses the callback sink directly (no event objects per request); this face is for tests,
the differential check against h11, and code that prefers pulling events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from plexus.codec.http1.heads import RequestHead
from plexus.codec.http1.limits import Http1Limits
from plexus.codec.http1.request_decoder import RequestDecoder
from plexus.core.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class Request:
    head: RequestHead


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    pass


@dataclass(frozen=True, slots=True)
class Upgrade:
    tail: bytes  # bytes after the head, which belong to the new protocol


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
Event = Request | Data | EndOfMessage | Upgrade


class Http1ServerCodec:
    """Server side of one connection. ``next_event`` raises the ``ProtocolError`` once framing breaks."""

    def __init__(self, limits: Http1Limits | None = None) -> None:
        self._events: deque[Event] = deque()
        self._error: ProtocolError | None = None
        self._decoder = RequestDecoder(self, limits)

    def receive_data(self, data: bytes) -> None:
        self._decoder.feed(data)

    def next_event(self) -> Event | _NeedData:
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        return NEED_DATA

    # RequestSink
    def on_request_head(self, head: RequestHead) -> None:
        self._events.append(Request(head))

    def on_request_body(self, data: bytes) -> None:
        self._events.append(Data(data))

    def on_request_end(self) -> None:
        self._events.append(EndOfMessage())

    def on_upgrade(self, tail: bytes) -> None:
        self._events.append(Upgrade(tail))

    def on_request_error(self, error: ProtocolError) -> None:
        self._error = error

"""Events the HTTP/2 codec reports: past-tense facts about one connection, in Plexus's own vocabulary.

h2's event classes stay behind the codec; the proxy sees only these frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class RequestHeadersReceived:
    """A client opened a stream (server side). ``headers`` includes the pseudo-headers, in wire order."""

    stream_id: int
    headers: Headers
    end_stream: bool


@dataclass(frozen=True, slots=True)
class ResponseHeadersReceived:
    """A server answered (client side); 1xx informational heads also arrive as this event."""

    stream_id: int
    headers: Headers
    end_stream: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Body bytes. Call ``acknowledge(stream_id, flow_controlled_length)`` once they are consumed."""

    stream_id: int
    data: bytes
    flow_controlled_length: int
    end_stream: bool


@dataclass(frozen=True, slots=True)
class TrailersReceived:
    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream (END_STREAM seen); reported once, after the last data or trailers."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """A stream ended abnormally. ``remote`` False: this codec refused or reset it (``reason`` says why)."""

    stream_id: int
    error_code: int
    remote: bool = True
    reason: str = ""


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """The peer opened its flow-control window; stream_id 0 means the whole connection. Retry held sends."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The connection is over: the peer sent GOAWAY (``remote``), or this codec closed it (see ``reason``).

    Streams above ``last_stream_id`` were not processed by whoever sent the GOAWAY and may be retried.
    """

    error_code: int
    last_stream_id: int
    remote: bool = True
    reason: str = ""


Event = (
    RequestHeadersReceived
    | ResponseHeadersReceived
    | DataReceived
    | TrailersReceived
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | ConnectionTerminated
)

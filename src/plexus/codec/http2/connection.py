"""HTTP/2 connection codec: h2 (sans-IO) behind Plexus's own events, with the limits a proxy needs.

Theory of operation
-------------------
``receive_data(bytes)`` feeds bytes to ``h2.connection.H2Connection`` and translates its events into the
frozen events of :mod:`plexus.codec.http2.events`; commands (``send_headers``, ``send_data``, ...) queue
frames, and ``data_to_send()`` hands the queued bytes to whoever owns the socket. No I/O, no timers: the
clock is injected.

Every frame (RFC 9113 §4.1) starts with a 9-byte header::

    +-----------------------------------------------+
    |                 Length (24)                   |
    +---------------+---------------+---------------+
    |   Type (8)    |   Flags (8)   |
    +-+-------------+---------------+-------------------------------+
    |R|                 Stream Identifier (31)                      |
    +=+=============================================================+
    |                   Frame Payload (0...)                      ...
    +---------------------------------------------------------------+

h2 parses frames and HPACK; this module adds what h2 lacks (verified against h2 4.4):

- Streams beyond SETTINGS_MAX_CONCURRENT_STREAMS: h2 raises TooManyStreamsError, a *connection* error.
  RFC 9113 §5.1.2 allows refusing just the stream, so we answer RST_STREAM REFUSED_STREAM and keep
  the connection.
- Rapid reset (CVE-2023-44487), SETTINGS and PING floods: h2 answers each one; we count them in a sliding
  window and send GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §5.4.1) past the limit.
- Oversized frame lengths: h2 buffers a whole frame (up to 16 MiB) before checking its length against
  SETTINGS_MAX_FRAME_SIZE. _FrameLengthGuard reads only the 24-bit length of each frame header as bytes
  arrive and refuses the frame from its 9-byte header (RFC 9113 §4.2, FRAME_SIZE_ERROR).
- A bounded outbound buffer: ACKs and RSTs the peer provokes but does not read close the connection.
- h2 already refuses: header blocks over 64
  CONTINUATION frames, and HPACK blocks that decode past max_header_list_size (hpack counts while inflating,
  so a bomb is stopped before it is expanded). We map those to reason codes and re-check decoded sizes.

Peer errors never raise out of ``receive_data``: the stream or connection is closed, ``rejects[reason]``
counts it, a StreamReset / ConnectionTerminated event with ``remote=False`` and the reason says so, and
``error`` keeps the ProtocolError for the connection-level case.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import h2.events as h2e
import h2.exceptions as h2x
from h2.config import H2Configuration
from h2.connection import H2Connection, _decode_headers
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from plexus.codec.http2 import limits as lim
from plexus.codec.http2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    Headers,
    RequestHeadersReceived,
    ResponseHeadersReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from plexus.codec.http2.limits import Http2Limits
from plexus.core.errors import ProtocolError

# RFC 9113 §3.4: the client connection preface, sent before the client's SETTINGS.
CONNECTION_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# RFC 9113 §6.5.2: a field counts as name + value + 32 octets against the header list size (hpack agrees).
_FIELD_OVERHEAD = 32
_FRAME_HEADER_BYTES = 9  # RFC 9113 §4.1


class _Refused(h2e.Event):
    """A stream we refused (over max_concurrent_streams); h2 never saw it open."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class _FrameLengthGuard:
    """Follows frame boundaries in the inbound bytes and reports the first frame longer than allowed.

    Reads nothing but the 24-bit length field (RFC 9113 §4.1); h2 still parses every frame.
    """

    __slots__ = ("_header", "_max", "_skip")

    def __init__(self, max_frame_size: int, preface_bytes: int) -> None:
        self._max = max_frame_size
        self._skip = preface_bytes  # bytes still to pass before the next frame header
        self._header = bytearray()

    def oversized(self, data: bytes) -> int | None:
        """Feed bytes; the announced length of an oversized frame, or None."""
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            need = _FRAME_HEADER_BYTES - len(self._header)
            self._header += data[pos : pos + need]
            pos += need
            if len(self._header) < _FRAME_HEADER_BYTES:
                break
            length = int.from_bytes(self._header[:3], "big")
            self._header.clear()
            if length > self._max:
                return length
            self._skip = length
        return None


class _Calm(h2x.ProtocolError):
    """A peer over one of our rate limits: h2 answers it with GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §5.4.1)."""

    error_code = ErrorCodes.ENHANCE_YOUR_CALM

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _GuardedConnection(H2Connection):
    """H2Connection plus the limits h2 lacks, checked frame by frame.

    Checking inside frame processing (not after ``receive_data`` returns) stops a flood at the offending
    frame: the rest of the read is not processed and provokes no more RST_STREAM or ACK frames.
    """

    def __init__(
        self, config: H2Configuration, limits: Http2Limits, clock: Callable[[], float], rejects: Counter[str]
    ) -> None:
        super().__init__(config)
        self._rejects = rejects
        self._resets = lim.RateWindow(limits.max_resets_per_window, limits.window_seconds, clock)
        self._settings_seen = lim.RateWindow(limits.max_settings_per_window, limits.window_seconds, clock)
        self._pings = lim.RateWindow(limits.max_pings_per_window, limits.window_seconds, clock)

    def _receive_frame(self, frame: Frame) -> list[h2e.Event]:
        events = super()._receive_frame(frame)
        for ev in events:
            if isinstance(ev, _Refused) or (isinstance(ev, h2e.StreamReset) and ev.remote_reset):
                # Refused streams count too: opening past the limit again and again is the same attack.
                if self._resets.hit():
                    raise _Calm(lim.RAPID_RESET, "streams reset faster than the limit")
            elif isinstance(ev, h2e.RemoteSettingsChanged):
                if self._settings_seen.hit():
                    raise _Calm(lim.SETTINGS_FLOOD, "too many SETTINGS frames")
            elif isinstance(ev, h2e.PingReceived) and self._pings.hit():
                raise _Calm(lim.PING_FLOOD, "too many PING frames")
        return events

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[h2e.Event]]:
        if frame.error_code != ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        # A graceful GOAWAY (RFC 9113 §6.8) lets streams up to last_stream_id complete, but h2 would close the
        # connection at once (and drop queued bytes), losing their responses. Report it and stay open; the
        # codec opens no new stream from now on.
        event = h2e.ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[h2e.Event]]:
        sid = frame.stream_id
        if (
            not self.config.client_side
            and sid not in self.streams
            and sid % 2 == 1
            and sid > self.highest_inbound_stream_id
            and self.open_inbound_streams >= self.local_settings.max_concurrent_streams
        ):
            # The block must still be decoded: the HPACK table is connection state (RFC 9113 §4.3).
            # An oversized block raises DenialOfServiceError here exactly as it would for an accepted stream.
            _decode_headers(self.decoder, frame.data)
            self.highest_inbound_stream_id = sid
            self._rejects[lim.REFUSED_STREAM] += 1
            rst = RstStreamFrame(sid)
            rst.error_code = ErrorCodes.REFUSED_STREAM
            return [rst], [_Refused(sid)]
        return super()._receive_headers_frame(frame)


def _headers(raw: Iterable[Any]) -> Headers:
    return [(bytes(name), bytes(value)) for name, value in raw]


def _reason_for(exc: h2x.ProtocolError) -> str:
    if isinstance(exc, _Calm):
        return exc.reason
    if isinstance(exc, h2x.DenialOfServiceError):
        return lim.HPACK_BOMB
    if isinstance(exc, h2x.FrameTooLargeError):
        return lim.FRAME_TOO_LARGE
    if isinstance(exc, h2x.FlowControlError):
        return lim.FLOW_CONTROL
    if "continuation" in str(exc).lower():
        return lim.CONTINUATION_FLOOD
    return lim.PROTOCOL


class _Http2Codec:
    """What client and server share; use Http2ServerCodec or Http2ClientCodec."""

    def __init__(self, client_side: bool, limits: Http2Limits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.rejects: Counter[str] = Counter()
        self.error: ProtocolError | None = None
        self.closed = False  # this codec failed the connection: input is ignored from now on
        self.goaway_received = False  # the peer sent GOAWAY: open no new streams
        self._goaway_last: int | None = None  # our graceful GOAWAY's last_stream_id
        self._out = bytearray()
        config = H2Configuration(client_side=client_side, header_encoding=None)
        self._conn = _GuardedConnection(config, limits, clock, self.rejects)
        self._conn.local_settings.update(
            {
                SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
                SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
                SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
            }
        )
        # Enforce from the first byte, not only once the peer ACKs our SETTINGS: a peer racing the ACK
        # gets no more than we advertise (h2 only applies local settings on ACK).
        self._conn.local_settings.acknowledge()
        self._conn.decoder.max_header_list_size = limits.max_header_list_bytes
        self._conn.max_inbound_frame_size = limits.max_frame_size
        self._guard = _FrameLengthGuard(limits.max_frame_size, 0 if client_side else len(CONNECTION_PREFACE))
        self._conn.initiate_connection()
        self._pull()

    # --- input ---------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; returns what they meant. After close, input is ignored."""
        if self.closed:
            return []
        length = self._guard.oversized(data)
        if length is not None:
            message = (
                f"frame of {length} bytes announced, SETTINGS_MAX_FRAME_SIZE is {self.limits.max_frame_size}"
            )
            return [self._fail(lim.FRAME_TOO_LARGE, message, ErrorCodes.FRAME_SIZE_ERROR)]
        try:
            raw = self._conn.receive_data(data)
        except h2x.ProtocolError as exc:
            # h2 has already queued GOAWAY with the matching error code; events of this read are dropped,
            # so nothing that arrived with the offence is ever forwarded.
            return [self._fail(_reason_for(exc), str(exc), int(exc.error_code), goaway=False)]
        out: list[Event] = []
        for ev in raw:
            self._translate(ev, out)
            if self.closed:
                break  # nothing after the offence is reported: it is never forwarded
        if not self.closed:
            self._pull()
            if len(self._out) > self.limits.max_outbound_bytes:
                out.append(
                    self._fail(
                        lim.OUTBOUND_OVERFLOW,
                        f"{len(self._out)} bytes queued for a peer that does not read",
                        ErrorCodes.ENHANCE_YOUR_CALM,
                    )
                )
        return out

    def _translate(self, ev: h2e.Event, out: list[Event]) -> None:
        if isinstance(ev, h2e.RequestReceived):
            if self._goaway_last is not None and (ev.stream_id or 0) > self._goaway_last:
                # Opened after our GOAWAY: refused unseen, the peer may retry it elsewhere (RFC 9113 §6.8).
                self._conn.reset_stream(ev.stream_id or 0, ErrorCodes.REFUSED_STREAM)
                return
            headers = _headers(ev.headers or ())
            if self._over_header_limit(ev.stream_id, headers, out):
                return
            out.append(RequestHeadersReceived(ev.stream_id or 0, headers, ev.stream_ended is not None))
        elif isinstance(ev, h2e.ResponseReceived | h2e.InformationalResponseReceived):
            headers = _headers(ev.headers or ())
            if self._over_header_limit(ev.stream_id, headers, out):
                return
            ended = isinstance(ev, h2e.ResponseReceived) and ev.stream_ended is not None
            out.append(ResponseHeadersReceived(ev.stream_id or 0, headers, ended))
        elif isinstance(ev, h2e.DataReceived):
            out.append(
                DataReceived(
                    ev.stream_id or 0,
                    bytes(ev.data or b""),
                    ev.flow_controlled_length or 0,
                    ev.stream_ended is not None,
                )
            )
        elif isinstance(ev, h2e.TrailersReceived):
            headers = _headers(ev.headers or ())
            if self._over_header_limit(ev.stream_id, headers, out):
                return
            out.append(TrailersReceived(ev.stream_id or 0, headers))
        elif isinstance(ev, h2e.StreamEnded):
            out.append(StreamEnded(ev.stream_id or 0))
        elif isinstance(ev, h2e.StreamReset):
            sid, code = ev.stream_id or 0, int(ev.error_code or 0)
            if ev.remote_reset:
                out.append(StreamReset(sid, code))
            else:
                self.rejects[lim.STREAM_ERROR] += 1
                out.append(StreamReset(sid, code, remote=False, reason=lim.STREAM_ERROR))
        elif isinstance(ev, _Refused):
            out.append(
                StreamReset(ev.stream_id, ErrorCodes.REFUSED_STREAM, remote=False, reason=lim.REFUSED_STREAM)
            )
        elif isinstance(ev, h2e.WindowUpdated):
            out.append(WindowUpdated(ev.stream_id or 0))
        elif isinstance(ev, h2e.ConnectionTerminated):
            # Streams up to last_stream_id may still complete (RFC 9113 §6.8): keep reading.
            self.goaway_received = True
            out.append(ConnectionTerminated(int(ev.error_code or 0), ev.last_stream_id or 0))
        # RemoteSettingsChanged, PingReceived (rate-checked above), SettingsAcknowledged, PingAckReceived,
        # PriorityUpdated, UnknownFrameReceived: nothing to report.

    def _over_header_limit(self, stream_id: int | None, headers: Headers, out: list[Event]) -> bool:
        # hpack already enforces this while decoding; re-checked here so the limit holds whatever hpack does.
        size = sum(len(n) + len(v) + _FIELD_OVERHEAD for n, v in headers)
        if size <= self.limits.max_header_list_bytes:
            return False
        sid = stream_id or 0
        self.rejects[lim.HPACK_BOMB] += 1
        self._conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        out.append(StreamReset(sid, ErrorCodes.REFUSED_STREAM, remote=False, reason=lim.HPACK_BOMB))
        return True

    def _fail(self, reason: str, message: str, error_code: int, goaway: bool = True) -> ConnectionTerminated:
        self.rejects[reason] += 1
        self.error = ProtocolError(reason, f"HTTP/2 connection closed: {message}")
        self.closed = True
        last = self._conn.highest_inbound_stream_id
        if goaway:
            self._conn.close_connection(error_code, additional_data=reason.encode(), last_stream_id=last)
        self._pull()
        return ConnectionTerminated(error_code, last, remote=False, reason=reason)

    # --- output --------------------------------------------------------------------------------------------

    def _pull(self) -> None:
        # Never drops bytes: the limit is enforced by closing the connection in receive_data, since
        # losing frames would corrupt the HTTP/2 (and HPACK) state the peer holds.
        self._out += self._conn.data_to_send()

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now (and forget)."""
        self._pull()
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def outbound_pending(self) -> int:
        return len(self._out)

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        self._conn.send_headers(stream_id, headers, end_stream=end_stream)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        self._conn.send_headers(stream_id, headers, end_stream=True)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """Send as much of ``data`` as the peer's windows allow; returns how many bytes were taken.

        When fewer than ``len(data)`` were taken, END_STREAM is not sent: call again with the rest after a
        WindowUpdated event.
        """
        conn = self._conn
        window = conn.local_flow_control_window(stream_id)
        take = min(len(data), window)
        frame = conn.max_outbound_frame_size
        pos = 0
        while pos < take:
            piece = data[pos : min(pos + frame, take)]
            pos += len(piece)
            conn.send_data(stream_id, piece, end_stream=end_stream and pos == len(data))
        if end_stream and not data:
            conn.end_stream(stream_id)
        return take

    def send_window(self, stream_id: int) -> int:
        """Bytes ``send_data`` could send on the stream now."""
        return self._conn.local_flow_control_window(stream_id)

    def end_stream(self, stream_id: int) -> None:
        self._conn.end_stream(stream_id)

    def acknowledge(self, stream_id: int, n: int) -> None:
        """The application consumed ``n`` flow-controlled bytes: let the peer send more."""
        if n <= 0 or self.closed:
            return
        # A stream already gone raises StreamClosedError; h2 has credited the connection window by then.
        with contextlib.suppress(h2x.StreamClosedError):
            self._conn.acknowledge_received_data(n, stream_id)

    def reset_stream(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        self._conn.reset_stream(stream_id, error_code)

    def goaway(
        self, error_code: int = ErrorCodes.NO_ERROR, last_stream_id: int | None = None, debug: bytes = b""
    ) -> None:
        """Send GOAWAY (RFC 9113 §6.8); streams above ``last_stream_id`` are left unprocessed.

        With NO_ERROR the shutdown is graceful: streams up to ``last_stream_id`` (default: the highest the
        peer opened) may still finish both ways, and streams the peer opens later are refused unreported.
        """
        conn = self._conn
        state = conn.state_machine.state
        last = conn.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        conn.close_connection(error_code, additional_data=debug or None, last_stream_id=last)
        if error_code == ErrorCodes.NO_ERROR:
            conn.state_machine.state = state  # h2 would refuse every later frame, even on finishing streams
            self._goaway_last = last
        else:
            self.closed = True

    @property
    def open_streams(self) -> int:
        """Streams not yet closed both ways; after a graceful GOAWAY, close the socket when this reaches 0."""
        return self._conn.open_inbound_streams + self._conn.open_outbound_streams


class Http2ServerCodec(_Http2Codec):
    """The server end of one connection (downstream side of the proxy). Expects the client preface first."""

    def __init__(
        self, limits: Http2Limits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(False, limits or Http2Limits(), clock)


class Http2ClientCodec(_Http2Codec):
    """The client end of one connection (upstream side of the proxy): h2c prior knowledge or ALPN ``h2``."""

    def __init__(
        self, limits: Http2Limits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(True, limits or Http2Limits(), clock)

    def can_open_stream(self) -> bool:
        """False while the server's SETTINGS_MAX_CONCURRENT_STREAMS are all in use: queue the request."""
        conn = self._conn
        return (
            not self.closed
            and not self.goaway_received
            and conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams
        )

    def send_request(self, headers: Headers, end_stream: bool = False) -> int:
        """Open a stream with ``headers`` (pseudo-headers first); returns its id."""
        if self.goaway_received or self.closed:
            raise ProtocolError(
                lim.GOAWAY_RECEIVED, "the server sent GOAWAY: open the stream on a new connection"
            )
        stream_id = self._conn.get_next_available_stream_id()
        self._conn.send_headers(stream_id, headers, end_stream=end_stream)
        return stream_id

"""HTTP/2 connection codec on libnghttp2 (the ``ngh2`` binding): the same seam as ``connection.py``.

Theory of operation
-------------------
``Ngh2ServerCodec`` / ``Ngh2ClientCodec`` have the public surface and the events of ``Http2ServerCodec`` /
``Http2ClientCodec``. ``receive_data`` hands the whole read to libnghttp2, which parses every frame, HPACK,
flow control and most attack limits in C; Python then sees one list of ngh2 events per read and translates
each with one ``type(ev) is X`` test and one dataclass construction (the hot path: bench/profiles/
ngh2-NOTES.md). The encoded output is pulled after each read so the outbound bound can be checked.

Limits, by who enforces them (see limits.py for the reason codes):

- libnghttp2 (``ngh2.Configuration`` and our SETTINGS): max concurrent streams (refuses the extra stream
  with RST_STREAM REFUSED_STREAM, connection kept), decoded header list size (HPACK bomb: stopped while
  inflating), CONTINUATION frames per block (64, as h2), frame length over
  SETTINGS_MAX_FRAME_SIZE (GOAWAY FRAME_SIZE_ERROR from the 9-byte header), queued ACK floods, and a
  token-bucket reset rate set to twice ours as a backstop.
- This wrapper, with the injected clock and the same sliding windows as the h2 engine: resets by the peer
  plus refused streams (rapid reset), SETTINGS and PING rates (GOAWAY ENHANCE_YOUR_CALM), and the outbound
  buffer bound. nghttp2 reports no event for a stream it refuses, so refusals are counted from the
  RST_STREAM frames it writes, scanned only in a read that may have gone over the stream limit.

Differences from the h2 engine (all in the reason/GOAWAY details, none in the events of a normal exchange):
a whole read is processed by C before a rate limit trips, so frames after the offence in the same read may
have been answered (their events are still dropped); DATA on a half-closed (remote) stream fails the
connection (GOAWAY STREAM_CLOSED), where h2 resets the stream. A CONTINUATION flood or an HPACK bomb makes
libnghttp2 raise and become unusable, so that GOAWAY (ENHANCE_YOUR_CALM, as h2) is written by hand.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Final

import h2.exceptions as h2x
import ngh2
import ngh2.events as ne
from h2.errors import ErrorCodes

from plexus.codec.http2 import limits as lim
from plexus.codec.http2.connection import CONNECTION_PREFACE
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

__all__ = ["CONNECTION_PREFACE", "Ngh2ClientCodec", "Ngh2ServerCodec"]

# h2 bounds a header block to 64 CONTINUATION frames; the same bound keeps the engines interchangeable.
MAX_CONTINUATIONS: Final = 64
# RFC 9113 §6.5.2 asks for at least 100; until the server's SETTINGS arrive a client assumes this many.
ASSUMED_MAX_STREAMS: Final = 100
BACKSTOP: Final = 10  # libnghttp2's flood limits sit this many times above ours (see _Ngh2Codec.__init__)
# RFC 9113 §6.8: a GOAWAY frame header, length 8 (last stream id, error code), type 0x7, stream 0.
_GOAWAY_HEAD: Final = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"
_RST_STREAM: Final = 0x3  # RFC 9113 §6.4 frame type
_FRAME_HEADER_BYTES: Final = 9  # RFC 9113 §4.1
_INITIAL_WINDOW_SIZE: Final = int(ngh2.Setting.INITIAL_WINDOW_SIZE)
_MAX_CONCURRENT_STREAMS: Final = int(ngh2.Setting.MAX_CONCURRENT_STREAMS)

# ngh2's event classes, bound once: the translation loop compares types by identity.
_NgData = ne.DataReceived
_NgRequest = ne.RequestReceived
_NgResponse = ne.ResponseReceived
_NgInformational = ne.InformationalResponseReceived
_NgTrailers = ne.TrailersReceived
_NgClosed = ne.StreamClosed
_NgReset = ne.StreamReset
_NgWindow = ne.WindowUpdated
_NgSettings = ne.SettingsReceived
_NgPing = ne.PingReceived
_NgPingAck = ne.PingAcknowledged
_NgGoAway = ne.GoAwayReceived
_NgConnClosed = ne.ConnectionClosed


class _RateWindow:
    """Sliding-window counter (as the h2 engine's); memory bounded by ``limit + 1`` timestamps."""

    __slots__ = ("_clock", "_hits", "_limit", "_window")

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._hits: deque[float] = deque(maxlen=limit + 1)

    def hit(self) -> bool:
        """Record one occurrence; True when the window now holds more than the limit."""
        now = self._clock()
        hits = self._hits
        hits.append(now)
        while hits and hits[0] <= now - self._window:
            hits.popleft()
        return len(hits) > self._limit


def _reason_for_code(code: int, debug: bytes) -> str:
    """Reason of a connection libnghttp2 failed itself, from its GOAWAY code and debug text."""
    if code == ErrorCodes.FRAME_SIZE_ERROR:
        return lim.FRAME_TOO_LARGE
    if code == ErrorCodes.COMPRESSION_ERROR:
        return lim.HPACK_BOMB  # nghttp2 stops inflating at max_inbound_header_list_size with this code
    if code == ErrorCodes.FLOW_CONTROL_ERROR:
        return lim.FLOW_CONTROL
    if code == ErrorCodes.INTERNAL_ERROR:
        return lim.RAPID_RESET  # nghttp2 answers a peer over stream_reset_rate_limit with INTERNAL_ERROR
    if code == ErrorCodes.ENHANCE_YOUR_CALM:
        text = debug.lower()
        if b"settings" in text:
            return lim.SETTINGS_FLOOD
        if b"ping" in text or b"ack" in text:
            return lim.PING_FLOOD
        return lim.RAPID_RESET  # nghttp2's reset and glitch buckets
    return lim.PROTOCOL


def _reason_for_exception(exc: Exception) -> tuple[str, int]:
    text = str(exc).lower()
    if "continuation" in text:
        return lim.CONTINUATION_FLOOD, ErrorCodes.ENHANCE_YOUR_CALM
    if isinstance(exc, ngh2.DenialOfServiceError):
        if "settings" in text:
            return lim.SETTINGS_FLOOD, ErrorCodes.ENHANCE_YOUR_CALM
        if "ping" in text or "ack" in text:
            return lim.PING_FLOOD, ErrorCodes.ENHANCE_YOUR_CALM
        if "header" in text:
            return lim.HPACK_BOMB, ErrorCodes.ENHANCE_YOUR_CALM
        return lim.RAPID_RESET, ErrorCodes.ENHANCE_YOUR_CALM
    return lim.PROTOCOL, ErrorCodes.PROTOCOL_ERROR


class _Ngh2Codec:
    """What client and server share; use Ngh2ServerCodec or Ngh2ClientCodec."""

    def __init__(self, client_side: bool, limits: Http2Limits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.rejects: Counter[str] = Counter()
        self.error: ProtocolError | None = None
        self.closed = False  # this codec failed the connection: input is ignored from now on
        self.goaway_received = False  # the peer sent GOAWAY: open no new streams
        # For the proxy's upstream pool (as transport/h2_codecs.py's subclasses of the h2 engine).
        self.pings_acked = 0
        self.settings_received = False
        self.must_close = False  # libnghttp2 failed the connection while writing: write, then close
        self.close_reason = ""
        self._client = client_side
        self._out = bytearray()
        self._pending: list[Event] = []  # failures found while writing, reported by the next receive_data
        self._open: set[int] = set()  # streams not closed both ways
        self._unsent: set[int] = set()  # requests whose HEADERS nghttp2 has not written (no stream state yet)
        # The peer's SETTINGS as last seen (ngh2 builds a dict per remote_settings read: too slow per call).
        self._peer_initial_window = 65_535  # RFC 9113 §6.5.2 initial values
        self._peer_max_streams = ASSUMED_MAX_STREAMS  # until its SETTINGS arrive (RFC 9113 §6.5.2: >= 100)
        self._peer_resets: set[int] = set()  # reported StreamReset; its StreamClosed is not reported again
        self._local_resets: set[int] = set()  # reset_stream() calls: their RST_STREAM is not a refusal
        self._last_in = 0  # highest stream id the peer opened (GOAWAY's last_stream_id)
        self._resets = _RateWindow(limits.max_resets_per_window, limits.window_seconds, clock)
        self._settings = _RateWindow(limits.max_settings_per_window, limits.window_seconds, clock)
        self._pings = _RateWindow(limits.max_pings_per_window, limits.window_seconds, clock)
        rate = max(1, int(limits.max_resets_per_window / max(limits.window_seconds, 1e-3)))
        config = ngh2.Configuration(
            auto_window_update=False,  # acknowledge() credits what the proxy has forwarded
            peer_max_concurrent_streams=ASSUMED_MAX_STREAMS,
            # libnghttp2's own buckets run on the wall clock and see a whole read at once; ours (injected
            # clock, reason codes) must trip first, so these are backstops BACKSTOP times looser.
            max_outbound_ack=BACKSTOP * (limits.max_settings_per_window + limits.max_pings_per_window),
            stream_reset_rate_limit=(BACKSTOP * limits.max_resets_per_window, BACKSTOP * rate),
            max_continuations=MAX_CONTINUATIONS,
            max_inbound_header_list_size=limits.max_header_list_bytes,
        )
        conn = ngh2.Connection(ngh2.Role.CLIENT if client_side else ngh2.Role.SERVER, config)
        self._conn: Any = conn  # ngh2 ships stubs; Any keeps the hot path free of casts
        # Enforced from the first byte: nghttp2 applies the lower of pending and acknowledged local settings.
        conn.initiate_connection(
            {
                ngh2.Setting.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                ngh2.Setting.MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
                ngh2.Setting.MAX_FRAME_SIZE: limits.max_frame_size,
                ngh2.Setting.INITIAL_WINDOW_SIZE: limits.initial_window_size,
            }
        )
        self._pull()

    # --- input ---------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; returns what they meant. After close, input is ignored."""
        if self.closed:
            late, self._pending = self._pending, []
            return late  # the failure libnghttp2 reported while we wrote, once
        conn = self._conn
        try:
            conn.receive_data(data)
        except ngh2.NGH2Error as exc:
            # libnghttp2 is unusable after a fatal error (e.g. a CONTINUATION flood): GOAWAY by hand.
            reason, code = _reason_for_exception(exc)
            self._out += _GOAWAY_HEAD + struct.pack(">II", self._last_in, code)
            return [self._fail(reason, str(exc), code, goaway=False)]
        out: list[Event] = []
        if self._pending:  # stream closes seen while writing come first, as they happened first
            out, self._pending = self._pending, out
        opened = self._translate(conn.events(), out)
        if self.closed:
            return out
        self._pull()
        if opened:
            self._count_refusals(out)
        if self._pending:
            out += self._pending
            self._pending = []
        elif len(self._out) > self.limits.max_outbound_bytes and not self.closed:
            out.append(
                self._fail(
                    lim.OUTBOUND_OVERFLOW,
                    f"{len(self._out)} bytes queued for a peer that does not read",
                    ErrorCodes.ENHANCE_YOUR_CALM,
                )
            )
        return out

    def _translate(self, raw: list[Any], out: list[Event]) -> bool:
        """Append Plexus events for ngh2's; True when the server may have gone over its stream limit."""
        append = out.append
        opened = self._open
        at_limit = False
        for ev in raw:
            t = type(ev)
            if t is _NgData:
                data = ev.data
                append(DataReceived(ev.stream_id, data, len(data), ev.end_stream))
                if ev.end_stream:
                    append(StreamEnded(ev.stream_id))
            elif t is _NgRequest:
                sid = ev.stream_id
                opened.add(sid)
                if sid > self._last_in:
                    self._last_in = sid
                append(RequestHeadersReceived(sid, list(ev.headers), ev.end_stream))
                if ev.end_stream:
                    append(StreamEnded(sid))
                if len(opened) >= self.limits.max_concurrent_streams:
                    at_limit = True
            elif t is _NgResponse:
                append(ResponseHeadersReceived(ev.stream_id, list(ev.headers), ev.end_stream))
                if ev.end_stream:
                    append(StreamEnded(ev.stream_id))
            elif t is _NgTrailers:
                append(TrailersReceived(ev.stream_id, list(ev.headers)))
                append(StreamEnded(ev.stream_id))
            elif t is _NgClosed:
                self._stream_closed(ev, out)
            elif t is _NgWindow:
                append(WindowUpdated(ev.stream_id))
            elif t is _NgInformational:
                append(ResponseHeadersReceived(ev.stream_id, list(ev.headers), False))
            elif t is _NgReset:
                if self._resets.hit():
                    append(self._calm(lim.RAPID_RESET, "streams reset faster than the limit"))
                    return False  # nothing after the offence is reported: it is never forwarded
                self._peer_resets.add(ev.stream_id)
                append(StreamReset(ev.stream_id, int(ev.error_code)))
            elif t is _NgSettings:
                if self._settings.hit():
                    append(self._calm(lim.SETTINGS_FLOOD, "too many SETTINGS frames"))
                    return False
                self.settings_received = True
                remote = self._conn.remote_settings
                self._peer_initial_window = remote[_INITIAL_WINDOW_SIZE]
                self._peer_max_streams = remote[_MAX_CONCURRENT_STREAMS]
                if _INITIAL_WINDOW_SIZE in ev.settings:
                    append(WindowUpdated(0))  # a new initial window may open every stream's window
            elif t is _NgPing:
                if self._pings.hit():
                    append(self._calm(lim.PING_FLOOD, "too many PING frames"))
                    return False
            elif t is _NgPingAck:
                self.pings_acked += 1
            elif t is _NgGoAway:
                self.goaway_received = True
                append(ConnectionTerminated(int(ev.error_code), ev.last_stream_id))
            elif t is _NgConnClosed:
                self._engine_closed(ev, out)
                return False
            # SettingsAcknowledged, PriorityUpdate, AltSvc, Origin, pushes (disabled): nothing to report.
        return at_limit and not self._client

    def _stream_closed(self, ev: Any, out: list[Event]) -> None:
        sid = ev.stream_id
        self._open.discard(sid)
        code = ev.error_code
        if not code:
            return
        if sid in self._peer_resets:
            self._peer_resets.discard(sid)
            return
        if sid in self._local_resets:
            self._local_resets.discard(sid)
            return
        code = int(code)
        if self._client and code == ErrorCodes.REFUSED_STREAM:
            # The server's GOAWAY left this stream unprocessed (RFC 9113 §6.8): retry it elsewhere.
            out.append(StreamReset(sid, code))
            return
        self.rejects[lim.STREAM_ERROR] += 1  # libnghttp2 reset the stream for breaking the protocol
        out.append(StreamReset(sid, code, remote=False, reason=lim.STREAM_ERROR))

    def _count_refusals(self, out: list[Event]) -> None:
        """Streams libnghttp2 refused over max_concurrent_streams: found as RST_STREAM REFUSED_STREAM in
        what it wrote (it reports no event for them). Runs only after a read that reached the limit."""
        buf = self._out
        pos, end = 0, len(buf)
        local = self._local_resets
        while pos + _FRAME_HEADER_BYTES <= end:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if buf[pos + 3] == _RST_STREAM and length == 4:
                sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFF_FFFF
                code = int.from_bytes(buf[pos + 9 : pos + 13], "big")
                if code == ErrorCodes.REFUSED_STREAM and sid % 2 == 1 and sid not in local:
                    self.rejects[lim.REFUSED_STREAM] += 1
                    if sid > self._last_in:
                        self._last_in = sid
                    out.append(
                        StreamReset(sid, ErrorCodes.REFUSED_STREAM, remote=False, reason=lim.REFUSED_STREAM)
                    )
                    # Refused streams count too: opening past the limit again and again is the same attack.
                    if self._resets.hit():
                        out.append(self._calm(lim.RAPID_RESET, "streams refused faster than the limit"))
                        return
            pos += _FRAME_HEADER_BYTES + length

    def _engine_closed(self, ev: Any, out: list[Event]) -> None:
        code = int(ev.error_code)
        if self.closed or code == ErrorCodes.NO_ERROR:
            return
        reason = _reason_for_code(code, bytes(ev.debug_data))
        out.append(self._fail(reason, f"libnghttp2 closed the connection ({code:#x})", code, goaway=False))

    def _calm(self, reason: str, message: str) -> ConnectionTerminated:
        """A peer over one of our rate limits: GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §5.4.1)."""
        return self._fail(reason, message, ErrorCodes.ENHANCE_YOUR_CALM)

    def _fail(self, reason: str, message: str, error_code: int, goaway: bool = True) -> ConnectionTerminated:
        self.rejects[reason] += 1
        self.error = ProtocolError(reason, f"HTTP/2 connection closed: {message}")
        self.closed = True
        self.close_reason = reason
        if goaway:
            with contextlib.suppress(ngh2.NGH2Error):  # already failed: its GOAWAY is queued
                self._conn.terminate_connection(error_code, last_stream_id=self._last_in)
            self._pull()
        return ConnectionTerminated(error_code, self._last_in, remote=False, reason=reason)

    # --- output --------------------------------------------------------------------------------------------

    def _pull(self) -> None:
        conn = self._conn
        if self._unsent:
            self._unsent.clear()  # written below: nghttp2 now holds their stream state
        try:
            self._out += conn.data_to_send()
        except ngh2.NGH2Error:
            return  # a failed engine has nothing more to say; our hand-written GOAWAY is queued
        raw = conn.events()
        if raw:
            # Writing closes streams (END_STREAM sent both ways) and may fail the connection (nghttp2 found
            # an oversized frame): keep the bookkeeping, report failures with the next receive_data.
            before = self.closed
            self._translate(raw, self._pending)
            if self.closed and not before:
                self.must_close = True

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
        conn = self._conn
        try:
            if self._client:
                conn.send_trailers(stream_id, headers)
            elif headers and headers[0][0] == b":status" and headers[0][1][:1] == b"1":
                conn.send_informational_response(stream_id, headers)
            else:
                conn.send_response(stream_id, headers, end_stream=end_stream)
        except ngh2.NGH2Error as exc:
            if end_stream and not self._client:
                # A second HEADERS with END_STREAM is the trailers (what the h2 engine accepts too).
                self.send_trailers(stream_id, headers)
                return
            raise h2x.StreamClosedError(stream_id) from exc  # as the h2 engine: callers handle a gone stream

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        try:
            self._conn.send_trailers(stream_id, headers)
        except ngh2.NGH2Error as exc:
            raise h2x.StreamClosedError(stream_id) from exc

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """Send as much of ``data`` as the peer's windows allow; returns how many bytes were taken.

        When fewer than ``len(data)`` were taken, END_STREAM is not sent: call again with the rest after a
        WindowUpdated event.
        """
        if not data:
            if end_stream:
                self.end_stream(stream_id)
            return 0
        take = min(len(data), self.send_window(stream_id))
        if take:
            try:
                whole = take == len(data)
                self._conn.send_data(
                    stream_id, data if whole else data[:take], end_stream=end_stream and whole
                )
            except ngh2.NGH2Error as exc:
                raise h2x.StreamClosedError(stream_id) from exc
        return take

    def send_window(self, stream_id: int) -> int:
        """Bytes ``send_data`` could send on the stream now (body already queued in nghttp2 counts)."""
        conn = self._conn
        if stream_id in self._unsent:
            # A request whose HEADERS nghttp2 still holds has no stream state yet: the initial window applies
            # (asking nghttp2 would raise, and an exception per call costs more than the whole send).
            window = self._peer_initial_window
        else:
            try:
                window = conn.stream_remote_window_size(stream_id)
            except ngh2.NGH2Error:
                if stream_id not in self._open:
                    return 0  # the stream is gone
                # Still open but without state: nghttp2 holds its HEADERS until the peer's stream limit
                # allows them out; its body may be queued against the initial window meanwhile.
                window = self._peer_initial_window
        stream = window - conn.queued_body_size(stream_id)
        return max(0, min(int(stream), int(conn.remote_window_size - conn.queued_body_size())))

    def end_stream(self, stream_id: int) -> None:
        try:
            self._conn.end_stream(stream_id)
        except ngh2.NGH2Error as exc:
            raise h2x.StreamClosedError(stream_id) from exc

    def acknowledge(self, stream_id: int, n: int) -> None:
        """The application consumed ``n`` flow-controlled bytes: let the peer send more."""
        if n <= 0 or self.closed:
            return
        try:  # noqa: SIM105  (contextlib.suppress costs a µs per call on this hot path)
            self._conn.acknowledge_received_data(n, stream_id)
        except (ngh2.NGH2Error, ValueError):
            pass  # a stream already gone: nghttp2 has credited the connection window with its bytes already

    def reset_stream(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        if error_code == ErrorCodes.NO_ERROR and not self._client:
            # "Stop sending, the response is complete" (RFC 9113 §8.1) is optional, and libnghttp2 writes
            # RST_STREAM ahead of response DATA it still holds: the client would lose the end of the
            # response. The rest of the request is read and credited instead (as transport/h2_codecs.py).
            return
        self._local_resets.add(stream_id)
        with contextlib.suppress(ngh2.NGH2Error):  # a closing connection: nothing to reset
            self._conn.reset_stream(stream_id, error_code)

    def goaway(
        self, error_code: int = ErrorCodes.NO_ERROR, last_stream_id: int | None = None, debug: bytes = b""
    ) -> None:
        """Send GOAWAY (RFC 9113 §6.8); streams above ``last_stream_id`` are left unprocessed.

        With NO_ERROR the shutdown is graceful: streams up to ``last_stream_id`` (default: the highest the
        peer opened) may still finish both ways; libnghttp2 ignores streams the peer opens later.
        """
        last = self._last_in if last_stream_id is None else last_stream_id
        with contextlib.suppress(ngh2.NGH2Error):  # already terminating: its GOAWAY went out
            if error_code == ErrorCodes.NO_ERROR:
                self._conn.send_goaway(0, last_stream_id=last, debug_data=debug)
            else:
                self._conn.terminate_connection(error_code, last_stream_id=last)
        # Serialise it now: libnghttp2 ignores streams above last_stream_id only once its GOAWAY is written.
        self._pull()
        if error_code != ErrorCodes.NO_ERROR:
            self.closed = True

    def set_connection_window(self, size: int) -> None:
        """Open our connection-level receive window to ``size`` (RFC 9113 §6.9.2: it starts at 65,535
        whatever SETTINGS say). A proxy holding one stalled stream's bytes would otherwise stall every
        stream of the connection once 64 KiB are unacknowledged."""
        with contextlib.suppress(ngh2.NGH2Error):  # a closing connection: nothing to open
            self._conn.set_local_window_size(size, stream_id=0)
        self._pull()

    @property
    def open_streams(self) -> int:
        """Streams not yet closed both ways; after a graceful GOAWAY, close the socket when this reaches 0."""
        return len(self._open)


class Ngh2ServerCodec(_Ngh2Codec):
    """The server end of one connection (downstream side of the proxy). Expects the client preface first."""

    def __init__(
        self,
        limits: Http2Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        connection_window: int | None = None,
    ) -> None:
        """``connection_window``: see ``set_connection_window`` (None keeps RFC 9113's 65,535)."""
        super().__init__(False, limits or Http2Limits(), clock)
        if connection_window is not None:
            self.set_connection_window(connection_window)


class Ngh2ClientCodec(_Ngh2Codec):
    """The client end of one connection (upstream side of the proxy): h2c prior knowledge or ALPN ``h2``."""

    def __init__(
        self,
        limits: Http2Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        connection_window: int | None = None,
    ) -> None:
        """``connection_window``: see ``set_connection_window`` (None keeps RFC 9113's 65,535)."""
        super().__init__(True, limits or Http2Limits(), clock)
        if connection_window is not None:
            self.set_connection_window(connection_window)

    def can_open_stream(self) -> bool:
        """False while the server's SETTINGS_MAX_CONCURRENT_STREAMS are all in use: queue the request."""
        return not self.closed and not self.goaway_received and len(self._open) < self._peer_max_streams

    def send_request(self, headers: Headers, end_stream: bool = False) -> int:
        """Open a stream with ``headers`` (pseudo-headers first); returns its id."""
        if self.goaway_received or self.closed:
            raise ProtocolError(
                lim.GOAWAY_RECEIVED, "the server sent GOAWAY: open the stream on a new connection"
            )
        stream_id = int(self._conn.send_request(headers, end_stream=end_stream))
        self._open.add(stream_id)
        self._unsent.add(stream_id)
        return stream_id

    def ping(self) -> None:
        """Send a PING; its ACK increments ``pings_acked`` (liveness of an idle upstream connection)."""
        with contextlib.suppress(ngh2.NGH2Error):  # a closing connection: its streams fail anyway
            self._conn.ping(b"plexus\x00\x00")  # 8 octets (RFC 9113 §6.7)

    def max_streams(self) -> int:
        """Streams the peer lets us have open at once (an assumed 100 until its SETTINGS arrive)."""
        return self._peer_max_streams

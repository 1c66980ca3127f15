"""The HTTP/2 codecs as the proxy uses them: a larger connection window, and PING / SETTINGS seen upstream.

The codec of ``plexus.codec.http2`` reports neither PING ACKs nor the peer's SETTINGS; the upstream pool
needs both (liveness checks on idle connections, and the peer's SETTINGS_MAX_CONCURRENT_STREAMS before it
opens more streams than the peer allows), so these subclasses catch h2's events before translation.
"""

from __future__ import annotations

import contextlib
import functools
import struct
import time
from collections import Counter
from collections.abc import Set as AbstractSet
from typing import Any, Final, Protocol

import h2.events as h2e
import h2.exceptions as h2x
from h2.errors import ErrorCodes

from plexus.codec.http2 import (
    ConnectionTerminated,
    DataReceived,
    Headers,
    Http2ClientCodec,
    Http2Limits,
    Http2ServerCodec,
    RequestHeadersReceived,
    ResponseHeadersReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from plexus.codec.http2 import limits as lim
from plexus.codec.http2.events import Event
from plexus.core.errors import ProtocolError

# RFC 9113 §6.9.2: the connection window starts at 65,535 whatever SETTINGS say. The proxy holds a stream's
# unacknowledged bytes while its other side is slow, so one stalled stream would stall the whole connection
# at that size; 1 MiB (Envoy's default connection window) bounds what one connection can make us buffer.
CONNECTION_WINDOW: Final = 1024 * 1024
_INITIAL_CONNECTION_WINDOW: Final = 65_535
# Streams to open on a new connection before the peer's SETTINGS arrive: RFC 9113 §6.5.2 recommends that a
# server allow at least 100, so up to this many are never refused for concurrency.
ASSUMED_MAX_STREAMS: Final = 100


class EventSink(Protocol):
    """What a connection does with its codec's events, called directly (``receive_into``): the ngh2 codec
    then builds no event objects on the hot path (frozen dataclasses cost 1-3 µs each)."""

    def h2_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        """Request headers (server side) or response headers, 1xx included (client side)."""

    def h2_data(self, stream_id: int, data: bytes, flow_controlled_length: int, end_stream: bool) -> None: ...

    def h2_end(self, stream_id: int) -> None:
        """The peer's side of the stream ended. The ngh2 codecs do not report it after trailers (which always
        end it: the sink's h2_trailers ends the stream) nor, on the server side, after DATA that carries
        END_STREAM (a request's usual end: h2_data's ``end_stream`` said it, and such a request needs nothing
        more); the h2 engine does: a sink's h2_end must be idempotent."""

    def h2_trailers(self, stream_id: int, headers: Headers) -> None:
        """Trailers, which end the peer's side of the stream (no h2_end follows: see there)."""

    def h2_reset(self, stream_id: int, error_code: int, remote: bool, reason: str) -> None: ...
    def h2_window(self, stream_id: int) -> None: ...
    def h2_terminated(self, ev: ConnectionTerminated) -> None: ...

    def h2_failed(self, stream_id: int, what: str) -> None:
        """Handling one event raised (a bug): it must cost that stream only, not the connection."""


def deliver(events: list[Event], sink: EventSink) -> None:
    """Hand Plexus codec events (the h2 engine's) to ``sink``."""
    for ev in events:
        try:
            if isinstance(ev, DataReceived):
                sink.h2_data(ev.stream_id, ev.data, ev.flow_controlled_length, ev.end_stream)
            elif isinstance(ev, (RequestHeadersReceived, ResponseHeadersReceived)):
                sink.h2_headers(ev.stream_id, ev.headers, ev.end_stream)
            elif isinstance(ev, StreamEnded):
                sink.h2_end(ev.stream_id)
            elif isinstance(ev, TrailersReceived):
                sink.h2_trailers(ev.stream_id, ev.headers)
            elif isinstance(ev, StreamReset):
                sink.h2_reset(ev.stream_id, ev.error_code, ev.remote, ev.reason)
            elif isinstance(ev, WindowUpdated):
                sink.h2_window(ev.stream_id)
            elif isinstance(ev, ConnectionTerminated):
                sink.h2_terminated(ev)
        except Exception:
            sink.h2_failed(getattr(ev, "stream_id", 0), type(ev).__name__)


class _Collector:
    """An ``EventSink`` that builds the Plexus events (``_NgCodec.receive_data``, off the hot path)."""

    def __init__(self, server: bool) -> None:
        self.server = server
        self.out: list[Event] = []

    def h2_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        kind = RequestHeadersReceived if self.server else ResponseHeadersReceived
        self.out.append(kind(stream_id, headers, end_stream))

    def h2_data(self, stream_id: int, data: bytes, flow_controlled_length: int, end_stream: bool) -> None:
        self.out.append(DataReceived(stream_id, data, flow_controlled_length, end_stream))
        if end_stream and self.server:
            self.out.append(StreamEnded(stream_id))  # (receive_into leaves it out on the server side)

    def h2_end(self, stream_id: int) -> None:
        self.out.append(StreamEnded(stream_id))

    def h2_trailers(self, stream_id: int, headers: Headers) -> None:
        self.out.append(TrailersReceived(stream_id, headers))
        self.out.append(StreamEnded(stream_id))  # (receive_into leaves it out)

    def h2_reset(self, stream_id: int, error_code: int, remote: bool, reason: str) -> None:
        self.out.append(StreamReset(stream_id, error_code, remote, reason))

    def h2_window(self, stream_id: int) -> None:
        self.out.append(WindowUpdated(stream_id))

    def h2_terminated(self, ev: ConnectionTerminated) -> None:
        self.out.append(ev)

    def h2_failed(self, stream_id: int, what: str) -> None:
        raise AssertionError(f"collecting {what} of stream {stream_id} failed")  # appending cannot fail


def _tune(codec: Http2ServerCodec | Http2ClientCodec) -> None:
    conn = codec._conn
    conn.increment_flow_control_window(CONNECTION_WINDOW - _INITIAL_CONNECTION_WINDOW)
    # What the proxy sends is what a peer sent (validated and normalised by h2 on input) plus fields of our
    # own, so h2's outbound validation and normalisation repeat work; they were most of the proxy's CPU per
    # request (bench/grpc_bench.py profile). Inbound validation stays on: it guards the trust boundary.
    conn.config.validate_outbound_headers = False
    conn.config.normalize_outbound_headers = False
    # Plain HPACK literals instead of Huffman: pure-Python Huffman coding costs more CPU than the bytes it
    # saves on the loopback and LAN links a sidecar writes to (RFC 7541 §5.2 leaves the choice to us).
    conn.encoder.encode = functools.partial(conn.encoder.encode, huffman=False)  # type: ignore[method-assign]


class ProxyServerCodec(Http2ServerCodec):
    must_close = False  # the h2 codec reports its own failures as events (see _NgCodec.data_to_send)
    close_reason = ""
    engine: Any = None  # (_NgCodec's: flush asks data_to_send every time here)
    local_resets: AbstractSet[int] = frozenset()

    def __init__(self, limits: Http2Limits) -> None:
        super().__init__(limits)
        _tune(self)

    def receive_into(self, data: bytes, sink: EventSink) -> None:
        deliver(self.receive_data(data), sink)


class ProxyClientCodec(Http2ClientCodec):
    """Adds ``ping()``, ``pings_acked`` and ``settings_received``."""

    must_close = False
    close_reason = ""
    max_streams_known = 0  # (NgClientCodec's cache of max_streams; here it is always asked)
    engine: Any = None  # (as ProxyServerCodec)
    local_resets: AbstractSet[int] = frozenset()

    def __init__(self, limits: Http2Limits) -> None:
        super().__init__(limits)
        _tune(self)
        self.pings_acked = 0
        self.settings_received = False

    def receive_into(self, data: bytes, sink: EventSink) -> None:
        deliver(self.receive_data(data), sink)

    def ping(self) -> None:
        self._conn.ping(b"plexus\x00\x00")  # 8 octets (RFC 9113 §6.7)

    def max_streams(self) -> int:
        """Streams the peer lets us have open at once (an assumed 100 until its SETTINGS arrive)."""
        remote = int(self._conn.remote_settings.max_concurrent_streams)
        return remote if self.settings_received else min(remote, ASSUMED_MAX_STREAMS)

    def _translate(self, ev: h2e.Event, out: list[Event]) -> None:
        if isinstance(ev, h2e.PingAckReceived):
            self.pings_acked += 1
            return
        if isinstance(ev, h2e.RemoteSettingsChanged):
            self.settings_received = True
            return
        super()._translate(ev, out)


# --- libnghttp2 engine (opt-in: DataPlaneSettings.h2_engine = "ngh2") -----------------------------------
#
# The pure-Python h2 stack is most of the proxy's CPU per gRPC call (bench/profiles/h2-NOTES.md: ~450 µs
# per call against ~15 µs for libnghttp2 through the ``ngh2`` binding). These classes give the proxy the
# same surface as ProxyServerCodec / ProxyClientCodec over ngh2. nghttp2 enforces its own attack limits
# (rapid reset, CONTINUATION, SETTINGS/PING ACK floods, header list size); their reason codes here are
# mapped from its GOAWAY codes, coarser than the h2 codec's.


_GOAWAY_HEAD: Final = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"  # length 8, type GOAWAY, stream 0


def _ngh2() -> Any:
    import ngh2  # optional dependency: imported only when the engine is chosen

    return ngh2


_never_indexed_type: Any = None


def never_indexed(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """A header field HPACK must not add to its dynamic table (ngh2's NeverIndexedHeader). For values new
    on every request (trace ids, request ids): indexed, each would evict fields that repeat on every stream
    (content-type, :authority, te, user-agent), which then go out as literals again on both hops. The pure
    h2 engine, kept as a reference, indexes it like any pair."""
    global _never_indexed_type
    kind = _never_indexed_type
    if kind is None:
        kind = _never_indexed_type = _ngh2().NeverIndexedHeader
    # tuple.__new__ directly: the namedtuple's own __new__ is a Python-level call costing several times more
    return tuple.__new__(kind, (name, value))  # type: ignore[no-any-return]


def never_indexed_pair(
    name: bytes, value: bytes, name2: bytes, value2: bytes
) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """Two ``never_indexed`` fields in one call (the two trace fields every stream gets)."""
    kind = _never_indexed_type
    if kind is None:
        kind = never_indexed(name, value).__class__
    new = tuple.__new__
    return new(kind, (name, value)), new(kind, (name2, value2))


class _NgCodec:
    """Plexus codec events and commands over one ``ngh2.Connection``."""

    def __init__(self, server: bool, limits: Http2Limits) -> None:
        ng = _ngh2()
        self._ng = ng
        # The event types _dispatch tests, fetched once (seven module lookups per read otherwise).
        self._kinds = (
            ng.DataReceived,
            ng.StreamClosed,
            ng.RequestReceived,
            ng.ResponseReceived,
            ng.TrailersReceived,
            ng.WindowUpdated,
            ng.StreamReset,
        )
        self._server = server
        self.limits = limits
        self.rejects: Counter[str] = Counter()
        self.error: ProtocolError | None = None
        self.closed = False
        self.goaway_received = False
        self.pings_acked = 0
        self.settings_received = False
        # NgClientCodec.max_streams's answer since the peer's last SETTINGS; 0: unknown (can_open reads it)
        self.max_streams_known = 0
        self._initial_window = -1  # the peer's SETTINGS_INITIAL_WINDOW_SIZE since its SETTINGS; -1: unknown
        # Streams we opened whose HEADERS are still queued: nghttp2 has no state for them until they are
        # written, so their window is the peer's initial one (send_window asks nothing that would raise).
        self._unsent: set[int] = set()
        # Streams we reset with an error code until the RST_STREAM is written (their close is reported then).
        self.local_resets: set[int] = set()
        self._peer_resets: set[int] = set()
        self._last_inbound = 0
        self._tail = b""  # a GOAWAY written by hand after a fatal engine error
        self.must_close = False  # set by data_to_send: write what it returned, then close the transport
        self.close_reason = ""
        clock = time.monotonic
        self._resets = lim.RateWindow(limits.max_resets_per_window, limits.window_seconds, clock)
        self._settings = lim.RateWindow(limits.max_settings_per_window, limits.window_seconds, clock)
        self._pings = lim.RateWindow(limits.max_pings_per_window, limits.window_seconds, clock)
        resets = max(1, int(limits.max_resets_per_window / max(limits.window_seconds, 0.001)))
        config = ng.Configuration(
            auto_window_update=False,
            peer_max_concurrent_streams=ASSUMED_MAX_STREAMS,
            max_settings=32,
            max_outbound_ack=limits.max_settings_per_window + limits.max_pings_per_window,
            # Twice our own limit: ours (lim.RateWindow, with its reason code) trips first.
            stream_reset_rate_limit=(2 * limits.max_resets_per_window, 2 * resets),
            max_continuations=64,
            max_inbound_header_list_size=limits.max_header_list_bytes,
        )
        role = ng.Role.SERVER if server else ng.Role.CLIENT
        conn = self._conn = ng.Connection(role, config)
        # The engine, for the connections' flush: with nothing closing (``closed``, tested first: a failed
        # engine raises on want_write), no reset of ours to account for (``local_resets``) and nothing queued
        # (``engine.want_write`` false), data_to_send has nothing to do, and the flush skips the call (3 of
        # the 5 flushes of a unary call at one stream).
        self.engine = conn
        setting = ng.Setting
        conn.initiate_connection(
            {
                setting.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                setting.MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
                setting.MAX_FRAME_SIZE: limits.max_frame_size,
                setting.INITIAL_WINDOW_SIZE: limits.initial_window_size,
            }
        )
        conn.set_local_window_size(CONNECTION_WINDOW, stream_id=0)

    # -- input --------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """The events of ``data`` as Plexus events (tests, tools); the proxy uses ``receive_into``."""
        collector = _Collector(self._server)
        self.receive_into(data, collector)
        return collector.out

    def receive_into(self, data: bytes, sink: EventSink) -> None:
        """Feed ``data`` to the engine and hand what it reports straight to ``sink``."""
        if self.closed:
            return
        try:
            self._conn.receive_data(data)
        except self._ng.NGH2Error as exc:
            bomb = isinstance(exc, self._ng.DenialOfServiceError)
            reason = lim.HPACK_BOMB if bomb else lim.PROTOCOL
            if "continuation" in str(exc).lower():  # nghttp2: "Too many CONTINUATION frames ..."
                reason = lim.CONTINUATION_FLOOD
            # The engine is unusable after a fatal error: the GOAWAY is written by hand (RFC 9113 §6.8).
            code = ErrorCodes.ENHANCE_YOUR_CALM if bomb else ErrorCodes.PROTOCOL_ERROR
            self._tail = _GOAWAY_HEAD + struct.pack(">II", self._last_inbound, int(code))
            sink.h2_terminated(self._fail(reason, str(exc)))
            return
        # The events, dispatched here rather than in a method of their own (one call fewer per read): exact
        # type tests, the most frequent first (one request, one response: headers, data, close).
        data_t, closed_t, request_t, response_t, trailers_t, window_t, reset_t = self._kinds
        client = not self._server
        for ev in self._conn.events():
            kind = type(ev)
            try:
                if kind is data_t:
                    data = ev.data  # bytes already: no copy
                    end = ev.end_stream
                    sid = ev.stream_id
                    sink.h2_data(sid, data, len(data), end)
                    if end and client:  # (a server's sink learns it from h2_data: see EventSink.h2_end)
                        sink.h2_end(sid)
                elif kind is closed_t:
                    # A stream that ended cleanly (both END_STREAMs, or a NO_ERROR reset) needs nothing here.
                    if (ev.error_code or self._peer_resets or self.local_resets) and self._closed_stream(
                        ev, sink
                    ):
                        break
                elif kind is request_t:
                    sid = ev.stream_id
                    if sid > self._last_inbound:
                        self._last_inbound = sid
                    end = ev.end_stream
                    sink.h2_headers(sid, list(ev.headers), end)
                    if end:
                        sink.h2_end(sid)
                elif kind is response_t:
                    sid = ev.stream_id
                    end = ev.end_stream
                    sink.h2_headers(sid, list(ev.headers), end)
                    if end:
                        sink.h2_end(sid)
                elif kind is trailers_t:
                    sink.h2_trailers(ev.stream_id, list(ev.headers))  # (the end too: EventSink.h2_end)
                elif kind is window_t:
                    sink.h2_window(ev.stream_id)
                elif kind is reset_t and client:
                    # An upstream server's reset, not counted (see _rare): at one stream in flight nginx's
                    # RST_STREAM(NO_ERROR) after each answer is a read of its own, and this is all of it.
                    sid = ev.stream_id
                    code = ev.error_code
                    if code:
                        self._peer_resets.add(sid)  # as in _rare
                    sink.h2_reset(sid, code, True, "")
                elif self._rare(ev, sink):
                    break  # nothing after an offence is reported: it is never forwarded
            except Exception:
                sink.h2_failed(getattr(ev, "stream_id", 0), kind.__name__)
        if self._peer_resets:
            # A peer's reset of a stream nghttp2 had already closed has no StreamClosed (nginx resets every
            # stream it answered before it read the request's end): kept, one id per call would pile up.
            self._peer_resets.clear()

    def _closed_stream(self, ev: Any, sink: EventSink) -> bool:
        sid = ev.stream_id
        peer_resets = self._peer_resets
        local_resets = self.local_resets
        peer = local = False
        if peer_resets and sid in peer_resets:
            peer = True
            peer_resets.discard(sid)
        if local_resets and sid in local_resets:
            local = True
            local_resets.discard(sid)
        if ev.error_code and not peer and not local:
            # nghttp2 closed it for breaking the protocol, refused it, or the peer reset it before
            # it was reported open: counted against the reset rate too (rapid reset).
            if self._resets.hit():
                sink.h2_terminated(self._calm(lim.RAPID_RESET))
                return True
            code = int(ev.error_code)
            reason = lim.REFUSED_STREAM if code == ErrorCodes.REFUSED_STREAM else lim.STREAM_ERROR
            self.rejects[reason] += 1
            sink.h2_reset(sid, code, False, reason)
        return False

    def _rare(self, ev: Any, sink: EventSink) -> bool:
        """Events seldom seen; True: the connection was closed for an offence, stop reporting."""
        ng = self._ng
        if isinstance(ev, ng.StreamReset):
            # Rapid reset (CVE-2023-44487) is a client's attack on a server: an upstream server's resets
            # (e.g. RST_STREAM NO_ERROR after each complete response, RFC 9113 §8.1) are not counted, else a
            # busy upstream connection would be torn down with its streams every 200 responses.
            if self._server and self._resets.hit():
                sink.h2_terminated(self._calm(lim.RAPID_RESET))
                return True
            sid = ev.stream_id
            code = int(ev.error_code)
            if code:
                # Its StreamClosed, with this code, follows in this batch (_dispatch forgets the rest at its
                # end): remembered so that it is not counted as our refusal. A NO_ERROR reset closes with code
                # 0 and needs no entry.
                self._peer_resets.add(sid)
            sink.h2_reset(sid, code, True, "")
        elif isinstance(ev, ng.InformationalResponseReceived):
            sink.h2_headers(ev.stream_id, list(ev.headers), False)
        elif isinstance(ev, ng.PingReceived):
            if self._pings.hit():
                sink.h2_terminated(self._calm(lim.PING_FLOOD))
                return True
        elif isinstance(ev, ng.SettingsReceived):
            if self._settings.hit():
                sink.h2_terminated(self._calm(lim.SETTINGS_FLOOD))
                return True
            self.settings_received = True
            self.max_streams_known = 0  # the peer's limits may have changed: read them again (max_streams,
            self._initial_window = -1  # send_window)
            sink.h2_window(0)  # a new INITIAL_WINDOW_SIZE may open every stream's window
        elif isinstance(ev, ng.PingAcknowledged):
            self.pings_acked += 1
        elif isinstance(ev, ng.GoAwayReceived):
            self.goaway_received = True
            sink.h2_terminated(ConnectionTerminated(int(ev.error_code), ev.last_stream_id))
        elif isinstance(ev, ng.ConnectionClosed) and not self.closed:
            code = int(ev.error_code)
            if code != ErrorCodes.NO_ERROR:
                reason = _reason_for_code(code, bytes(ev.debug_data))
                sink.h2_terminated(self._fail(reason, "closed by nghttp2"))
        return False

    def _calm(self, reason: str) -> ConnectionTerminated:
        """A peer over one of our rate limits: GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §5.4.1), as the h2 codec."""
        with contextlib.suppress(self._ng.NGH2Error):
            self._conn.terminate_connection(ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self._last_inbound)
        self.rejects[reason] += 1
        self.error = ProtocolError(reason, "HTTP/2 connection closed: peer over a rate limit")
        self.closed = True
        return ConnectionTerminated(
            ErrorCodes.ENHANCE_YOUR_CALM, self._last_inbound, remote=False, reason=reason
        )

    def _fail(self, reason: str, message: str) -> ConnectionTerminated:
        self.rejects[reason] += 1
        self.error = ProtocolError(reason, f"HTTP/2 connection closed: {message}")
        self.closed = True
        return ConnectionTerminated(
            ErrorCodes.PROTOCOL_ERROR, self._last_inbound, remote=False, reason=reason
        )

    # -- output -------------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        conn = self._conn
        if not self.closed and not self._tail and not conn.want_write:
            # Nothing queued (most flushes: every read ends with one per connection it touched). The C
            # property costs a fraction of a data_to_send + events() pair; events come only from sending.
            # A failed or closing engine takes the full path (its GOAWAY, written by hand or queued).
            if self.local_resets:
                self.local_resets.clear()  # nothing queued: no reset of ours is still to be written
            return b""
        if self._unsent:
            # Their HEADERS go out now (or wait for a concurrency slot: send_window then asks nghttp2, which
            # answers for a stream it has not opened with the peer's initial window all the same).
            self._unsent.clear()
        tail, self._tail = self._tail, b""
        try:
            data = bytes(conn.data_to_send())
        except self._ng.NGH2Error:
            return tail
        failed = self._ng.ConnectionClosed
        for ev in conn.events():  # mostly StreamClosed of streams this write ended: nothing to do for them
            if type(ev) is failed and ev.error_code and not self.closed:
                # nghttp2 failed the connection itself (e.g. a frame over SETTINGS_MAX_FRAME_SIZE) and
                # queued its GOAWAY: write it, then close (``must_close``).
                self.closed = self.must_close = True
                self.close_reason = _reason_for_code(int(ev.error_code), bytes(ev.debug_data))
                self.rejects[self.close_reason] += 1
        if self.local_resets:
            # Every RST_STREAM queued went out now; nghttp2 reported those streams' close in this write's
            # events, never in a later read: nothing is left to tell apart.
            self.local_resets.clear()
        return data + tail

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        conn = self._conn
        try:
            if headers and headers[0][0] == b":status" and headers[0][1][:1] == b"1":  # 1xx
                conn.send_informational_response(stream_id, headers)
            else:
                conn.send_response(stream_id, headers, end_stream=end_stream)
        except self._ng.NGH2Error as exc:  # as the h2 codec reports a stream gone: the proxy handles it
            raise h2x.StreamClosedError(stream_id) from exc

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        try:
            self._conn.send_trailers(stream_id, headers)
        except self._ng.NGH2Error as exc:
            raise h2x.StreamClosedError(stream_id) from exc

    def send_window(self, stream_id: int) -> int:
        conn = self._conn
        if stream_id in self._unsent:
            # A request whose HEADERS are still queued has no stream state yet: it starts at the peer's
            # initial window (RFC 9113 §6.9.2). Asking nghttp2 would raise, which cost ~3x the whole answer.
            window = self._peer_initial_window()
        else:
            try:
                window = conn.stream_remote_window_size(stream_id)
            except self._ng.StreamUnavailableError:
                window = self._peer_initial_window()  # as above, for one opened before the last write
            except self._ng.NGH2Error:
                return 0
        window -= conn.queued_body_size(stream_id)
        shared = conn.remote_window_size - conn.queued_body_size()
        if shared < window:
            window = shared
        return window if window > 0 else 0

    def _peer_initial_window(self) -> int:
        window = self._initial_window
        if window < 0:  # ngh2 builds a dict per remote_settings read: kept until the peer's next SETTINGS
            window = int(self._conn.remote_settings[self._ng.Setting.INITIAL_WINDOW_SIZE])
            self._initial_window = window
        return window

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """As the h2 codec: take only what the windows allow now; END_STREAM only with the last byte."""
        if not data:
            if end_stream:
                self.end_stream(stream_id)
            return 0
        conn = self._conn
        # send_window, inline (this runs for every DATA frame, both ways)
        if stream_id in self._unsent:
            window = self._initial_window
            if window < 0:
                window = self._peer_initial_window()
        else:
            try:
                window = conn.stream_remote_window_size(stream_id)
            except self._ng.StreamUnavailableError:
                window = self._peer_initial_window()
            except self._ng.NGH2Error:
                return 0
        window -= conn.queued_body_size(stream_id)
        shared = conn.remote_window_size - conn.queued_body_size()
        if shared < window:
            window = shared
        size = len(data)
        if window >= size:
            take = size
        elif window > 0:
            take = window
            data = data[:take]
            end_stream = False  # END_STREAM only with the last byte
        else:
            return 0
        try:
            conn.send_data(stream_id, data, end_stream=end_stream)
        except self._ng.NGH2Error as exc:
            raise h2x.StreamClosedError(stream_id) from exc
        return take

    def end_stream(self, stream_id: int) -> None:
        try:
            self._conn.end_stream(stream_id)
        except self._ng.NGH2Error as exc:
            raise h2x.StreamClosedError(stream_id) from exc

    def acknowledge(self, stream_id: int, n: int) -> None:
        if n <= 0 or self.closed:
            return
        try:  # not contextlib.suppress: this runs once per DATA frame, and the context manager costs ~1 µs
            self._conn.acknowledge_received_data(n, stream_id)
        except self._ng.NGH2Error:
            return  # a closing connection: nothing to credit

    def reset_stream(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        if error_code == ErrorCodes.NO_ERROR and self._server:
            # "Stop sending, the response is complete" (RFC 9113 §8.1) is optional, and nghttp2 would send
            # the RST_STREAM ahead of response frames still queued (trailers): the client would lose them.
            # The rest of the request is read and credited instead.
            return
        if error_code != ErrorCodes.NO_ERROR:  # a NO_ERROR reset closes with code 0: nothing to tell apart
            self.local_resets.add(stream_id)  # forgotten once the RST_STREAM is written (data_to_send)
        try:
            self._conn.reset_stream(stream_id, error_code)
        except self._ng.NGH2Error:
            self.local_resets.discard(stream_id)
            return  # a closing connection: nothing to reset

    def goaway(
        self, error_code: int = ErrorCodes.NO_ERROR, last_stream_id: int | None = None, debug: bytes = b""
    ) -> None:
        last = self._last_inbound if last_stream_id is None else last_stream_id
        with contextlib.suppress(self._ng.NGH2Error):  # already terminating: its GOAWAY went out
            if error_code == ErrorCodes.NO_ERROR:
                self._conn.send_goaway(0, last_stream_id=last, debug_data=debug)
            else:
                self._conn.terminate_connection(error_code, last_stream_id=last)
        if error_code != ErrorCodes.NO_ERROR:
            self.closed = True


class NgServerCodec(_NgCodec):
    def __init__(self, limits: Http2Limits) -> None:
        super().__init__(True, limits)


class NgClientCodec(_NgCodec):
    def __init__(self, limits: Http2Limits) -> None:
        super().__init__(False, limits)

    def ping(self) -> None:
        with contextlib.suppress(self._ng.NGH2Error):  # a closing connection: its streams fail anyway
            self._conn.ping(b"plexus\x00\x00")

    def max_streams(self) -> int:
        # Asked before every stream opened (can_open); ngh2 builds a dict per remote_settings read, so the
        # answer is kept until the peer's next SETTINGS (``_rare`` clears it).
        cached = self.max_streams_known
        if cached:
            return cached
        remote = int(self._conn.remote_settings[self._ng.Setting.MAX_CONCURRENT_STREAMS])
        answer = remote if self.settings_received else min(remote, ASSUMED_MAX_STREAMS)
        if self.settings_received:
            self.max_streams_known = answer
        return answer

    def send_request(self, headers: Headers, end_stream: bool = False) -> int:
        if self.goaway_received or self.closed:
            raise ProtocolError(
                lim.GOAWAY_RECEIVED, "the server sent GOAWAY: open the stream on a new connection"
            )
        sid: int = self._conn.send_request(headers, end_stream=end_stream)
        if not end_stream:
            self._unsent.add(sid)  # its body follows before the next write, usually (send_window)
        return sid


def _reason_for_code(code: int, debug: bytes) -> str:
    text = debug.lower()
    if code == ErrorCodes.ENHANCE_YOUR_CALM:
        if b"ping" in text or b"settings" in text or b"ack" in text:
            return lim.PING_FLOOD
        return lim.RAPID_RESET
    if code == ErrorCodes.FRAME_SIZE_ERROR:
        return lim.FRAME_TOO_LARGE
    if code == ErrorCodes.FLOW_CONTROL_ERROR:
        return lim.FLOW_CONTROL
    if code == ErrorCodes.COMPRESSION_ERROR:
        return lim.HPACK_BOMB
    return lim.PROTOCOL


ServerCodec = ProxyServerCodec | NgServerCodec
ClientCodec = ProxyClientCodec | NgClientCodec


def server_codec(engine: str, limits: Http2Limits) -> ServerCodec:
    return NgServerCodec(limits) if engine == "ngh2" else ProxyServerCodec(limits)


def client_codec(engine: str, limits: Http2Limits) -> ClientCodec:
    return NgClientCodec(limits) if engine == "ngh2" else ProxyClientCodec(limits)

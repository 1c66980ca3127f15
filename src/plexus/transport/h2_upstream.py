"""Multiplexed HTTP/2 (h2c) connections to upstream endpoints, and the pool that shares them.

Theory of operation
-------------------
``Http2UpstreamPool.submit(endpoint, stream)`` gives a proxied stream a connection to ``endpoint``: the first
connection with a free stream slot (the peer's SETTINGS_MAX_CONCURRENT_STREAMS, an assumed 100 until they
arrive), else the stream waits in the endpoint's queue while a connection opens (another one is opened when
those connecting cannot take every waiting stream, up to MAX_CONNECTIONS_PER_ENDPOINT). When a stream ends or
a connection becomes ready, waiting streams are handed over in order.

A connection reports each of its streams' events to the ``UpstreamStream`` that opened it. It ends:
- idle (no stream) for ``idle_timeout``, or idle once its endpoint was removed (drain: nothing new is
  started on it, streams in flight finish);
- when a PING sent after ``ping_interval`` without any inbound frame is not acknowledged within
  ``ping_timeout``: every stream in flight on it fails at once (``on_upstream_lost``);
- after the peer's GOAWAY: streams above its last-stream-id were never processed and are handed back as
  retriable; the rest finish, then the connection closes.
Writes are batched: callers mark a connection dirty (``want_flush``) and one loop callback writes each dirty
connection's queued frames once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from h2.errors import ErrorCodes

from plexus.codec.http2 import (
    ConnectionTerminated,
    Headers,
    Http2Limits,
)
from plexus.transport.h2_codecs import ASSUMED_MAX_STREAMS, client_codec

if TYPE_CHECKING:
    from plexus.proxy import DataPlaneStats, Endpoint

log = logging.getLogger("plexus.dataplane")

# Answers of ``Http2UpstreamPool.submit`` (see there).
HANDED: Final = 0
PENDING: Final = 1
OVERFLOW: Final = 2
# Connections to one endpoint; past this, streams wait for a free slot. 16 x 100 streams covers any caller
# a single sidecar serves; more would only hide an upstream that does not keep up.
MAX_CONNECTIONS_PER_ENDPOINT: Final = 16


class UpstreamStream(Protocol):
    """What an upstream connection reports to the proxied stream it carries."""

    def on_upstream_ready(self, conn: Http2UpstreamConnection) -> None:
        """The pool chose ``conn``, which has a free slot now: open the stream on it (``conn.open``)."""

    def on_upstream_headers(self, headers: Headers, end_stream: bool) -> None: ...
    def on_upstream_data(self, data: bytes, flow_controlled_length: int, end_stream: bool) -> None: ...
    def on_upstream_trailers(self, headers: Headers) -> None: ...
    def on_upstream_end(self) -> None: ...

    def on_upstream_reset(self, error_code: int, unprocessed: bool) -> None:
        """The stream was reset; ``unprocessed``: the peer never processed it (REFUSED_STREAM, or above a
        GOAWAY's last-stream-id), so it may be retried elsewhere."""

    def on_upstream_window(self) -> None:
        """Flow-control window opened or the socket drained: send held bytes."""

    def on_upstream_lost(self, unprocessed: bool, reason: str) -> None:
        """The connection failed (or never opened, ``unprocessed`` True); the stream is gone."""


class Flushable(Protocol):
    """A connection whose queued frames are written once per loop turn (``schedule_flush``)."""

    dirty: bool

    def flush(self) -> None: ...


class _Group:
    """One endpoint's connections and the streams waiting for a slot on them."""

    __slots__ = ("breaker", "conns", "endpoint", "waiting")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.conns: list[Http2UpstreamConnection] = []
        self.waiting: deque[UpstreamStream] = deque()
        # The endpoint's cluster's CircuitBreaker (plexus.proxy.resilience), as the last governed stream
        # gave it: its max_connections bounds the connections of every endpoint of the cluster together.
        self.breaker: Any = None


class Http2UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: Http2UpstreamPool, group: _Group) -> None:
        self.pool = pool
        self.group = group
        self.endpoint = group.endpoint
        self.codec = client_codec(pool.engine, pool.limits)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, UpstreamStream] = {}
        self.ready = False
        self.closed = False
        self.goaway = False
        self.write_paused = False
        self.dirty = False
        loop = pool.loop
        self.last_received = loop.time()
        self.connected_at = loop.time()
        self.idle_since = loop.time()
        self.ping_sent_at: float | None = None
        self.pings_seen = 0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.ready = True
        stats = self.pool.stats
        stats.upstream_cx_total += 1
        stats.upstream_cx_active += 1
        self.connected_at = self.pool.loop.time()
        self.flush()  # preface and SETTINGS
        self._arm(self.pool.connect_timeout)  # the first tick checks that the peer's SETTINGS came

    def data_received(self, data: bytes) -> None:
        pool = self.pool
        self.last_received = pool.loop.time()
        codec = self.codec
        pool.reading = True
        try:
            codec.receive_into(data, self)
            if codec.pings_acked != self.pings_seen:
                self.pings_seen = codec.pings_acked
                self.ping_sent_at = None
            if self.group.waiting and not self.closed and codec.settings_received:
                pool.hand_out(self.group)
        finally:
            # One write per connection for the whole read (this one, and the downstream ones it answers).
            self.flush()
            pool.reading = False
            dirty = pool.dirty
            if dirty:  # pool.end_read, inline (a call fewer per read)
                pool.dirty = []
                for item in dirty:
                    if item.dirty:
                        item.flush()

    # -- codec events (EventSink) -------------------------------------------------------------------

    def h2_data(self, stream_id: int, data: bytes, flow_controlled_length: int, end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_upstream_data(data, flow_controlled_length, end_stream)
        else:
            self.codec.acknowledge(stream_id, flow_controlled_length)

    def h2_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_upstream_headers(headers, end_stream)

    def h2_trailers(self, stream_id: int, headers: Headers) -> None:
        streams = self.streams
        stream = streams.get(stream_id)
        if stream is not None:
            stream.on_upstream_trailers(headers)
            # They end the stream (no h2_end follows): usually the answer went out whole and the stream
            # already left (``finished``); else as h2_end.
            ended = streams.pop(stream_id, None)
            if ended is not None:
                ended.on_upstream_end()
                self._stream_gone()

    def h2_end(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.on_upstream_end()
            self._stream_gone()

    def h2_reset(self, stream_id: int, error_code: int, remote: bool, reason: str) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.on_upstream_reset(error_code, error_code == ErrorCodes.REFUSED_STREAM)
            self._stream_gone()

    def h2_window(self, stream_id: int) -> None:
        if stream_id == 0:
            for stream in list(self.streams.values()):
                stream.on_upstream_window()
        else:
            one = self.streams.get(stream_id)
            if one is not None:
                one.on_upstream_window()

    def h2_terminated(self, ev: ConnectionTerminated) -> None:
        self._terminated(ev)

    def h2_failed(self, stream_id: int, what: str) -> None:
        # A bug must cost one stream, not the connection and its other streams.
        log.exception("h2 upstream event %r failed", what)
        stream = self.streams.get(stream_id)
        if stream is not None:
            self.reset(stream_id)
            stream.on_upstream_reset(ErrorCodes.INTERNAL_ERROR, False)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready:
            return  # never connected: the pool's connect task reports it
        self.pool.stats.upstream_cx_active -= 1
        self._fail_all(unprocessed=False, reason="upstream connection lost")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.on_upstream_window()
        self.flush()

    # -- used by streams ----------------------------------------------------------------------------

    def can_open(self) -> bool:
        codec = self.codec
        return (
            self.ready
            and not self.closed
            and not self.goaway
            and not self.endpoint.removed
            and not codec.goaway_received
            and not codec.closed
            and codec.settings_received  # the peer's limits are known: nothing opened is refused
            # (the answer max_streams keeps, read without the call when there is one)
            and len(self.streams) < (codec.max_streams_known or codec.max_streams())
        )

    def open(self, stream: UpstreamStream, headers: Headers, end_stream: bool) -> int:
        sid = self.codec.send_request(headers, end_stream)
        self.streams[sid] = stream
        if not self.dirty:
            self.want_flush()
        return sid

    def reset(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        """The proxied stream gave up on ``stream_id`` (downstream reset, deadline, the response ended
        first): cancel it upstream. Also for a stream already forgotten here but still half-open in the
        codec."""
        known = self.streams.pop(stream_id, None) is not None
        if not self.closed and not self.codec.closed:
            try:
                self.codec.reset_stream(stream_id, error_code)
            except Exception:  # h2 refuses a reset of a stream it already closed: nothing to cancel
                log.debug("reset of closed upstream stream %d", stream_id)
            self.want_flush()
        if known:
            self._stream_gone()

    def finished(self, stream_id: int) -> None:
        """The proxied stream is over on this side (both directions ended): forget it."""
        streams = self.streams
        # _stream_gone has nothing to do while other streams remain and none waits for a slot.
        if streams.pop(stream_id, None) is not None and (not streams or self.group.waiting):
            self._stream_gone()

    def want_flush(self) -> None:
        if not self.dirty:
            self.dirty = True
            pool = self.pool
            if pool.reading:
                pool.dirty.append(self)  # written by end_read once the read under way is over
            else:
                pool.schedule_flush(self)

    def flush(self) -> None:
        self.dirty = False
        codec = self.codec
        engine = codec.engine
        if engine is not None and not codec.closed and not codec.local_resets and not engine.want_write:
            # Nothing queued: data_to_send's own first test, without the call (see _NgCodec.engine). Closed
            # first: a failed engine raises on want_write.
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = codec.data_to_send()
        if data:
            transport.write(data)
        if codec.must_close:  # the engine failed the connection while writing
            codec.must_close = False
            self._fail_all(unprocessed=False, reason=codec.close_reason)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            if not self.streams and not self.codec.closed:
                self.codec.goaway()
                self.flush()
                self.transport.close()
            else:
                self.transport.abort()

    # -- internals ----------------------------------------------------------------------------------

    def _stream_gone(self) -> None:
        if self.group.waiting and self.can_open():
            self.pool.hand_out(self.group)
        if self.streams:
            return
        self.idle_since = self.pool.loop.time()
        if self.goaway or self.endpoint.removed or self.codec.goaway_received:
            self.close()  # drained

    def _terminated(self, ev: ConnectionTerminated) -> None:
        self.goaway = True
        self.pool.forget(self)  # no new streams here; waiting ones go to another connection
        if ev.remote:
            # Streams above last_stream_id were never processed (RFC 9113 §6.8): safe to retry.
            for sid in [s for s in self.streams if s > ev.last_stream_id]:
                stream = self.streams.pop(sid)
                stream.on_upstream_reset(ErrorCodes.REFUSED_STREAM, True)
        if ev.error_code != ErrorCodes.NO_ERROR or not ev.remote:
            self._fail_all(unprocessed=False, reason=ev.reason or "upstream GOAWAY with an error")
            self.close()
        elif not self.streams:
            self.close()

    def _fail_all(self, unprocessed: bool, reason: str) -> None:
        group = self.group
        if unprocessed and group.waiting:
            # This connection never became usable: streams waiting for the endpoint fail as on a connect
            # failure (a retry picks another endpoint) instead of waiting for yet another connection.
            waiting = list(group.waiting)
            group.waiting.clear()
            for stream in waiting:
                stream.on_upstream_lost(True, reason)
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.on_upstream_lost(unprocessed, reason)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self.pool.orphaned(group)

    def _arm(self, delay: float) -> None:
        self.timer = self.pool.loop.call_later(max(delay, 0.01), self._tick)

    def _tick(self) -> None:
        """Liveness and idleness, checked by one timer per connection."""
        self.timer = None
        if self.closed:
            return
        pool = self.pool
        now = pool.loop.time()
        if not self.codec.settings_received:
            if now - self.connected_at >= pool.connect_timeout:
                # Connected but no SETTINGS: no HTTP/2 server is there. Nothing was opened on it yet.
                log.debug("upstream %s: no SETTINGS within the connect timeout", self.endpoint.key)
                self._fail_all(unprocessed=True, reason="failed")
                return
            self._arm(self.connected_at + pool.connect_timeout - now)
            return
        if not self.streams and (self.endpoint.removed or now - self.idle_since >= pool.idle_timeout):
            self.close()
            return
        sent = self.ping_sent_at
        if sent is not None and now - sent >= pool.ping_timeout:
            pool.ping_failures += 1
            log.debug("upstream %s: no PING ACK in %.1fs", self.endpoint.key, pool.ping_timeout)
            self._fail_all(unprocessed=False, reason="no PING ACK from upstream")
            return
        if sent is None and now - self.last_received >= pool.ping_interval:
            self.ping_sent_at = sent = now
            self.codec.ping()
            self.flush()
        # Next: the PING's deadline or the next quiet check, and the idle close, whichever comes first.
        due = sent + pool.ping_timeout if sent is not None else self.last_received + pool.ping_interval
        if not self.streams:
            due = min(due, self.idle_since + pool.idle_timeout)
        self._arm(due - now)


class Http2UpstreamPool:
    """Shared h2c connections by endpoint; see the module docstring."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stats: DataPlaneStats,
        limits: Http2Limits,
        connect_timeout: float,
        ping_interval: float,
        ping_timeout: float,
        idle_timeout: float,
        engine: str = "h2",
    ) -> None:
        self.loop = loop
        self.engine = engine
        self.stats = stats
        self.limits = limits
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.idle_timeout = idle_timeout
        self.ping_failures = 0
        self._groups: dict[str, _Group] = {}
        self._connecting: dict[str, int] = {}  # endpoint key → connects under way
        self.dirty: list[Flushable] = []  # connections to write at the end of this read or loop turn
        self._all: set[Http2UpstreamConnection] = set()
        self._flush_scheduled = False
        # True while a connection's data_received runs: what it makes dirty is written by ``end_read``.
        self.reading = False

    # -- streams ------------------------------------------------------------------------------------

    def submit(self, endpoint: Endpoint, stream: UpstreamStream, breaker: Any = None) -> int:
        """Hand ``stream`` a connection to ``endpoint`` now or queue it. With the cluster's ``breaker``
        (a governed stream): 1 when it was queued and counted as pending (the stream calls end_pending once
        it leaves the queue), 2 when the pending limit refused it (nothing queued); else 0."""
        group = self._groups.get(endpoint.key)
        if group is None or group.endpoint is not endpoint:
            group = self._groups[endpoint.key] = _Group(endpoint)
        for conn in group.conns:
            if conn.can_open():
                stream.on_upstream_ready(conn)
                return HANDED
        answer = HANDED
        if breaker is not None:
            group.breaker = breaker
            if not breaker.start_pending():
                return OVERFLOW
            answer = PENDING
        group.waiting.append(stream)
        self._maybe_connect(group)
        return answer

    def withdraw(self, endpoint: Endpoint, stream: UpstreamStream) -> None:
        """A waiting stream gave up (reset by its caller, deadline)."""
        group = self._groups.get(endpoint.key)
        if group is not None and stream in group.waiting:
            group.waiting.remove(stream)

    def hand_out(self, group: _Group) -> None:
        """Give waiting streams the free slots of ready connections, in order."""
        waiting = group.waiting
        for conn in list(group.conns):
            while waiting and conn.can_open():
                waiting.popleft().on_upstream_ready(conn)
            if not waiting:
                return
        self._maybe_connect(group)

    def _maybe_connect(self, group: _Group) -> None:
        key = group.endpoint.key
        connecting = self._connecting.get(key, 0)
        if connecting * ASSUMED_MAX_STREAMS >= len(group.waiting):
            return
        if len(group.conns) + connecting >= MAX_CONNECTIONS_PER_ENDPOINT:
            return
        breaker = group.breaker
        # The cluster's max_connections (at least one per endpoint, as Envoy opens one anyway so that a
        # request cannot wait for a connection that may never come): over it, streams wait for slots.
        limit = breaker.max_connections if breaker is not None else None
        if limit is not None and (group.conns or connecting) and self._cluster_connections(breaker) >= limit:
            breaker.connection_overflow()
            return
        self._connecting[key] = connecting + 1
        self.loop.create_task(self._connect(group))

    async def _connect(self, group: _Group) -> None:
        endpoint = group.endpoint
        key = endpoint.key
        conn = Http2UpstreamConnection(self, group)
        host, port = endpoint.address
        try:
            connecting = self.loop.create_connection(lambda: conn, host, port)
            # A DestinationRule's tcp.connectTimeout (the cluster's breaker) wins over the sidecar's own.
            breaker = group.breaker
            limit = breaker.connect_timeout if breaker is not None else None
            await asyncio.wait_for(connecting, limit or self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            self._connect_done(key)
            self.stats.upstream_cx_connect_fail += 1
            endpoint.failures += 1
            log.debug("h2 connect to %s failed: %r", key, exc)
            if not any(c.ready for c in group.conns) and not self._connecting.get(key):
                waiting = list(group.waiting)
                group.waiting.clear()
                reason = "timeout" if isinstance(exc, TimeoutError) else "failed"
                for stream in waiting:
                    stream.on_upstream_lost(True, reason)
            return
        self._connect_done(key)
        if conn.closed:
            return
        self._all.add(conn)
        if endpoint.removed or self._groups.get(key) is not group:
            # Removed while connecting: its waiting streams fail as unprocessed (retried elsewhere).
            waiting = list(group.waiting)
            group.waiting.clear()
            for stream in waiting:
                stream.on_upstream_lost(True, "failed")
            conn.close()
            return
        group.conns.append(conn)
        if conn.codec.settings_received:  # else its first read (the peer's SETTINGS) hands streams out
            self.hand_out(group)

    def _cluster_connections(self, breaker: Any) -> int:
        """Connections open or opening to the endpoints of the cluster ``breaker`` guards."""
        count = 0
        for key, group in self._groups.items():
            if group.breaker is breaker:
                count += len(group.conns) + self._connecting.get(key, 0)
        return count

    def _connect_done(self, key: str) -> None:
        left = self._connecting.get(key, 1) - 1
        if left > 0:
            self._connecting[key] = left
        else:
            self._connecting.pop(key, None)

    def orphaned(self, group: _Group) -> None:
        """A connection of ``group`` failed: its waiting streams fail unless another connection may serve
        them (ready or still connecting)."""
        if not group.waiting or self._connecting.get(group.endpoint.key):
            return
        if any(not c.closed and not c.goaway for c in group.conns):
            return
        waiting = list(group.waiting)
        group.waiting.clear()
        for stream in waiting:
            stream.on_upstream_lost(True, "failed")

    def forget(self, conn: Http2UpstreamConnection) -> None:
        """``conn`` takes no new streams any more (closing, GOAWAY)."""
        self._all.discard(conn)
        group = conn.group
        if conn in group.conns:
            group.conns.remove(conn)
            if group.waiting:
                self.hand_out(group)
        key = group.endpoint.key
        idle = not group.conns and not group.waiting and not self._connecting.get(key)
        if idle and self._groups.get(key) is group:
            del self._groups[key]

    # -- batched writes -----------------------------------------------------------------------------

    def schedule_flush(self, conn: Flushable) -> None:
        """Write ``conn``'s frames (upstream or downstream) once: at the end of the read under way
        (``end_read``), else at the end of this loop turn."""
        self.dirty.append(conn)
        if not self._flush_scheduled and not self.reading:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_dirty)

    def end_read(self) -> None:
        """A connection's ``data_received`` is over: write every connection it made dirty, now. At one
        stream a ``call_soon`` hop per read (a Handle, the loop's idle machinery, one more callback) was a
        large share of the proxy's CPU per call (bench/profiles/grpc-1stream-NOTES.md); uvloop writes at
        once, so this is still one write per connection per read."""
        self.reading = False
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for item in dirty:
                if item.dirty:
                    item.flush()

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        dirty, self.dirty = self.dirty, []
        for item in dirty:
            if item.dirty:
                item.flush()

    # -- views and shutdown -------------------------------------------------------------------------

    def connections(self, key: str) -> int:
        group = self._groups.get(key)
        return len(group.conns) if group is not None else 0

    def close_all(self) -> None:
        for conn in list(self._all):
            conn._fail_all(unprocessed=False, reason="sidecar closing")
        self._all.clear()
        self._groups.clear()

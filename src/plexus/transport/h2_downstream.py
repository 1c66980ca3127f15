"""The downstream side of HTTP/2 (h2c prior knowledge): one protocol object per client connection.

Each stream the client opens is resolved with the listener's ``Router`` (a ``RequestHead`` built from
``:method``, ``:path``, ``:authority`` and ``x-plexus-service``) and its endpoint picked with
``Route.pick_stream`` over the stream's headers plus ``:service`` / ``:rpc-method`` for gRPC; then an
``H2Stream`` relays it over the shared ``Http2UpstreamPool``. The protocol knows nothing of sockets beyond
``asyncio.Transport``, so a TLS transport (ALPN ``h2``) can carry it unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, cast

import h2.exceptions as h2x
from h2.errors import ErrorCodes

from plexus.codec.http1 import RequestHead
from plexus.codec.http2 import (
    ConnectionTerminated,
    Headers,
    Http2Limits,
    grpc_route_headers,
    is_grpc_content_type,
    parse_grpc_timeout,
)
from plexus.core import reasons
from plexus.core.errors import ProtocolError
from plexus.proxy import DataPlaneStats, ServiceStats
from plexus.proxy.stream import AUTHORITY, METHOD, PATH, HeaderLookup, lookup_from_pairs
from plexus.proxy.telemetry import INBOUND, OUTBOUND, UNKNOWN
from plexus.proxy.tracing import (
    B3_PARENT_SPAN_ID,
    B3_SAMPLED,
    B3_SPAN_ID,
    B3_TRACE_ID,
    REQUEST_ID,
    TRACEPARENT,
    Tracer,
    TraceStart,
)
from plexus.transport.h2_codecs import never_indexed, never_indexed_pair, server_codec
from plexus.transport.h2_stream import (
    CALLER_HEADER,
    HOP_BY_HOP,
    SERVICE_HEADER,
    H2Stream,
    service_from_authority,
)
from plexus.transport.h2_upstream import Http2UpstreamPool
from plexus.transport.routes import Route

if TYPE_CHECKING:
    from plexus.transport.context import DataPlaneContext
    from plexus.transport.routes import Router

log = logging.getLogger("plexus.dataplane")

_TIMER_SLACK: Final = 0.001  # libuv timers have millisecond resolution
_USER_AGENT: Final = b"user-agent"
EGRESS_DROPPED: Final = HOP_BY_HOP | {CALLER_HEADER}
# The trace-context fields a stream's headers may carry (plexus.proxy.tracing): read once when it opens, and
# replaced by what Tracer.begin says to forward. ``tracestate`` and B3's single ``b3`` pass through untouched.
_B3_NAMES: Final = (B3_TRACE_ID, B3_SPAN_ID, B3_PARENT_SPAN_ID, B3_SAMPLED)
TRACE_FIELDS: Final = frozenset(n.encode() for n in (TRACEPARENT, REQUEST_ID, *_B3_NAMES))
_B3_FIELDS: Final = frozenset(n.encode() for n in _B3_NAMES)
# Header names Tracer.begin writes, as bytes (it names them in str).
_WIRE_NAME: Final = {n: n.encode() for n in (TRACEPARENT, REQUEST_ID, *_B3_NAMES)}
# Where Tracer.fresh_lines puts the two values: b"x-request-id: <36>\r\ntraceparent: <55>\r\n".
_REQUEST_ID_NAME: Final = REQUEST_ID.encode()
_TRACEPARENT_NAME: Final = TRACEPARENT.encode()
_REQUEST_ID_AT: Final = len(b"x-request-id: ")
_REQUEST_ID_END: Final = _REQUEST_ID_AT + 36  # a UUID's text
_TRACEPARENT_AT: Final = _REQUEST_ID_END + len(b"\r\ntraceparent: ")
# What h2_headers does with a request field, by name: one dict lookup per field, not a chain of compares.
# Names not in the table (most of them, and pseudo-headers other than these three) are forwarded as they are.
# In the order h2_headers tests them: the fields every gRPC call carries first.
(_FWD, _METHOD, _PATH, _AUTHORITY, _CTYPE, _TE, _AGENT, _TIMEOUT, _TRACE, _CALLER, _DROP, _HOST, _SERVICE) = (
    range(13)
)
_GRPC: Final = b"application/grpc"  # the content type of nearly every gRPC call: no parse for it


def _field_actions(dropped: frozenset[bytes]) -> dict[bytes, int]:
    actions = {n: _TRACE for n in TRACE_FIELDS}
    actions.update({b":method": _METHOD, b":path": _PATH, b":authority": _AUTHORITY})
    actions.update(
        {
            SERVICE_HEADER: _SERVICE,
            b"content-type": _CTYPE,
            b"grpc-timeout": _TIMEOUT,
            b"te": _TE,
            _USER_AGENT: _AGENT,
            CALLER_HEADER: _CALLER,
        }
    )
    actions.update({n: _DROP for n in dropped})  # dropped wins (an egress that names its caller drops it)
    actions[b"host"] = _HOST
    return actions


_ACTIONS: Final = {dropped: _field_actions(dropped) for dropped in (HOP_BY_HOP, HOP_BY_HOP | {CALLER_HEADER})}
NOT_IMPLEMENTED_H2_TO_HTTP1: Final = (
    "HTTP/2 to an HTTP/1.1 app is not supported (no h2 to HTTP/1.1 translation): call it over HTTP/1.1"
)


class Http2Proxy:
    """What every HTTP/2 listener of one data plane shares: settings, counters, the upstream pool."""

    def __init__(self, ctx: DataPlaneContext) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.stats: DataPlaneStats = ctx.stats
        self.hop_name = settings.hop_name
        self.request_timeout = settings.request_timeout
        self.idle_timeout = settings.idle_timeout
        self.limits = Http2Limits(max_header_list_bytes=settings.max_header_bytes)
        self.engine = settings.h2_engine
        # Egress streams name their caller to the provider (per-caller rate limits): one header, made once.
        self.caller: tuple[bytes, bytes] | None = (
            (CALLER_HEADER, settings.workload.encode()) if settings.workload else None
        )
        self.connections: set[Http2Downstream] = set()
        self._pool: Http2UpstreamPool | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.ctx.loop

    @property
    def pool(self) -> Http2UpstreamPool:
        pool = self._pool
        if pool is None:  # made on first use: the loop is known only once a listener runs
            s = self.ctx.settings
            pool = self._pool = Http2UpstreamPool(
                self.ctx.loop,
                self.stats,
                self.limits,
                s.connect_timeout,
                s.h2_ping_interval,
                s.h2_ping_timeout,
                s.h2_upstream_idle_timeout,
                self.engine,
            )
        return pool

    def drain(self) -> None:
        for conn in list(self.connections):
            conn.drain()

    def close(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        if self._pool is not None:
            self._pool.close_all()


def stream_lookup(head: RequestHead, grpc: bool) -> HeaderLookup:
    """A stream's headers for routing, plus ``:method``, ``:path``, ``:authority`` and for gRPC ``:service``
    / ``:rpc-method``. Built on first use: a route with no table, hash header, gate or policy never asks, and
    decoding them for every stream was a measurable share of the CPU per call at one stream."""
    lookup: HeaderLookup | None = None

    def first(name: str) -> str | None:
        nonlocal lookup
        if lookup is None:
            extra = {METHOD: head.method.decode("latin-1"), PATH: head.target.decode("latin-1")}
            if head.host is not None:
                extra[AUTHORITY] = head.host.decode("latin-1")
            if grpc:
                try:
                    for key, value in grpc_route_headers(head.target):
                        extra[key.decode()] = value.decode("latin-1")
                except ProtocolError:
                    pass  # not /pkg.Service/Method: routed without :service / :rpc-method
            lookup = lookup_from_pairs(head.headers, extra)
        return lookup(name)

    return first


class Http2Downstream(asyncio.Protocol):
    def __init__(self, proxy: Http2Proxy, router: Router, direction: str) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.router = router
        self.direction = direction
        self.traffic_direction = OUTBOUND if direction == "egress" else INBOUND  # Istio's words, for entries
        # A per-service egress names its service: error texts say it even when no route exists.
        self.fixed_service: str = getattr(router, "service", "") or ""
        self.codec = server_codec(proxy.engine, proxy.limits)
        self.pool = proxy.pool  # read on every read and write: not through the proxy's property each time
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.write_paused = False
        self.closed = False
        self.draining = False
        self.dirty = False
        self.idle_since = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        # Streams' deadlines are swept by one timer per connection, due at the earliest one it was armed
        # for: a TimerHandle per stream (create, cancel) cost ~4 % of the proxy's CPU per call.
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.deadline_due = math.inf
        self.opened: list[tuple[H2Stream, RequestHead, float]] = []  # opened in this read, not yet routed
        # Fields dropped from what a caller sends: hop-by-hop ones, and on an egress that names its caller
        # the caller header too (an app cannot speak for another workload).
        self.dropped = EGRESS_DROPPED if direction == "egress" and proxy.caller is not None else HOP_BY_HOP
        self.actions = _ACTIONS[self.dropped]

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        proxy = self.proxy
        proxy.connections.add(self)
        proxy.stats.downstream_cx_total += 1
        proxy.stats.downstream_cx_active += 1
        self.flush()  # our SETTINGS
        self.idle_since = self.loop.time()
        self.idle_timer = self.loop.call_later(proxy.idle_timeout, self._idle_check)

    def data_received(self, data: bytes) -> None:
        opened = self.opened
        pool = self.pool
        pool.reading = True
        try:
            self.codec.receive_into(data, self)
            if opened:
                # Streams go upstream only once the whole read is seen: one reset in the same read (a rapid
                # reset, CVE-2023-44487) then costs the app nothing.
                self.opened = []
                for stream, head, timeout in opened:
                    if not stream.done and not self.closed:
                        try:
                            self._route(stream, head, timeout)
                        except Exception:
                            log.exception("h2 stream %d failed to start", stream.sid)
                            stream.reset_downstream(ErrorCodes.INTERNAL_ERROR)
        finally:
            # One write per connection for the whole read: this one, and the upstream ones it fed.
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
            stream.on_down_data(data, flow_controlled_length, end_stream)
        else:
            self.codec.acknowledge(stream_id, flow_controlled_length)

    def h2_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.req_ended:  # else the DATA or trailers that ended it said so
            stream.on_down_end()

    def h2_trailers(self, stream_id: int, headers: Headers) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_down_trailers(headers)  # (they end the request: no h2_end follows)

    def h2_reset(self, stream_id: int, error_code: int, remote: bool, reason: str) -> None:
        if not remote:
            self.proxy.stats.downstream_reject(reason)
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_down_reset(error_code)

    def h2_window(self, stream_id: int) -> None:
        streams = self.streams
        if stream_id == 0:
            for stream in list(streams.values()):
                stream.on_down_window()
        else:
            one = streams.get(stream_id)
            if one is not None:
                one.on_down_window()

    def h2_terminated(self, ev: ConnectionTerminated) -> None:
        self._terminated(ev)

    def h2_failed(self, stream_id: int, what: str) -> None:
        # A bug must cost one stream, not the connection and its other streams.
        log.exception("h2 downstream event %r failed", what)
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.reset_downstream(ErrorCodes.INTERNAL_ERROR)

    def eof_received(self) -> bool | None:
        return None  # a half-closed HTTP/2 connection cannot go on: close it (connection_lost resets streams)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        proxy = self.proxy
        proxy.connections.discard(self)
        proxy.stats.downstream_cx_active -= 1
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
            self.deadline_timer = None
        for stream in list(self.streams.values()):
            stream.on_down_reset(ErrorCodes.CANCEL)
        self.streams.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.on_down_window()
        self.flush()

    # -- streams ------------------------------------------------------------------------------------

    def h2_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        """A stream opens (codec event, called directly: no hop through another method)."""
        method = path = authority = service = host = timeout_raw = agent = caller = None
        timeout_at: int | None = None
        grpc = False
        traced: dict[bytes, int] | None = None  # trace-context fields the caller sent -> index in ``up``
        up: Headers = []
        action = self.actions.get
        for pair in headers:
            name = pair[0]
            act = action(name, _FWD)
            if act == _FWD:
                up.append(pair)
                continue
            value = pair[1]
            if act <= _AUTHORITY:
                if act == _METHOD:
                    method = value
                elif act == _PATH:
                    path = value
                else:
                    authority = value
            elif act == _CTYPE:
                grpc = value == _GRPC or is_grpc_content_type(value)
            elif act == _TE:
                if value != b"trailers" and value.strip().lower() != b"trailers":
                    continue
            elif act == _AGENT:
                agent = value  # for the stream's entry: read here, not by a second pass over the fields
            elif act == _TIMEOUT:
                timeout_raw = value
                timeout_at = len(up)
            elif act == _TRACE:
                if traced is None:
                    traced = {}
                elif name in traced:
                    continue  # a repeated trace field: the first one counts, the rest would go stale
                traced[name] = len(up)
            elif act == _CALLER:
                if caller is None:
                    caller = value
            elif act == _DROP:
                continue
            elif act == _HOST:
                host = value
                continue
            else:  # _SERVICE
                service = value  # the egress adds its own; the app behind the ingress needs none
                continue
            up.append(pair)
        authority = authority or host
        trace = self._trace(up, traced)
        if timeout_at is not None and (timeout_at >= len(up) or up[timeout_at][0] != b"grpc-timeout"):
            timeout_at = next(i for i, (n, _) in enumerate(up) if n == b"grpc-timeout")  # up was rebuilt
        if service is not None:
            named = service.decode("latin-1")
        else:
            named = self.fixed_service or service_from_authority(authority)
        stream = H2Stream(
            self, sid, up, grpc, end_stream, named, trace, method, path, authority, timeout_at, agent, caller
        )
        self.streams[sid] = stream
        if method == b"CONNECT":  # a tunnel (RFC 9113 §8.5), as HTTP/1.1's CONNECT: not proxied
            self.proxy.stats.downstream_reject(reasons.NOT_IMPLEMENTED)
            stream.fail(reasons.NOT_IMPLEMENTED, "CONNECT is not proxied")
            return
        timeout = self.proxy.request_timeout
        if timeout_raw is not None:
            try:
                timeout = min(timeout, parse_grpc_timeout(timeout_raw))
            except ProtocolError as exc:
                self.proxy.stats.downstream_reject(exc.reason)
                stream.fail(reasons.DOWNSTREAM_PROTOCOL_ERROR, f"bad grpc-timeout {timeout_raw!r}")
                return
        head = RequestHead(
            method or b"",
            path or b"",
            "2",
            up,
            authority,
            None,
            False,
            True,
            False,
            None,
            service,
        )
        self.opened.append((stream, head, timeout))

    def _trace(self, up: Headers, traced: dict[bytes, int] | None) -> TraceStart | bytes:
        """This hop's trace context (plexus.proxy.tracing), begun from the fields the caller sent; the fields
        to forward go into ``up``: appended when none came (the common case at an egress), else each in
        place of the caller's field of the same name (``traced``: name -> index in ``up``). When none came,
        the context is ``Tracer.fresh_lines``'s block (``ids_from_lines`` reads it), else a TraceStart."""
        tracer: Tracer = self.proxy.stats.telemetry.tracer
        if traced is None:
            # Every id from one draw, as HTTP/1.1's block of lines; the two values are slices of it, and the
            # stream keeps the block: its entry reads the ids back only if a sink asks (H2Stream._report).
            lines = tracer.fresh_lines()
            request_id = lines[_REQUEST_ID_AT:_REQUEST_ID_END]
            traceparent = lines[_TRACEPARENT_AT:-2]
            up += never_indexed_pair(_REQUEST_ID_NAME, request_id, _TRACEPARENT_NAME, traceparent)
            return lines
        wire = _WIRE_NAME

        def text(name: str) -> str | None:
            at = traced.get(wire[name])
            return up[at][1].decode("latin-1") if at is not None else None

        start = tracer.begin(
            text(TRACEPARENT),
            text(REQUEST_ID),
            b3_trace_id=text(B3_TRACE_ID),
            b3_span_id=text(B3_SPAN_ID),
            b3_sampled=text(B3_SAMPLED),
        )
        written: set[str] = set()
        for name, value in start.headers:
            field = wire[name]
            written.add(name)
            at = traced.get(field)
            if at is None:
                up.append(never_indexed(field, value.encode()))
            else:
                up[at] = never_indexed(field, value.encode())
        stale = wire[B3_PARENT_SPAN_ID]
        if B3_TRACE_ID in written and B3_PARENT_SPAN_ID not in written and stale in traced:
            # B3 rewritten for the next hop with no parent: the caller's parent id would be stale (rare).
            up[:] = [pair for pair in up if pair[0] != stale]
        return start

    def unrouted_stats(self) -> ServiceStats:
        """Where a stream no route took is counted: one series per listener's own service (a per-service
        egress) or "unknown", never the authority a caller chose (label cardinality stays bounded)."""
        return self.proxy.stats.service(self.fixed_service or UNKNOWN, self.direction)

    def _route(self, stream: H2Stream, head: RequestHead, timeout: float) -> None:
        route = self.router.resolve(head)
        if isinstance(route, str):
            waiter = self.router.unknown_hook(head)
            if waiter is None:
                stream.fail(route)
                return
            self.loop.create_task(self._await_route(stream, waiter, head, timeout))  # rare: a new service
            return
        local = route.local
        if local is not None and local.instance.protocol == "http":
            self._routed(stream, route, head, timeout)  # refused there
            return
        stream.routed(route, stream_lookup(head, stream.grpc), timeout)  # as _routed, one call fewer

    async def _await_route(
        self, stream: H2Stream, waiter: Coroutine[Any, Any, Route | str], head: RequestHead, timeout: float
    ) -> None:
        try:
            route = await waiter
        except Exception:  # the root's hook failed: the service stays unknown
            log.warning("on_unknown_service failed", exc_info=True)
            route = reasons.UNKNOWN_SERVICE
        if stream.done:
            return
        if isinstance(route, str):
            stream.fail(route)
        else:
            remaining = timeout - (self.loop.time() - stream.started)
            self._routed(stream, route, head, max(remaining, 0.001))
        self.flush()

    def _routed(self, stream: H2Stream, route: Route, head: RequestHead, timeout: float) -> None:
        local = route.local
        if local is not None and local.instance.protocol == "http":
            stream.service = route.service
            stream.route = route
            stream.fail(reasons.NOT_IMPLEMENTED, NOT_IMPLEMENTED_H2_TO_HTTP1)
            return
        stream.routed(route, stream_lookup(head, stream.grpc), timeout)

    def watch_deadline(self, deadline: float) -> None:
        """A stream's deadline: make sure the sweep runs by then."""
        if deadline < self.deadline_due and not self.closed:
            if self.deadline_timer is not None:
                self.deadline_timer.cancel()
            self.deadline_due = deadline
            self.deadline_timer = self.loop.call_at(deadline, self._sweep_deadlines)

    def _sweep_deadlines(self) -> None:
        self.deadline_timer = None
        self.deadline_due = math.inf
        if self.closed:
            return
        # Timers may fire up to a clock tick early: a deadline within it counts as reached.
        now = self.loop.time() + _TIMER_SLACK
        due = math.inf
        for stream in list(self.streams.values()):
            deadline = stream.deadline
            if not deadline or stream.done:
                continue  # not routed yet (no deadline) or over
            if deadline <= now:
                stream.on_deadline()
            elif deadline < due:
                due = deadline
        if due != math.inf:
            self.watch_deadline(due)
        self.flush()

    def stream_done(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.sid, None) is not None and not self.streams:
            self.idle_since = self.loop.time()
            if self.draining or self.codec.goaway_received:
                self.close()

    def reset_stream(self, sid: int, error_code: int) -> None:
        if self.closed or self.codec.closed:
            return
        try:
            self.codec.reset_stream(sid, error_code)
        except h2x.StreamClosedError:
            return  # both ends already closed it
        self.want_flush()

    # -- writing ------------------------------------------------------------------------------------

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
        if codec.must_close:  # the engine failed the connection while writing: its GOAWAY is out
            codec.must_close = False
            self.proxy.stats.downstream_reject(codec.close_reason)
            transport.close()

    # -- ends ---------------------------------------------------------------------------------------

    def _terminated(self, ev: ConnectionTerminated) -> None:
        if not ev.remote:
            # The codec refused the connection (flood, bomb, bad frame): its GOAWAY is queued; send and close.
            self.proxy.stats.downstream_reject(ev.reason or "h2_protocol_error")
            self.flush()
            self.close()
            return
        if not self.streams:  # the client is done with this connection
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def drain(self) -> None:
        """Stop taking new streams (GOAWAY); close once the streams in flight are done."""
        self.draining = True
        if self.closed or self.codec.closed:
            return
        self.codec.goaway()
        self.flush()
        if not self.streams:
            self.close()

    def _idle_check(self) -> None:
        self.idle_timer = None
        if self.closed:
            return
        timeout = self.proxy.idle_timeout
        remaining = self.idle_since + timeout - self.loop.time()
        if not self.streams and remaining <= 0:
            self.drain()
            return
        self.idle_timer = self.loop.call_later(max(remaining, 1.0), self._idle_check)

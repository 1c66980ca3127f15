"""Multiplexed SOFA Bolt / Dubbo proxying, for egress (app → providers) and ingress (peer → local app).

Theory of operation: a downstream connection's bytes go through the protocol's sans-IO decoder. A heartbeat
is answered here. Every request is resolved to a ``Route`` by the listener's ``RpcRouter`` (a fixed service
for a per-service port, the service the frame names on a shared listener), picks its endpoint through
``Route.pick_stream`` (so the route table applies; the ingress route's one endpoint is the local app) and
rides a shared, multiplexed upstream connection to it (``RpcUpstreamPool``: one connection per endpoint and
protocol, opened on first use). The request id is rewritten to one unique on that upstream connection; the
pending entry remembers the caller's connection and original id, so the response is patched back and
written to it. A one-way request leaves no pending entry.

Failures are answered in the protocol's own terms (``RpcCodec.error_reply``): no route or endpoint →
NO_UPSTREAM, a failed connect is retried once on another endpoint (egress only; ingress has one endpoint)
and then → UNAVAILABLE, an upstream connection lost → every request in flight on it → UNAVAILABLE at once,
no response within the frame's timeout (Bolt) or the sidecar's request timeout → TIMEOUT. A late response
(its entry gone) is dropped and counted. A malformed downstream frame closes that downstream connection
only, counted in ``plexus_downstream_rejects_total``.

Idle upstream connections are probed: when nothing has been read from one for ``rpc_heartbeat_interval``
the sidecar sends the protocol's heartbeat; nothing read within ``rpc_heartbeat_timeout`` after it → the
connection is closed, its requests fail at once (UNAVAILABLE, ``upstream_heartbeat_timeout``) and the next
request opens a fresh one. One timer per connection, never one per request.

Writes are batched: every byte for a connection goes through its out list (``_Batched.emit``) and is
written with one ``transport.write`` — at the end of the ``data_received`` that produced it (with 100
requests in flight one read brings dozens of frames, and a loopback ``write`` costs several µs), or, for
bytes produced elsewhere (timers, connects), by a ``call_soon`` flush. Local replies take the same list, so
the order on a connection is the order the bytes were produced. A re-id'd frame is queued as slices of
its ``raw`` copied once into that buffer, the new id packed over the old in place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Final, Protocol, cast

from plexus.codec import bolt, dubbo
from plexus.codec.bolt import BoltCodec
from plexus.codec.dubbo import DubboCodec
from plexus.codec.rpc import (
    SERVICE,
    FrameKind,
    LocalError,
    RpcCodec,
    RpcDecoder,
    RpcFrame,
    RpcProtocolError,
)
from plexus.core import reasons
from plexus.proxy import DataPlaneStats, Endpoint, ServiceStats
from plexus.transport.context import DataPlaneContext
from plexus.transport.routes import Route

log = logging.getLogger("plexus.dataplane")

CODECS: Final[dict[str, RpcCodec]] = {"bolt": BoltCodec(), "dubbo": DubboCodec()}
RPC_PROTOCOLS: Final = frozenset(CODECS)
# The protocol's status for a successful response: anything else is counted as an upstream error (5xx).
_OK_STATUS: Final = {"bolt": 0, "dubbo": 20}
# Requests one downstream connection may have in flight; past it new requests get OVERLOADED at once, so a
# caller cannot pin unbounded pending entries and timers in the sidecar.
MAX_PENDING_PER_DOWNSTREAM: Final = 10_000
# Request ids handed out on one upstream connection wrap below this. Bolt ids are 32-bit (Dubbo's 64-bit);
# 2**31 keeps the id positive for Java peers that read it as a signed int.
_ID_WRAP: Final = 2**31 - 1
# Status classes recorded in plexus_requests_total (the counters are shared with HTTP).
_STATUS_OK: Final = 200
_STATUS_UPSTREAM_ERROR: Final = 500
_STATUS_UNAVAILABLE: Final = 503
_STATUS_TIMEOUT: Final = 504
# Why an upstream connection was closed by its keepalive (core.reasons holds the HTTP-wide codes).
UPSTREAM_HEARTBEAT_TIMEOUT: Final = "upstream_heartbeat_timeout"


class RpcStats:
    """RPC-only counters beside ``DataPlaneStats``; rendered after it by the data plane."""

    __slots__ = ("heartbeat_timeouts", "heartbeats", "heartbeats_sent", "oneway", "unknown_responses")

    def __init__(self) -> None:
        self.heartbeats: dict[str, int] = {}  # service → heartbeats answered locally
        self.oneway: dict[str, int] = {}  # service → one-way requests forwarded
        self.unknown_responses: dict[str, int] = {}  # service → responses with no pending entry, dropped
        self.heartbeats_sent: dict[str, int] = {}  # service → heartbeats sent on idle upstream connections
        self.heartbeat_timeouts: dict[str, int] = {}  # service → upstream connections closed: no answer

    @staticmethod
    def bump(counter: dict[str, int], service: str) -> None:
        counter[service] = counter.get(service, 0) + 1

    def render(self) -> str:
        out: list[str] = []
        for name, counter, help_text in (
            ("plexus_rpc_heartbeats_total", self.heartbeats, "RPC heartbeats answered by the sidecar"),
            ("plexus_rpc_oneway_total", self.oneway, "One-way RPC requests forwarded"),
            (
                "plexus_rpc_unknown_responses_total",
                self.unknown_responses,
                "Upstream RPC responses with no pending request (late or unknown id), dropped",
            ),
            (
                "plexus_rpc_upstream_heartbeats_total",
                self.heartbeats_sent,
                "Heartbeats the sidecar sent on idle upstream RPC connections",
            ),
            (
                "plexus_rpc_upstream_heartbeat_timeouts_total",
                self.heartbeat_timeouts,
                "Upstream RPC connections closed because a heartbeat got no answer",
            ),
        ):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} counter")
            for service, count in sorted(counter.items()):
                escaped = service.replace("\\", "\\\\").replace('"', '\\"')
                out.append(f'{name}{{service="{escaped}"}} {count}')
        return "\n".join(out) + "\n"


# --- routing a frame ----------------------------------------------------------------------------------------


class RpcRouter(Protocol):
    """Which route a request frame takes: a ``Route``, or a reason code for a NO_UPSTREAM reply."""

    def resolve(self, frame: RpcFrame) -> Route | str: ...


class FixedRouter:
    """A per-service listener (egress or dedicated ingress port): every frame goes to one service's route."""

    __slots__ = ("find", "missing")

    def __init__(self, find: Callable[[], Route | str | None], missing: str) -> None:
        self.find = find
        self.missing = missing  # the reason when ``find`` has no route (None)

    def resolve(self, frame: RpcFrame) -> Route | str:
        route = self.find()
        return route if route is not None else self.missing


def service_names(frame: RpcFrame) -> tuple[str, ...]:
    """The registered names a request frame may be addressed to, most specific first.

    Bolt: ``sofa_head_target_service`` (SOFA's unique name ``interface:version[:uniqueId]``, what anthunder
    and MOSN route on), else the ``service`` header, then the bare interface. Dubbo: ``path:version`` when
    the request carries a version (a service registered per version), then the service path (interface).
    """
    headers = frame.headers
    interface = headers.get(SERVICE, "")
    if frame.protocol == bolt.PROTOCOL:
        named = headers.get(bolt.HEADER_TARGET_SERVICE) or headers.get(bolt.HEADER_SERVICE) or ""
        if named and named != interface:
            return (named, interface) if interface else (named,)
        return (interface,) if interface else ()
    version = headers.get(dubbo.HEADER_VERSION, "")
    if version and interface:
        return (f"{interface}:{version}", interface)
    return (interface,) if interface else ()


class NamedRouter:
    """A shared listener: a frame goes to the service it names (``service_names``), found by ``find``.

    ``find`` answers a route, or None for a name it does not know; a route whose protocol differs from the
    frame's is not taken (a Bolt frame is never written to an HTTP app)."""

    __slots__ = ("find",)

    def __init__(self, find: Callable[[str, str], Route | None]) -> None:
        self.find = find

    def resolve(self, frame: RpcFrame) -> Route | str:
        find = self.find
        for name in service_names(frame):
            route = find(name, frame.protocol)
            if route is not None:
                return route
        return reasons.UNKNOWN_SERVICE


# --- batched writes -----------------------------------------------------------------------------------------


class _Batched(asyncio.Protocol):
    """A connection whose writes are collected and written once per batch (see the module's docstring)."""

    pool: RpcUpstreamPool
    codec: RpcCodec
    transport: asyncio.Transport | None

    def _init_batch(self) -> None:
        # Bytes to write, appended in the order they are produced; a new buffer after each flush (the
        # transport may keep the old one until it is sent).
        self.out = bytearray()
        self.flush_due = False  # registered with the pool's batch or a call_soon
        self.id_offset = self.codec.id_offset
        self.pack_id_into = self.codec.id_struct.pack_into

    def emit(self, data: bytes) -> None:
        self.out += data
        if not self.flush_due:
            self.flush_due = True
            self.pool.flush_later(self)

    def emit_with_id(self, frame: RpcFrame, request_id: int) -> None:
        """``frame`` with ``request_id`` in place of its own; the id must be in the protocol's range (one
        the proxy made, or one decoded from a frame), so it is not checked again."""
        raw = frame.raw
        at = self.id_offset(raw)
        out = self.out
        if at < 0:
            out += self.codec.with_request_id(frame, request_id)
        else:
            start = len(out)
            out += raw  # the one copy of the frame; the id is patched in place
            self.pack_id_into(out, start + at, request_id)
        if not self.flush_due:
            self.flush_due = True
            self.pool.flush_later(self)

    def flush(self) -> None:
        self.flush_due = False
        out = self.out
        if not out:
            return
        self.out = bytearray()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(out)


# --- upstream side ------------------------------------------------------------------------------------------


class _Pending:
    __slots__ = ("down", "endpoint", "frame", "route", "started", "timer")

    def __init__(
        self, down: RpcDownstream, frame: RpcFrame, endpoint: Endpoint, route: Route, started: float
    ) -> None:
        self.down = down
        self.frame = frame
        self.endpoint = endpoint
        self.route = route
        self.started = started
        self.timer: asyncio.TimerHandle | None = None


class RpcUpstream(_Batched):
    """One multiplexed connection to an endpoint; requests queue while it connects."""

    def __init__(self, pool: RpcUpstreamPool, codec: RpcCodec, service: str, endpoint: Endpoint) -> None:
        self.pool = pool
        self.codec = codec
        self.service = service
        self.endpoint = endpoint
        # Responses need only their id, status and bytes here: their class and headers stay undecoded.
        self.decoder: RpcDecoder = codec.decoder(lazy_responses=True)
        self._init_batch()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, _Pending] = {}
        # (caller, request, route, already retried), while connecting
        self.queued: list[tuple[RpcDownstream, RpcFrame, Route, bool]] = []
        self.next_id = 0
        self.closed = False
        self.draining = False  # out of the pool: close once the requests in flight are answered
        self.last_read = 0.0  # loop time of the last bytes read: the keepalive's idea of "idle"
        self.beat_sent: float | None = None  # loop time of the heartbeat awaiting an answer
        self.keepalive: asyncio.TimerHandle | None = None
        self.lost_reason = reasons.UPSTREAM_RESET

    # -- sending ------------------------------------------------------------------------------------

    def send(self, down: RpcDownstream, frame: RpcFrame, route: Route, retried: bool) -> None:
        if self.transport is None:
            self.queued.append((down, frame, route, retried))
            return
        self._write(down, frame, route)

    def _write(self, down: RpcDownstream, frame: RpcFrame, route: Route) -> None:
        endpoint = self.endpoint
        endpoint.total += 1
        uid = self._next_id()
        if frame.kind is FrameKind.ONEWAY:
            self.emit_with_id(frame, uid)
            self.pool.rpc_stats.bump(self.pool.rpc_stats.oneway, route.service)
            return
        loop = self.pool.ctx.loop
        entry = _Pending(down, frame, endpoint, route, loop.time())
        timeout_ms = frame.timeout_ms
        # Bolt's 0 means "no deadline" and SOFA clients (anthunder) write -1 for it: use the sidecar's own.
        timeout = (
            timeout_ms / 1000.0 if timeout_ms and timeout_ms > 0 else self.pool.ctx.settings.request_timeout
        )
        entry.timer = loop.call_later(timeout, self._timed_out, uid)
        self.pending[uid] = entry
        endpoint.active += 1
        self.emit_with_id(frame, uid)

    def _next_id(self) -> int:
        uid = self.next_id
        while True:
            uid = uid + 1 if uid < _ID_WRAP else 1
            if uid not in self.pending:
                self.next_id = uid
                return uid

    def _finish(self, uid: int) -> _Pending | None:
        entry = self.pending.pop(uid, None)
        if entry is None:
            return None
        if entry.timer is not None:
            entry.timer.cancel()
        entry.endpoint.active -= 1
        entry.down.inflight -= 1
        if self.draining and not self.pending:
            self.close()
        return entry

    def _timed_out(self, uid: int) -> None:
        entry = self._finish(uid)
        if entry is None:
            return
        entry.endpoint.failures += 1
        reason = reasons.UPSTREAM_REQUEST_TIMEOUT
        entry.down.local_error(entry.frame, LocalError.TIMEOUT, reason, entry.started, entry.route)

    # -- keepalive ----------------------------------------------------------------------------------

    def _arm_keepalive(self, delay: float) -> None:
        self.keepalive = self.pool.ctx.loop.call_later(delay, self._on_keepalive)

    def _on_keepalive(self) -> None:
        self.keepalive = None
        transport = self.transport
        if self.closed or transport is None:
            return
        settings = self.pool.ctx.settings
        now = self.pool.ctx.loop.time()
        stats = self.pool.rpc_stats
        if self.beat_sent is not None:
            if self.last_read < self.beat_sent:
                # Nothing at all came back: the peer (or the path to it) is gone. Fail fast, reconnect.
                stats.bump(stats.heartbeat_timeouts, self.service)
                log.info("rpc upstream %s: heartbeat unanswered, closing", self.endpoint.key)
                self.lost_reason = UPSTREAM_HEARTBEAT_TIMEOUT
                transport.abort()
                return
            self.beat_sent = None
        idle = now - self.last_read
        interval = settings.rpc_heartbeat_interval
        if idle < interval:
            self._arm_keepalive(interval - idle)
            return
        self.beat_sent = now
        stats.bump(stats.heartbeats_sent, self.service)
        self.emit(self.codec.heartbeat(self._next_id()))
        self._arm_keepalive(settings.rpc_heartbeat_timeout)

    # -- connection events --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        stats = self.pool.ctx.stats
        stats.upstream_cx_total += 1
        stats.upstream_cx_active += 1
        interval = self.pool.ctx.settings.rpc_heartbeat_interval
        self.last_read = self.pool.ctx.loop.time()
        if interval > 0:
            self._arm_keepalive(interval)
        queued, self.queued = self.queued, []
        for down, frame, route, _ in queued:
            if down.closed:
                down.inflight -= 1
                continue
            self._write(down, frame, route)
            if frame.kind is FrameKind.ONEWAY:
                down.inflight -= 1  # written, nothing pending
        if self.draining and not self.pending:
            self.close()

    def connect_failed(self) -> None:
        """Every queued request goes once to another endpoint where its route retries (egress); else, or
        when already retried, it gets UNAVAILABLE."""
        self.closed = True
        self.endpoint.failures += 1
        self.pool.forget(self)
        queued, self.queued = self.queued, []
        now = self.pool.ctx.loop.time()
        for down, frame, route, retried in queued:
            down.inflight -= 1
            if down.closed:
                continue
            if retried or not route.retry:
                down.local_error(frame, LocalError.UNAVAILABLE, route.connect_fail_reason, now, route)
            else:
                self.pool.ctx.stats.upstream_rq_retry += 1
                down.dispatch(frame, route, exclude=self.endpoint, retried=True)

    def data_received(self, data: bytes) -> None:
        pool = self.pool
        self.last_read = pool.ctx.loop.time()
        pool.batching = True
        try:
            try:
                frames = self.decoder.feed(data)
            except RpcProtocolError as exc:
                frames = exc.frames
                log.debug("upstream %s broke %s: %s", self.endpoint.key, self.codec.name, exc)
                self._deliver(frames)
                if self.transport is not None:
                    self.lost_reason = reasons.UPSTREAM_PROTOCOL_ERROR
                    self.transport.abort()  # framing lost: every request in flight fails in connection_lost
                return
            self._deliver(frames)
        finally:
            pool.end_batch()

    def _deliver(self, frames: list[RpcFrame]) -> None:
        codec = self.codec
        for frame in frames:
            kind = frame.kind
            if kind is FrameKind.RESPONSE:
                entry = self._finish(frame.request_id)
                if entry is None:
                    self.pool.rpc_stats.bump(self.pool.rpc_stats.unknown_responses, self.service)
                    continue
                entry.down.respond(entry, frame)
            elif kind is FrameKind.HEARTBEAT:
                self.emit(codec.heartbeat_reply(frame))
            # heartbeat replies (the keepalive only needs "bytes came") and provider events need nothing

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.keepalive is not None:
            self.keepalive.cancel()
            self.keepalive = None
        stats = self.pool.ctx.stats
        stats.upstream_cx_active -= 1
        self.pool.forget(self)
        pending, self.pending = self.pending, {}
        now = self.pool.ctx.loop.time()
        reason = self.lost_reason
        for entry in pending.values():
            if entry.timer is not None:
                entry.timer.cancel()
            entry.endpoint.active -= 1
            entry.endpoint.failures += 1
            entry.down.inflight -= 1
            entry.down.local_error(entry.frame, LocalError.UNAVAILABLE, reason, now, entry.route)

    def close(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()


class RpcUpstreamPool:
    """Shared multiplexed connections, one per (protocol, endpoint address)."""

    def __init__(self, ctx: DataPlaneContext, rpc_stats: RpcStats) -> None:
        self.ctx = ctx
        self.rpc_stats = rpc_stats
        self.conns: dict[tuple[str, str], RpcUpstream] = {}
        self.draining: set[RpcUpstream] = set()  # dropped endpoints' connections finishing their requests
        self.downstreams: set[RpcDownstream] = set()
        # Connections with bytes to write when the current data_received ends (``batching``: one runs).
        self.batching = False
        self.dirty: list[_Batched] = []

    def flush_later(self, conn: _Batched) -> None:
        if self.batching:
            self.dirty.append(conn)
        else:
            self.ctx.loop.call_soon(conn.flush)

    def end_batch(self) -> None:
        self.batching = False
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for conn in dirty:
                conn.flush()

    def get(self, codec: RpcCodec, service: str, endpoint: Endpoint) -> RpcUpstream:
        key = (codec.name, endpoint.key)
        conn = self.conns.get(key)
        if conn is not None and not conn.closed:
            return conn
        conn = RpcUpstream(self, codec, service, endpoint)
        self.conns[key] = conn
        self.ctx.loop.create_task(self._connect(conn))  # once per upstream connection, not per request
        return conn

    async def _connect(self, conn: RpcUpstream) -> None:
        host, port = conn.endpoint.address
        try:
            await asyncio.wait_for(
                self.ctx.loop.create_connection(lambda: conn, host, port), self.ctx.settings.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            self.ctx.stats.upstream_cx_connect_fail += 1
            log.debug("rpc connect to %s failed: %r", conn.endpoint.key, exc)
            conn.connect_failed()

    def forget(self, conn: RpcUpstream) -> None:
        key = (conn.codec.name, conn.endpoint.key)
        if self.conns.get(key) is conn:
            del self.conns[key]
        if conn.closed:
            self.draining.discard(conn)

    def drop_endpoint(self, key: str) -> None:
        """The endpoint left its cluster: no new requests go to its connections; each closes once the
        requests in flight on it are answered (a provider withdrawn for a drain keeps serving them)."""
        for conn in [c for (_, k), c in self.conns.items() if k == key]:
            self.forget(conn)
            conn.draining = True
            self.draining.add(conn)
            if not conn.pending and not conn.queued:
                conn.close()

    def close_all(self) -> None:
        for down in list(self.downstreams):
            down.close()
        for conn in list(self.conns.values()) + list(self.draining):
            conn.close()


# --- downstream side ----------------------------------------------------------------------------------------


class FrameLookup:
    """``proxy.stream.lookup_from_mapping`` for one frame at a time, reused: one per downstream connection
    instead of a closure per request (the route asks for headers only when a table or hash needs them).
    Valid during the ``Route.pick_stream`` call it is passed to; routes do not keep it."""

    __slots__ = ("headers", "lowered")

    def __init__(self) -> None:
        self.headers: Mapping[str, str] = {}
        self.lowered: dict[str, str] | None = None

    def reset(self, headers: Mapping[str, str]) -> FrameLookup:
        self.headers = headers
        self.lowered = None
        return self

    def __call__(self, name: str) -> str | None:
        value = self.headers.get(name)
        if value is not None:
            return value
        lowered = self.lowered
        if lowered is None:
            lowered = self.lowered = {k.lower(): v for k, v in self.headers.items()}
        return lowered.get(name)


class RpcDownstream(_Batched):
    """A caller's connection that speaks Bolt or Dubbo: an app on an egress port, or a peer sidecar (or a
    caller outside the mesh) on an ingress port. ``service``/``stats`` label what cannot be routed."""

    def __init__(
        self,
        pool: RpcUpstreamPool,
        codec: RpcCodec,
        service: str,
        router: RpcRouter,
        stats: ServiceStats,
    ) -> None:
        self.pool = pool
        self.codec = codec
        self.service = service
        self.router = router
        self.stats = stats
        self.decoder: RpcDecoder = codec.decoder()
        self.transport: asyncio.Transport | None = None
        self._init_batch()
        self.ok_status = _OK_STATUS.get(codec.name)
        self.inflight = 0  # requests queued or pending upstream for this caller
        self.closed = False
        self.lookup = FrameLookup()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.pool.downstreams.add(self)
        stats: DataPlaneStats = self.pool.ctx.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1

    def data_received(self, data: bytes) -> None:
        pool = self.pool
        pool.batching = True
        try:
            try:
                frames = self.decoder.feed(data)
            except RpcProtocolError as exc:
                for frame in exc.frames:  # the whole frames before the bad bytes still count
                    self._on_frame(frame)
                pool.ctx.stats.downstream_reject(exc.reason)
                log.debug("downstream broke %s on %s: %s", self.codec.name, self.service, exc)
                self.close()  # after writing the replies those frames already have
                return
            for frame in frames:
                self._on_frame(frame)
        finally:
            pool.end_batch()

    def _on_frame(self, frame: RpcFrame) -> None:
        kind = frame.kind
        if kind is FrameKind.REQUEST or kind is FrameKind.ONEWAY:
            route = self.router.resolve(frame)
            if isinstance(route, str):
                self.local_error(frame, LocalError.NO_UPSTREAM, route, self.pool.ctx.loop.time(), None)
                return
            if kind is FrameKind.REQUEST and self.inflight >= MAX_PENDING_PER_DOWNSTREAM:
                now = self.pool.ctx.loop.time()
                self.local_error(frame, LocalError.OVERLOADED, "rpc_too_many_pending", now, route)
                return
            self.dispatch(frame, route, exclude=None, retried=False)
        elif kind is FrameKind.HEARTBEAT:
            self.pool.rpc_stats.bump(self.pool.rpc_stats.heartbeats, self.service)
            self.emit(self.codec.heartbeat_reply(frame))
        # responses, heartbeat replies and events from a caller have nothing to answer

    def dispatch(self, frame: RpcFrame, route: Route, exclude: Endpoint | None, retried: bool) -> None:
        picked = route.pick_stream(self.lookup.reset(frame.headers), exclude)
        if picked is None or isinstance(picked, str) or (retried and picked is exclude):
            if isinstance(picked, str):
                reason, error = picked, LocalError.NO_UPSTREAM
            elif retried:
                reason, error = route.connect_fail_reason, LocalError.UNAVAILABLE
            else:
                reason, error = reasons.NO_HEALTHY_UPSTREAM, LocalError.NO_UPSTREAM
            self.local_error(frame, error, reason, self.pool.ctx.loop.time(), route)
            return
        endpoint = picked
        self.inflight += 1
        conn = self.pool.get(self.codec, route.service, endpoint)
        conn.send(self, frame, route, retried)
        if frame.kind is FrameKind.ONEWAY and conn.transport is not None:
            self.inflight -= 1  # written at once, nothing pending

    def respond(self, entry: _Pending, response: RpcFrame) -> None:
        """Pass ``response`` to the caller under the id its request came with."""
        entry.route.stats.record(
            _STATUS_OK if response.status == self.ok_status else _STATUS_UPSTREAM_ERROR,
            (self.pool.ctx.loop.time() - entry.started) * 1000.0,
        )
        if not self.closed:
            self.emit_with_id(response, entry.frame.request_id)

    def local_error(
        self, frame: RpcFrame, error: LocalError, reason: str, started: float, route: Route | None
    ) -> None:
        """Answer ``frame`` here, in its protocol's terms; a one-way request is only counted."""
        if route is not None:
            service = route.service
        else:  # a shared listener's connection has no service of its own: name the one the frame asked for
            service = self.service or next(iter(service_names(frame)), "unknown")
        stats = route.stats if route is not None else self.stats
        self.pool.ctx.stats.local_reply(reason, service)
        status = _STATUS_TIMEOUT if error is LocalError.TIMEOUT else _STATUS_UNAVAILABLE
        stats.record(status, (self.pool.ctx.loop.time() - started) * 1000.0)
        if frame.kind is not FrameKind.REQUEST or self.closed or self.transport is None:
            return
        message = reasons.error_header_value(reason, service)
        self.emit(self.codec.error_reply(frame, error, message))

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests in flight stay pending upstream; their answers are dropped when they come.
        self.closed = True
        self.pool.downstreams.discard(self)
        self.pool.ctx.stats.downstream_cx_active -= 1

    def close(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()

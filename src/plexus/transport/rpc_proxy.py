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

On a policed route (``Route.policed``) a request carries its policy state (``_RpcGov``, made only then):
admission by the gate (OVERLOADED: Bolt SERVER_THREADPOOL_BUSY, Dubbo SERVER_THREADPOOL_EXHAUSTED), the
rule matched once, its fault (delay; abort as the nearest protocol status), the breaker (OVERLOADED
``upstream_overflow``), a deadline of the rule's timeout bounded by the frame's own (Bolt), per-try
timeouts, outlier detection fed with each try's result. RPC calls are not idempotent by default: retries
follow failures before the frame reached an app (connect failure, a provider sidecar's refusal) unless the
rule's retryOn is given explicitly, which then also retries resets and timeouts (``reset``) and response
statuses (as the HTTP status they count as: ``5xx``, ``gateway-error``...). Mirroring is HTTP's only.

Writes are batched: every byte for a connection goes through its out list (``_Batched.emit``) and is
written with one ``transport.write`` — at the end of the ``data_received`` that produced it (with 100
requests in flight one read brings dozens of frames, and a loopback ``write`` costs several µs), or, for
bytes produced elsewhere (timers, connects), by a ``call_soon`` flush. Local replies take the same list, so
the order on a connection is the order the bytes were produced. A re-id'd frame is queued as slices of
its ``raw`` copied once into that buffer, the new id packed over the old in place.

Tracing: a Bolt request's W3C ``traceparent`` lives in its header map (where OpenTelemetry's propagators
put it in any string map). As for HTTP (plexus.proxy.tracing), a sampled one makes the request a span of
this hop, the next hop getting this hop's span id as its parent (``RpcCodec.set_header``: the one entry
rewritten, the rest of the frame as it came); an unsampled valid one is forwarded as it came (no span of
this hop is ever recorded for it); an invalid one is replaced by a new trace. Unlike HTTP, a request
without one is not given one: writing a header into every frame cost 3.4 µs a request, a quarter of a
sidecar's CPU for a Bolt request (bench/RESULTS.md), and SOFA RPC apps name their calls by ``sofaTraceId``,
which stays the entries' request id. Dubbo requests carry their context in attachments after the
arguments, which the proxy never decodes: their entries have no trace ids.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, cast

from plexus.codec import bolt, dubbo
from plexus.codec.bolt import BoltCodec, BoltStatus
from plexus.codec.dubbo import DubboCodec, DubboStatus
from plexus.codec.rpc import (
    RPC_METHOD,
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
from plexus.proxy.resilience import DEFAULT_RETRY_ON
from plexus.proxy.route_table import Rule
from plexus.proxy.telemetry import DOWNSTREAM_DISCONNECT, UNKNOWN, RequestEntry, response_flag
from plexus.proxy.tracing import TRACEPARENT, parse_traceparent
from plexus.transport.context import DataPlaneContext
from plexus.transport.h2_stream import pick_untried
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
# What SOFA RPC clients put in a Bolt request's header map: the trace id (the request's id in entries, so
# `plexus explain` finds it by the id the app logs) and the calling app (the inbound peer workload). The
# proxy adds no header to a frame (it only rewrites a sampled traceparent: see Tracing above), so a request
# without a trace id gets an id of its own that only this sidecar's entries carry.
SOFA_TRACE_ID: Final = "rpc_trace_context.sofaTraceId"
SOFA_CALLER_APP: Final = "rpc_trace_context.sofaCallerApp"
_UNTRACED: Final = ("", "", "", False)  # a request's trace ids when it has no trace context here

# -- the request policy in RPC terms ---------------------------------------------------------------------
# How a governed try failed (RpcDownstream.retry_governed): no connection; refused unseen by a provider
# sidecar; after the frame was written (reset, a try's timeout); a response status retryOn names. RPC calls
# are not idempotent by default: only the first two are retried unless the rule's retryOn is explicit.
RETRY_CONNECT: Final = 1
RETRY_REFUSED: Final = 2
RETRY_AFTER_SEND: Final = 3
RETRY_STATUS: Final = 4
RETRY_BACKOFF_BASE: Final = 0.025  # Envoy's default retry backoff: 25 ms base, full jitter, at most 10x
RETRY_BACKOFF_MAX: Final = 0.25
# A response status as the HTTP status it counts as (outlier detection, retryOn's status classes): busy,
# unreachable and "no such service" are 503 as the mesh's own replies are, timeouts 504, codec errors 400.
HTTP_FOR_STATUS: Final[dict[str, dict[int, int]]] = {
    "bolt": {
        BoltStatus.SUCCESS: 200,
        BoltStatus.SERVER_THREADPOOL_BUSY: 503,
        BoltStatus.ERROR_COMM: 503,
        BoltStatus.NO_PROCESSOR: 503,
        BoltStatus.TIMEOUT: 504,
        BoltStatus.CLIENT_SEND_ERROR: 503,
        BoltStatus.CODEC_EXCEPTION: 400,
        BoltStatus.CONNECTION_CLOSED: 503,
        BoltStatus.SERVER_DESERIAL_EXCEPTION: 400,
    },  # ERROR, SERVER_EXCEPTION, UNKNOWN, SERVER_SERIAL_EXCEPTION: 500
    "dubbo": {
        DubboStatus.OK: 200,
        DubboStatus.CLIENT_TIMEOUT: 504,
        DubboStatus.SERVER_TIMEOUT: 504,
        DubboStatus.BAD_REQUEST: 400,
        DubboStatus.SERVICE_NOT_FOUND: 503,
        DubboStatus.SERVER_ERROR: 503,
        DubboStatus.CLIENT_ERROR: 400,
        DubboStatus.SERVER_THREADPOOL_EXHAUSTED: 503,
    },  # BAD_RESPONSE, SERVICE_ERROR: 500
}
# The statuses a sidecar's local reply for "no app took it" carries (LocalError NO_UPSTREAM, UNAVAILABLE);
# with a reason of reasons.RETRIABLE_BEFORE_SEND in its message, the request never reached an app.
REFUSAL_STATUSES: Final[dict[str, frozenset[int]]] = {
    "bolt": frozenset({BoltStatus.NO_PROCESSOR, BoltStatus.ERROR_COMM}),
    "dubbo": frozenset({DubboStatus.SERVICE_NOT_FOUND, DubboStatus.SERVER_ERROR}),
}
_REFUSAL_MARKERS: Final = tuple(reason.encode() for reason in sorted(reasons.RETRIABLE_BEFORE_SEND))
# A fault abort's HTTP status in the protocol's terms: (table, other 4xx, other 5xx).
FAULT_STATUS: Final[dict[str, tuple[dict[int, int], int, int]]] = {
    "bolt": (
        {
            400: BoltStatus.CODEC_EXCEPTION,
            404: BoltStatus.NO_PROCESSOR,
            429: BoltStatus.SERVER_THREADPOOL_BUSY,
            500: BoltStatus.SERVER_EXCEPTION,
            502: BoltStatus.ERROR_COMM,
            503: BoltStatus.ERROR_COMM,
            504: BoltStatus.TIMEOUT,
        },
        BoltStatus.ERROR,
        BoltStatus.SERVER_EXCEPTION,
    ),
    "dubbo": (
        {
            400: DubboStatus.BAD_REQUEST,
            404: DubboStatus.SERVICE_NOT_FOUND,
            429: DubboStatus.SERVER_THREADPOOL_EXHAUSTED,
            500: DubboStatus.SERVICE_ERROR,
            502: DubboStatus.SERVER_ERROR,
            503: DubboStatus.SERVER_ERROR,
            504: DubboStatus.SERVER_TIMEOUT,
        },
        DubboStatus.BAD_REQUEST,
        DubboStatus.SERVER_ERROR,
    ),
}
ERROR_REPLY: Final[dict[str, Callable[[RpcFrame, int, str], bytes]]] = {
    "bolt": bolt.error_reply,
    "dubbo": dubbo.error_reply,
}


def _refused_unseen(raw: bytes) -> bool:
    """A sidecar's reply saying no app saw the request (its message names a retriable-before-send reason)."""
    return any(marker in raw for marker in _REFUSAL_MARKERS)


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
    __slots__ = ("down", "endpoint", "frame", "gov", "route", "started", "timer")

    def __init__(
        self,
        down: RpcDownstream,
        frame: RpcFrame,
        endpoint: Endpoint,
        route: Route,
        started: float,
        gov: _RpcGov | None,
    ) -> None:
        self.down = down
        self.frame = frame
        self.endpoint = endpoint
        self.route = route
        self.started = started
        self.timer: asyncio.TimerHandle | None = None
        self.gov = gov  # the request policy's state (see RpcDownstream.govern), None on the built-in path


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
        # (caller, request, route, already retried, policy state), while connecting
        self.queued: list[tuple[RpcDownstream, RpcFrame, Route, bool, _RpcGov | None]] = []
        self.next_id = 0
        self.closed = False
        self.draining = False  # out of the pool: close once the requests in flight are answered
        self.last_read = 0.0  # loop time of the last bytes read: the keepalive's idea of "idle"
        self.beat_sent: float | None = None  # loop time of the heartbeat awaiting an answer
        self.keepalive: asyncio.TimerHandle | None = None
        self.lost_reason = reasons.UPSTREAM_RESET

    # -- sending ------------------------------------------------------------------------------------

    def send(
        self, down: RpcDownstream, frame: RpcFrame, route: Route, retried: bool, gov: _RpcGov | None = None
    ) -> bool:
        """Write ``frame`` now, or queue it while connecting; False: a governed request found the pending
        queue (connectionPool's http1MaxPendingRequests) full and was not queued."""
        if self.transport is None:
            if gov is not None and gov.breaker is not None:
                if not gov.breaker.start_pending():
                    return False
                gov.pending = True
            self.queued.append((down, frame, route, retried, gov))
            return True
        if gov is None:
            self._write(down, frame, route)
        else:
            self._write_governed(down, frame, route, gov)
        return True

    def _write_governed(self, down: RpcDownstream, frame: RpcFrame, route: Route, gov: _RpcGov) -> None:
        """``_write`` for a request under a policy: its try's deadline is the soonest of the rule's timeout
        (overall), its per-try timeout and the frame's own timeout."""
        if gov.pending:
            gov.end_pending()
        endpoint = self.endpoint
        endpoint.total += 1
        uid = self._next_id()
        loop = self.pool.ctx.loop
        now = loop.time()
        entry = _Pending(down, frame, endpoint, route, gov.started, gov)
        deadline = gov.overall
        per_try = gov.per_try
        gov.try_deadline = 0.0
        if per_try is not None and now + per_try < deadline:
            gov.try_deadline = deadline = now + per_try
        gov.watch(route, endpoint)
        entry.timer = loop.call_later(max(deadline - now, 0.0), self._timed_out, uid)
        self.pending[uid] = entry
        endpoint.active += 1
        self.emit_with_id(frame, uid)

    def _write(self, down: RpcDownstream, frame: RpcFrame, route: Route) -> None:
        endpoint = self.endpoint
        endpoint.total += 1
        uid = self._next_id()
        if frame.kind is FrameKind.ONEWAY:
            self.emit_with_id(frame, uid)
            self.pool.rpc_stats.bump(self.pool.rpc_stats.oneway, route.service)
            return
        loop = self.pool.ctx.loop
        entry = _Pending(down, frame, endpoint, route, loop.time(), None)
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
        gov = entry.gov
        if gov is not None:
            gov.outcome(504)
            if gov.try_deadline:  # this try's per-try timeout, before the request's own deadline
                if entry.down.retry_governed(entry.frame, entry.route, gov, entry.endpoint, RETRY_AFTER_SEND):
                    return
                reason = reasons.UPSTREAM_PER_TRY_TIMEOUT
        entry.down.local_error(
            entry.frame, LocalError.TIMEOUT, reason, entry.started, entry.route, gov, entry.endpoint
        )

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
        for down, frame, route, _, gov in queued:
            if down.closed:
                down.inflight -= 1
                if gov is not None:
                    gov.release(down)
                continue
            if gov is None:
                self._write(down, frame, route)
            else:
                self._write_governed(down, frame, route, gov)
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
        for down, frame, route, retried, gov in queued:
            down.inflight -= 1
            if gov is not None:
                if gov.pending:
                    gov.end_pending()
                gov.outcome(503)  # a connect failure: a local-origin 5xx of the endpoint (Envoy)
                if down.closed:
                    gov.release(down)
                    continue
                if not down.retry_governed(frame, route, gov, self.endpoint, RETRY_CONNECT):
                    reason = route.connect_fail_reason
                    down.local_error(
                        frame, LocalError.UNAVAILABLE, reason, gov.started, route, gov, self.endpoint
                    )
                continue
            if down.closed:
                continue
            if retried or not route.retry:
                reason = route.connect_fail_reason
                down.local_error(frame, LocalError.UNAVAILABLE, reason, now, route, None, self.endpoint)
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
            gov = entry.gov
            if gov is not None:
                gov.outcome(503)
                # The frame was written: the app may have run it. Retried only when retryOn names resets.
                if entry.down.retry_governed(entry.frame, entry.route, gov, entry.endpoint, RETRY_AFTER_SEND):
                    continue
            entry.down.local_error(
                entry.frame, LocalError.UNAVAILABLE, reason, now, entry.route, gov, entry.endpoint
            )

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
        self.writes_headers = codec.writes_headers  # (trace context: Bolt's, not Dubbo's)

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
            if self.writes_headers:
                traceparent = frame.headers.get(TRACEPARENT)
                if traceparent is not None:
                    self._trace(frame, traceparent)
            route = self.router.resolve(frame)
            if isinstance(route, str):
                self.local_error(frame, LocalError.NO_UPSTREAM, route, self.pool.ctx.loop.time(), None)
                return
            if kind is FrameKind.REQUEST and self.inflight >= MAX_PENDING_PER_DOWNSTREAM:
                now = self.pool.ctx.loop.time()
                self.local_error(frame, LocalError.OVERLOADED, "rpc_too_many_pending", now, route)
                return
            if route.policed:
                self.govern(frame, route)
                return
            self.dispatch(frame, route, exclude=None, retried=False)
        elif kind is FrameKind.HEARTBEAT:
            self.pool.rpc_stats.bump(self.pool.rpc_stats.heartbeats, self.service)
            self.emit(self.codec.heartbeat_reply(frame))
        # responses, heartbeat replies and events from a caller have nothing to answer

    def _trace(self, frame: RpcFrame, traceparent: str) -> None:
        """The request's trace context at this hop (see the module's docstring): ``frame.trace`` set, and
        the ``traceparent`` the next hop gets written into the frame when it is not the one that came."""
        tracer = self.stats.telemetry.tracer
        parsed = parse_traceparent(traceparent)
        if parsed is not None and not parsed[2]:
            frame.trace = (parsed[0], parsed[1], "", False)  # forwarded as it came
            return
        if parsed is not None:
            trace_id, parent, _ = parsed
            span_id = tracer.new_span_id()
            flags = traceparent.strip().lower().split("-")[3]  # (a later version's: read as 00's)
            value = f"00-{trace_id}-{span_id}-{flags}"
            trace = (trace_id, span_id, parent, True)
        else:  # not a traceparent: a new trace in its place, sampled at this sidecar's rate
            start = tracer.begin(None, frame.headers.get(SOFA_TRACE_ID))
            value = next(v for name, v in start.headers if name == TRACEPARENT)
            trace = (start.trace_id, start.span_id, "", start.sampled)
        if self.codec.set_header(frame, TRACEPARENT, value):
            frame.trace = trace
        # (else a map already at Bolt's 64 KiB: forwarded as it came, with no trace)

    def dispatch(
        self,
        frame: RpcFrame,
        route: Route,
        exclude: Endpoint | None,
        retried: bool,
        gov: _RpcGov | None = None,
    ) -> None:
        if gov is None:
            picked = route.pick_stream(self.lookup.reset(frame.headers), exclude)
        else:
            lookup = self.lookup.reset(frame.headers)
            picked = route.pick_in(gov.rule, lookup, exclude)
            if exclude is not None:
                tried = gov.tried
                if tried is None:
                    tried = gov.tried = []
                tried.append(exclude)
                picked = pick_untried(route, gov.rule, lookup, exclude, picked, tried)
        if picked is None or isinstance(picked, str) or (retried and picked is exclude):
            if isinstance(picked, str):
                reason, error = picked, LocalError.NO_UPSTREAM
            elif retried:
                reason, error = route.connect_fail_reason, LocalError.UNAVAILABLE
            else:
                reason, error = reasons.NO_HEALTHY_UPSTREAM, LocalError.NO_UPSTREAM
            last = exclude if retried else None  # a retry that found nowhere else: the last try's endpoint
            self.local_error(frame, error, reason, self.pool.ctx.loop.time(), route, gov, last)
            return
        endpoint = picked
        self.inflight += 1
        conn = self.pool.get(self.codec, route.service, endpoint)
        if not conn.send(self, frame, route, retried, gov):
            self.inflight -= 1
            assert gov is not None
            self.local_error(frame, LocalError.OVERLOADED, reasons.UPSTREAM_OVERFLOW, gov.started, route, gov)
            return
        if frame.kind is FrameKind.ONEWAY and conn.transport is not None:
            self.inflight -= 1  # written at once, nothing pending

    # -- the request policy (a policed route: see Route.policed) ----------------------------------------

    def govern(self, frame: RpcFrame, route: Route) -> None:
        """A request on a policed route: admission (gate), the rule matched once, its fault, the breaker,
        then the first try with the request's deadline (the rule's timeout, bounded by the frame's own)."""
        loop = self.pool.ctx.loop
        now = loop.time()
        lookup = self.lookup.reset(frame.headers)
        gate = route.gate
        admitted = 0.0
        if gate is not None:
            refused = gate.admit(lookup)
            if refused is not None:
                self.local_error(frame, LocalError.OVERLOADED, refused, now, route)  # busy / limited
                return
            admitted = gate.clock()
        if frame.kind is FrameKind.ONEWAY:
            # No answer comes: nothing to time, retry or count; admitted and forwarded as before.
            if gate is not None:
                gate.done(admitted, lookup)
            self.dispatch(frame, route, exclude=None, retried=False)
            return
        rule = route.match_rule(lookup)
        policy = route.policy_of(rule) if not isinstance(rule, str) else None
        cluster = route.cluster
        breaker = None
        if cluster is not None and (cluster.breaker.limited or policy is not None):
            breaker = cluster.breaker
        gov = _RpcGov(gate, admitted, None if isinstance(rule, str) else rule, policy, breaker, now)
        gov.detects = cluster is not None
        gov.headers = frame.headers
        if isinstance(rule, str):
            self.local_error(frame, LocalError.NO_UPSTREAM, rule, now, route, gov)
            return
        timeout_ms = frame.timeout_ms
        # The frame's own timeout (Bolt; 0 means "no deadline" and SOFA clients write -1 for it) bounds the
        # rule's; with neither, the sidecar's request timeout.
        timeout = timeout_ms / 1000.0 if timeout_ms and timeout_ms > 0 else None
        fault = delay = None
        if policy is not None:
            if policy.timeout is not None:
                timeout = policy.timeout if timeout is None else min(timeout, policy.timeout)
            gov.per_try = policy.per_try_timeout
            fault = policy.fault
        if timeout is None:
            timeout = self.pool.ctx.settings.request_timeout
        if fault is not None:
            delay = fault.delay()
        gov.overall = now + (delay or 0.0) + timeout
        abort = fault.abort() if fault is not None else None
        if delay:
            self.inflight += 1  # held here: counts against the caller's pending limit
            loop.call_later(delay, self._after_delay, frame, route, gov, abort)
            return
        if abort is not None:
            self._fault_reply(frame, route, gov, abort)
            return
        self._start(frame, route, gov)

    def _after_delay(self, frame: RpcFrame, route: Route, gov: _RpcGov, abort: int | None) -> None:
        self.inflight -= 1
        if self.closed:
            gov.release(self)
            return
        if abort is not None:
            self._fault_reply(frame, route, gov, abort)
        else:
            self._start(frame, route, gov)

    def _start(self, frame: RpcFrame, route: Route, gov: _RpcGov) -> None:
        breaker = gov.breaker
        if breaker is not None:
            if not breaker.start_request():
                overflow = reasons.UPSTREAM_OVERFLOW
                self.local_error(frame, LocalError.OVERLOADED, overflow, gov.started, route, gov)
                return
            gov.requested = True
        self.dispatch(frame, route, exclude=None, retried=False, gov=gov)

    def _fault_reply(self, frame: RpcFrame, route: Route, gov: _RpcGov, status: int) -> None:
        """A fault abort in the protocol's own terms: the rule's HTTP status as the nearest Bolt response
        status or Dubbo status byte (see FAULT_STATUS)."""
        self.pool.ctx.stats.local_reply(reasons.FAULT_INJECTED, route.service)
        gov.release(self)
        reply = b""
        if not self.closed and self.transport is not None:
            table, fallback4, fallback5 = FAULT_STATUS[self.codec.name]
            raw = table.get(status, fallback4 if status < 500 else fallback5)
            message = reasons.error_header_value(reasons.FAULT_INJECTED, route.service)
            reply = ERROR_REPLY[self.codec.name](frame, raw, message)
        self.report(route.stats, frame, gov.started, status, reasons.FAULT_INJECTED, len(reply), None, gov)
        if reply:
            self.emit(reply)

    def retry_governed(
        self, frame: RpcFrame, route: Route, gov: _RpcGov, failed: Endpoint, kind: int
    ) -> bool:
        """Send a governed request again after its try failed in way ``kind`` when its policy allows it
        (retries left, retryOn, its deadline, the retry budget); False: answer the failure as it is."""
        if self.closed or not gov.allows(kind) or self.pool.ctx.loop.time() >= gov.overall:
            return False
        if not gov.start_retry(kind):
            self.pool.ctx.stats.local_reply(reasons.RETRY_BUDGET_EXHAUSTED, route.service)
            return False
        self.pool.ctx.stats.upstream_rq_retry += 1
        if kind in (RETRY_CONNECT, RETRY_REFUSED):
            self.dispatch(frame, route, exclude=failed, retried=True, gov=gov)
        else:
            # Envoy's backoff (full jitter over 25 ms, doubled per retry): retries do not arrive in a burst.
            done = gov.policy.retries - gov.retries_left
            pause = random.random() * min(RETRY_BACKOFF_BASE * (1 << max(done - 1, 0)), RETRY_BACKOFF_MAX)
            self.inflight += 1
            self.pool.ctx.loop.call_later(pause, self._retry_later, frame, route, gov, failed)
        return True

    def _retry_later(self, frame: RpcFrame, route: Route, gov: _RpcGov, failed: Endpoint) -> None:
        self.inflight -= 1
        if self.closed:
            gov.release(self)
            return
        self.dispatch(frame, route, exclude=failed, retried=True, gov=gov)

    def respond(self, entry: _Pending, response: RpcFrame) -> None:
        """Pass ``response`` to the caller under the id its request came with."""
        gov = entry.gov
        if gov is not None and self._governed_response(entry, response, gov):
            return  # retried
        status = _STATUS_OK if response.status == self.ok_status else _STATUS_UPSTREAM_ERROR
        size = len(response.raw)
        self.report(entry.route.stats, entry.frame, entry.started, status, "", size, entry.endpoint, gov)
        if not self.closed:
            self.emit_with_id(response, entry.frame.request_id)
        if gov is not None:
            gov.release(self)

    def _governed_response(self, entry: _Pending, response: RpcFrame, gov: _RpcGov) -> bool:
        """Count a governed try's response for outlier detection; retry it (True) when a provider sidecar
        refused it unseen, or when the rule's retryOn was given explicitly and names the status's class."""
        status = response.status
        if status == self.ok_status:
            gov.outcome(200)
            return False
        name = self.codec.name
        counted = HTTP_FOR_STATUS[name].get(status or 0, 500)
        gov.outcome(counted)
        if status in REFUSAL_STATUSES[name] and _refused_unseen(response.raw):
            return self.retry_governed(entry.frame, entry.route, gov, entry.endpoint, RETRY_REFUSED)
        policy = gov.policy
        if policy is None or not gov.explicit or not policy.retry_on.status(counted):
            return False
        return self.retry_governed(entry.frame, entry.route, gov, entry.endpoint, RETRY_STATUS)

    def local_error(
        self,
        frame: RpcFrame,
        error: LocalError,
        reason: str,
        started: float,
        route: Route | None,
        gov: _RpcGov | None = None,
        endpoint: Endpoint | None = None,
    ) -> None:
        """Answer ``frame`` here, in its protocol's terms; a one-way request is only counted. ``gov``: the
        request's policy state, released now that it is answered; ``endpoint``: where its try went, if
        anywhere."""
        if gov is not None:
            gov.release(self)
        if route is not None:
            service = route.service
        else:  # a shared listener's connection has no service of its own: name the one the frame asked for
            service = self.service or next(iter(service_names(frame)), "unknown")
        stats = route.stats if route is not None else self.stats
        self.pool.ctx.stats.local_reply(reason, service)
        status = _STATUS_TIMEOUT if error is LocalError.TIMEOUT else _STATUS_UNAVAILABLE
        reply = b""
        if frame.kind is FrameKind.REQUEST and not self.closed and self.transport is not None:
            message = reasons.error_header_value(reason, service)
            reply = self.codec.error_reply(frame, error, message)
        self.report(stats, frame, started, status, reason, len(reply), endpoint, gov)
        if reply:
            self.emit(reply)

    def report(
        self,
        stats: ServiceStats,
        frame: RpcFrame,
        started: float,
        status: int,
        reason: str,
        response_bytes: int,
        endpoint: Endpoint | None,
        gov: _RpcGov | None,
    ) -> None:
        """One request/response pair's RequestEntry (plexus.proxy.telemetry): counted by ``stats.done``,
        then handed to the telemetry sinks, with the request's trace ids at this hop (``_trace``; empty
        when it came without a traceparent, and for Dubbo). A caller whose connection closed before its
        answer is flagged DC."""
        headers = frame.headers
        outbound = stats.direction == "egress"
        if outbound:
            peer = (endpoint.instance.workload or UNKNOWN) if endpoint is not None else UNKNOWN
        else:
            peer = headers.get(SOFA_CALLER_APP) or UNKNOWN
        request_id = headers.get(SOFA_TRACE_ID) or stats.telemetry.tracer.new_request_id()
        attempts = 1
        if gov is not None:
            attempts += (gov.policy.retries if gov.policy is not None else 1) - gov.retries_left
        trace_id, span_id, parent_span_id, sampled = frame.trace or _UNTRACED
        stats.done(
            RequestEntry(
                stats.traffic_direction,
                stats.service,
                frame.protocol,
                headers.get(RPC_METHOD, ""),
                headers.get(SERVICE, ""),
                started,
                (self.pool.ctx.loop.time() - started) * 1000.0,
                status,
                reason=reason,
                flags=DOWNSTREAM_DISCONNECT if self.closed and not reason else response_flag(reason),
                request_bytes=len(frame.raw),
                response_bytes=response_bytes,
                peer_workload=peer,
                upstream=endpoint.key if endpoint is not None else "",
                request_id=request_id,
                trace_id=trace_id,
                span_id=span_id,
                parent_span_id=parent_span_id,
                sampled=sampled,
                attempts=attempts,
            )
        )

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests in flight stay pending upstream; their answers are dropped when they come.
        self.closed = True
        self.pool.downstreams.discard(self)
        self.pool.ctx.stats.downstream_cx_active -= 1

    def close(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()


class _RpcGov:
    """A governed request's policy state: made once per request, only on a policed route."""

    __slots__ = (
        "admitted",
        "breaker",
        "detects",
        "explicit",
        "gate",
        "headers",
        "outlier",
        "overall",
        "pending",
        "per_try",
        "policy",
        "requested",
        "retries_left",
        "retrying",
        "rule",
        "started",
        "tried",
        "try_deadline",
        "watched",
    )

    def __init__(
        self, gate: Any, admitted: float, rule: Rule | None, policy: Any, breaker: Any, started: float
    ) -> None:
        self.gate = gate  # admitted: gate.done(admitted, lookup) once answered
        self.admitted = admitted
        self.headers: Mapping[str, str] = {}  # the request frame's, for the gate's per-interface count
        self.rule = rule
        self.policy = policy  # a plexus.proxy.resilience.RulePolicy, or None (the built-in single retry)
        # Retries after the frame was written, or on a response status, need retryOn given in the rule:
        # Istio's default list is for idempotent HTTP, and an RPC call is not idempotent by default.
        self.explicit = policy is not None and policy.retry_on is not DEFAULT_RETRY_ON
        self.retries_left = policy.retries if policy is not None else 1
        self.breaker = breaker
        self.started = started
        self.overall = 0.0  # the request's deadline (loop time)
        self.per_try: float | None = None
        self.try_deadline = 0.0  # this try's per-try deadline when it is sooner than ``overall``
        self.requested = False
        self.pending = False
        self.retrying = False
        self.detects = False
        self.outlier: Any = None
        self.watched: Endpoint | None = None
        self.tried: list[Endpoint] | None = None  # endpoints earlier tries went to (made at the first retry)

    def allows(self, kind: int) -> bool:
        if self.retries_left <= 0:
            return False
        policy = self.policy
        if policy is None:  # built-in: once elsewhere, only when no app saw the request
            return kind in (RETRY_CONNECT, RETRY_REFUSED)
        on = policy.retry_on
        if kind == RETRY_CONNECT:
            return bool(on.connect_failure)
        if kind == RETRY_REFUSED:
            return bool(on.refused_stream or on.connect_failure)
        if kind == RETRY_AFTER_SEND:
            return self.explicit and bool(on.reset)
        return self.explicit

    def start_retry(self, kind: int) -> bool:
        """Count a retry. One of a request no app saw (connect failure, refused unseen) adds no load to
        any app, so it spends retries left but not the breaker's retry budget."""
        breaker = self.breaker
        if self.policy is not None and breaker is not None and kind not in (RETRY_CONNECT, RETRY_REFUSED):
            if self.retrying:
                self.retrying = False
                breaker.end_retry()
            if not breaker.start_retry():
                return False
            self.retrying = True
        self.retries_left -= 1
        return True

    def end_pending(self) -> None:
        self.pending = False
        self.breaker.end_pending()

    def watch(self, route: Route, endpoint: Endpoint) -> None:
        """This try goes to ``endpoint``: its result counts for its cluster's outlier detection."""
        if not self.detects:
            return
        cluster = route.cluster_of(endpoint)
        outlier = cluster.outlier if cluster is not None else None
        if outlier is not None:
            self.outlier = outlier
            self.watched = endpoint

    def outcome(self, status: int) -> None:
        endpoint = self.watched
        if endpoint is None:
            return
        self.watched = None
        if status >= 500:
            self.outlier.failure(endpoint, status in _GATEWAY)
        else:
            self.outlier.success(endpoint)

    def release(self, down: RpcDownstream) -> None:
        """The request is answered (or its caller gone): give back the breaker's and the gate's counts."""
        breaker = self.breaker
        if self.pending:
            self.end_pending()
        if self.retrying:
            self.retrying = False
            breaker.end_retry()
        if self.requested:
            self.requested = False
            breaker.end_request()
        gate = self.gate
        if gate is not None:
            self.gate = None
            gate.done(self.admitted, down.lookup.reset(self.headers))


_GATEWAY: Final = frozenset({502, 503, 504})

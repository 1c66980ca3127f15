"""One HTTP/1.1 request/response through the proxy: route, pick, connect or reuse, stream, retry, reply.

Writes to the upstream are batched: while the downstream connection is inside ``data_received`` the
exchange collects bytes and the connection flushes them once, so a request's head and body usually leave in
one ``write``; responses are batched the same way per upstream read. An exchange keeps a copy of what it
sent (up to RETRY_BUFFER_BYTES) so it can be replayed once on another endpoint when the first one was never
reached (connect failure, or a provider sidecar's 503 with a reason in RETRIABLE_BEFORE_SEND), and an
idempotent request whose upstream reset before any byte of an answer (directly, or as a provider sidecar's
upstream_reset).

A route that carries policy (``Route.policed``: a rule policy, a gate, connection limits, outlier detection)
turns its exchange into a ``PolicedExchange`` (see its docstring): the plain path pays one attribute test.

Telemetry (issue 5): ``start`` begins the trace context (``Tracer.begin`` on the headers the decoder held
apart: traceparent, B3, x-request-id) and forwards the tracer's headers in their place; every end of a
request (response done, local reply, client gone, upstream reset) is counted and handed to the sinks through
the way it ended (``_ended``: an ``Outcome`` of plexus.proxy.outcomes, a ``RequestEntry`` only
when a sink needs one). No clock call beyond the loop's cached time, no header re-scan.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, Final

from plexus.codec.http1 import ResponseHead, encode_chunk, encode_request_head, local_reply, status_line
from plexus.codec.http1.encode import LAST_CHUNK, STATUS_LINES
from plexus.core import reasons, speedups
from plexus.core.errors import ProtocolError
from plexus.proxy import Endpoint, service_from_host
from plexus.proxy.outcomes import JOURNAL_FOLD, Outcome, ended_at_once, outcome_for
from plexus.proxy.telemetry import (
    DOWNSTREAM_DISCONNECT,
    NO_FLAGS,
    UNKNOWN,
    response_flag,
)
from plexus.proxy.tracing import (
    B3_PARENT_SPAN_ID,
    B3_SAMPLED,
    B3_SPAN_ID,
    B3_TRACE_ID,
    REQUEST_ID,
    TRACEPARENT,
    Tracer,
    TraceStart,
    passes_through,
)
from plexus.transport.routes import HeadLookup, Route, lookup_from_head

if TYPE_CHECKING:
    from plexus.codec.http1 import RequestHead
    from plexus.proxy.cluster import Cluster
    from plexus.proxy.outlier import OutlierDetector
    from plexus.proxy.ratelimit import Gate
    from plexus.proxy.resilience import CircuitBreaker, MirrorPolicy, RulePolicy
    from plexus.proxy.route_table import Rule
    from plexus.proxy.stream import HeaderLookup
    from plexus.transport.context import DataPlaneContext
    from plexus.transport.http_downstream import HttpDownstream
    from plexus.transport.upstream import UpstreamConnection

log = logging.getLogger("plexus.dataplane")

RETRY_BUFFER_BYTES: Final = 64 * 1024  # requests up to this size can be replayed on another endpoint
HIGH_WATER_BYTES: Final = 256 * 1024  # bytes held while no upstream connection is ready before reading pauses
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Response heads are written as status line + the upstream's raw lines (each CRLF-first) + ours + CRLFCRLF.
_STATUS_BARE: Final = {status: line[:-2] for status, line in STATUS_LINES.items()}  # without the CRLF
_CHUNKED_LINE: Final = b"\r\ntransfer-encoding: chunked"
_CLOSE_LINE: Final = b"\r\nconnection: close"
_KEEP_ALIVE_LINE: Final = b"\r\nconnection: keep-alive"
_END_OF_HEAD: Final = b"\r\n\r\n"
# The tracer's header names as the bytes they are forwarded as (a lookup, no encode per request).
_TRACE_NAME: Final = {
    name: name.encode()
    for name in (TRACEPARENT, REQUEST_ID, B3_TRACE_ID, B3_SPAN_ID, B3_PARENT_SPAN_ID, B3_SAMPLED)
}
_B3_NAMES: Final = frozenset({B3_TRACE_ID, B3_SPAN_ID, B3_PARENT_SPAN_ID, B3_SAMPLED})
_STATUS_FOR: Final = {
    reasons.UNKNOWN_SERVICE: 503,
    reasons.NO_HEALTHY_UPSTREAM: 503,
    reasons.UPSTREAM_CONNECT_FAILED: 503,
    reasons.UPSTREAM_CONNECT_TIMEOUT: 503,
    reasons.LOCAL_APP_UNAVAILABLE: 503,
    reasons.UPSTREAM_REQUEST_TIMEOUT: 504,
    reasons.UPSTREAM_RESET: 502,
    reasons.UPSTREAM_PROTOCOL_ERROR: 502,
    reasons.NO_ROUTE: 404,  # as Envoy: no route of the service's table matched (response flag NR)
    reasons.UPSTREAM_OVERFLOW: 503,
    reasons.UPSTREAM_PER_TRY_TIMEOUT: 504,
    reasons.RATE_LIMITED: 429,
    reasons.LOAD_SHED: 503,
}
# Back-off between policy retries (Envoy's default: 25 ms base, full jitter, doubling, at most 10x the base),
# so a burst of failures does not come straight back as a burst of retries.
RETRY_BACKOFF_BASE: Final = 0.025
RETRY_BACKOFF_MAX: Final = 0.25
SHADOW_SUFFIX: Final = b"-shadow"  # appended to a mirrored request's Host (Envoy's shadow host)
# Mirrored copies in flight per process: beyond this a copy is dropped (a shadow must never pile up work).
MAX_SHADOWS_IN_FLIGHT: Final = 256
_GATEWAY: Final = frozenset({502, 503, 504})
_NEVER: Final = float("inf")
_AFTER_BACKOFF: Final = 1  # an approved retry waits out a back-off (PolicedExchange.retry_next)
_AT_ONCE: Final = 2
# What a retry follows (PolicedExchange._approve).
_CONNECT: Final = 0  # no connection could be made
_RESET: Final = 1  # the upstream closed or reset before any byte of an answer
_STATUS: Final = 2  # a response whose status retry_on names
_BEFORE_SEND: Final = 3  # a provider sidecar's answer that the request never reached an app
_PER_TRY: Final = 4  # one try ran out of its per-try timeout


class Exchange:
    __slots__ = (
        "admitted_at",
        "attempts",
        "breaker",
        "close_after",
        "cluster",
        "conn",
        "deadline_at",
        "done",
        "down",
        "endpoint",
        "gate",
        "head",
        "head_extra",
        "head_len",
        "hold_timer",
        "is_head",
        "keep_upstream",
        "last_on_conn",
        "lookup",
        "mirror",
        "out",
        "out_bytes",
        "out_chunked",
        "outlier",
        "pending_held",
        "piping",
        "policy",
        "req_bytes",
        "request_done",
        "resp_bytes",
        "resp_out",
        "response_done",
        "response_started",
        "retained",
        "retry_held",
        "retry_next",
        "route",
        "rule",
        "sent_continue",
        "started",
        "status",
        "swallow",
        "trace",
        "tries",
        "try_deadline",
        "upstream",
        "waiting",
    )
    # The slots that __init__ leaves unset are PolicedExchange's state: set by its begin(), never read on the
    # plain path (an unset slot costs no time and no allocation).
    admitted_at: float  # when the gate admitted the request (the gate's clock)
    breaker: CircuitBreaker | None  # the cluster's breaker once it counted the request
    cluster: Cluster | None
    gate: Gate | None  # the gate to tell when the request ends
    head_extra: bytes  # the lines added to the head sent (they name the destination's service)
    head_len: int
    deadline_at: float  # the policy's timeout of the whole request, as loop time (inf: none yet)
    hold_timer: asyncio.TimerHandle | None  # a fault's delay or a retry's back-off
    last_on_conn: bool  # this request is the connection's last (maxRequestsPerConnection)
    lookup: HeaderLookup | None
    mirror: MirrorPolicy | None  # a copy to send once the request is whole
    outlier: OutlierDetector | None
    pending_held: bool
    policy: RulePolicy | None
    retry_held: bool
    retry_next: int  # 0, or a retry approved (and counted) that has not started: _AFTER_BACKOFF / _AT_ONCE
    rule: Rule | None
    tries: int  # retries left
    try_deadline: float  # the current try's per-try timeout, as loop time (inf: none)
    waiting: bool  # in the pool's queue for room in the cluster

    def __init__(self, down: HttpDownstream, head: RequestHead) -> None:
        self.down = down
        self.head = head
        self.is_head = head.method == b"HEAD"
        self.route: Route | None = None
        self.endpoint: Endpoint | None = None
        self.conn: UpstreamConnection | None = None
        self.out: list[bytes] = []  # bytes for the upstream not yet written
        self.out_bytes = 0
        # Bytes written, kept for one replay (None: too many to keep). The usual request is one write and is
        # kept as that bytes object; a second write turns it into a bytearray grown in place.
        self.retained: bytes | bytearray | None = b""
        self.resp_out: list[bytes] = []
        self.attempts = 0
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.done = False
        self.swallow = False  # a retriable 503 is being read and dropped before the replay
        self.out_chunked = False
        self.close_after = not head.keep_alive
        self.keep_upstream = False
        self.piping = False
        self.sent_continue = False
        self.status = 0
        self.started = 0.0
        self.upstream: Endpoint | None = None  # the last try's endpoint (telemetry: peer and address)
        self.req_bytes = 0  # body bytes read from the client
        # Bytes written to the client, minus heads and chunk framing (subtracted as they are queued): the
        # response body bytes once the response is over.
        self.resp_bytes = 0
        self.trace: TraceStart | None = None  # set by start()

    # -- request side -------------------------------------------------------------------------------

    def start(self) -> None:
        down = self.down
        self.started = down.loop.time()
        if down.request_timer is None:
            down.arm_request_timer()  # one timer per connection, re-armed lazily: no timer per request
        # Trace context first, so a local reply carries ids too. The common case (the client sent no trace
        # header): the tracer's lines are appended to the headers forwarded, nothing else is touched.
        tracer: Tracer = down.tracer
        head = self.head
        # The usual cases forward one ready block of lines (head.trace_lines) and keep no TraceStart: the
        # entry reads the ids back from the block only when a sink asks (see _ended). The usual inbound hop:
        # a consumer sidecar sent exactly x-request-id then traceparent, which the decoder handed over as
        # they came (head.trace_block, of a shape the tracer approved: see HttpDownstream's decoder), passed
        # on as they are unless sampled. Else other trace lines came (head.trace), checked one by one, or
        # none (then this hop starts the trace).
        block = head.trace_block
        if block:
            lines = block if passes_through(block) else tracer.follow_approved(block)
            if lines is not None:
                head.trace_lines = lines
            else:
                self.trace = _trace_from(tracer, head, head.trace_context() or {})
        elif (incoming := head.trace) is None:
            head.trace_lines = tracer.fresh_lines()
        else:
            parent = incoming.get(b"traceparent")
            request_id = incoming.get(b"x-request-id")
            lines = (
                tracer.follow_lines(parent, request_id)
                if parent is not None and request_id is not None and len(incoming) == 2
                else None
            )
            if lines is not None:
                head.trace_lines = lines
            else:
                self.trace = _trace_from(tracer, head, incoming)
        route = down.router.resolve(head)
        if isinstance(route, str):
            waiter = down.router.unknown_hook(self.head)
            if waiter is None:
                self.fail(route)
                return
            down.loop.create_task(self._await_route(waiter))  # rare: a service this sidecar never saw
            return
        # The common path, inlined (_routed does the same for the rare one): head first, then an endpoint.
        self.route = route
        if route.policed:  # the one test the plain path pays for policy
            self.__class__ = PolicedExchange  # same slots: the exchange changes behaviour, no new object
            self.begin(route)
            return
        self.out.insert(0, encode_request_head(head, route.extra))
        self.dispatch(None)
        if head.expect_continue and not self.done and not self.sent_continue:
            self.sent_continue = True  # the proxy answers 100 itself and strips Expect (as Envoy does)
            down.transport_write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _await_route(self, waiter: Coroutine[Any, Any, Route | str]) -> None:
        try:
            route = await waiter
        except Exception:  # the root's hook failed: the service stays unknown
            log.warning("on_unknown_service failed", exc_info=True)
            route = reasons.UNKNOWN_SERVICE
        if self.done:
            return
        if isinstance(route, str):
            self.fail(route)
            return
        self._routed(route)
        if self.conn is not None and self.out:
            self.flush()

    def _routed(self, route: Route) -> None:
        self.route = route
        if route.policed:
            self.__class__ = PolicedExchange
            self.begin(route)
            return
        self.out.insert(0, encode_request_head(self.head, route.extra))
        self.dispatch(None)
        if self.head.expect_continue and not self.done and not self.sent_continue:
            self.sent_continue = True  # the proxy answers 100 itself and strips Expect (as Envoy does)
            self.down.transport_write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def dispatch(self, exclude: Endpoint | None) -> None:
        route = self.route
        assert route is not None
        endpoint = route.local
        if endpoint is None:
            fast = route.fast
            # Route.pick(), inlined for the common case: no route table and a balancer that hashes nothing.
            if fast is not None:
                endpoint = fast.pick(exclude, None)
            else:
                picked = route.pick(self.head, exclude)
                if isinstance(picked, str):
                    self.fail(picked)
                    return
                endpoint = picked
                if endpoint is not None and self.attempts == 0 and route.table is not None:
                    extra = route.extra_for(endpoint)
                    if extra is not route.extra:  # a rule sent it to another service: name that one
                        self.out[0] = encode_request_head(self.head, extra)
        if endpoint is None:
            self.fail(reasons.NO_HEALTHY_UPSTREAM)
            return
        self.endpoint = self.upstream = endpoint
        endpoint.active += 1
        endpoint.total += 1
        self.attempts += 1
        idle: list[UpstreamConnection] = endpoint.idle
        down = self.down
        while idle:
            conn = idle.pop()
            if not conn.closed:
                # bind(), inlined for the pooled path
                self.conn = conn
                conn.exchange = self
                conn.received = False
                if self.is_head:
                    conn.decoder.set_sink(self, True)
                else:
                    conn.decoder.sink = self  # response events come straight here
                if down.write_paused and conn.transport is not None:
                    conn.transport.pause_reading()
                if self.out and not down.in_feed:
                    self.flush()
                return
        down.loop.create_task(self._connect(endpoint))  # no idle connection: the uncommon path

    async def _connect(self, endpoint: Endpoint) -> None:
        ctx = self.down.ctx
        try:
            conn = await ctx.pool.connect(endpoint, ctx.settings.connect_timeout)
        except (OSError, TimeoutError) as exc:
            ctx.stats.upstream_cx_connect_fail += 1
            endpoint.failures += 1
            self._end_attempt()
            if self.done:
                return
            route = self.route
            assert route is not None
            log.debug("connect to %s failed: %r", endpoint.key, exc)
            if route.retry and self.attempts < 2 and self.retained is not None:
                ctx.stats.upstream_rq_retry += 1
                if self.retained:
                    self.out.insert(0, bytes(self.retained))
                self.retained = b""
                self.dispatch(endpoint)
                if self.conn is not None and self.out:
                    self.flush()
                return
            self.fail(route.connect_fail_reason)
            return
        if self.done or self.endpoint is not endpoint:
            conn.release(True)  # the request ended meanwhile: keep the fresh connection for the next one
            return
        self.bind(conn)

    def bind(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.exchange = self
        conn.received = False
        conn.decoder.set_sink(self, self.is_head)  # response events come straight here
        if self.down.write_paused and conn.transport is not None:
            conn.transport.pause_reading()
        if self.out and not self.down.in_feed:
            self.flush()

    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_bytes += len(data)
        if self.conn is not None and not self.down.in_feed:
            self.flush()
        elif self.out_bytes > HIGH_WATER_BYTES:
            self.down.pause_for_buffer()

    def flush(self) -> None:
        out = self.out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.out_bytes > HIGH_WATER_BYTES:
            self.down.resume_for_buffer()
        self.out_bytes = 0
        retained = self.retained
        if retained is not None:
            if len(retained) + len(data) > RETRY_BUFFER_BYTES:
                self.retained = None  # too big to replay: no retry after this point
            elif not retained:
                self.retained = data  # nothing copied
            else:
                if isinstance(retained, bytes):
                    self.retained = retained = bytearray(retained)
                retained += data  # in place: many small writes stay linear
        conn = self.conn
        assert conn is not None and conn.transport is not None
        conn.transport.write(data)

    def on_request_body(self, data: bytes) -> None:
        self.req_bytes += len(data)
        if not self.done:
            self.send(encode_chunk(data) if self.head.chunked else data)

    def on_request_end(self) -> None:
        self.request_done = True
        if self.done:
            return
        if self.head.chunked:
            self.send(LAST_CHUNK)
        if self.response_done:
            self.finish()

    def abort_request(self, reply: bytes, reason: str = "", status: int = 0) -> None:
        """The request's own framing broke mid-body: reset the upstream, answer ``reply`` if we still can
        (``reason`` and ``status``: the refusal's, for telemetry)."""
        if self.done:
            return
        self.done = True
        self._drop_upstream()
        if self.response_started:
            self.down.abort()
        else:
            self.status = status
            self.resp_bytes = _body_length(reply)
            self.down.transport_write(reply)
            self.down.close()
        self._ended(self.down.loop.time(), reason, response_flag(reason))

    # -- response side ------------------------------------------------------------------------------

    def on_response_head(self, head: ResponseHead) -> None:
        status = head.status
        self.keep_upstream = head.keep_alive
        if status < 200:
            if status == 100 and self.sent_continue:
                return
            if self.head.version == "1.1":
                line = _STATUS_BARE.get(status) or status_line(status)[:-2]
                self.resp_out += (line, head.raw, _END_OF_HEAD)
                self.resp_bytes -= len(line) + len(head.raw) + 4
            return
        if status >= 502 and head.error_reason is not None and self._may_retry():
            reason = reasons.parse_error_header(head.error_reason.decode("latin-1"))
            if reason in reasons.RETRIABLE_BEFORE_SEND or (
                reason == reasons.UPSTREAM_RESET and self.head.method in IDEMPOTENT
            ):
                self.swallow = True
                return
        self.status = status
        self.response_started = True
        # The head goes out as the upstream wrote it (hop-by-hop lines already cut), behind our status line,
        # then whatever framing and connection lines this client needs: no per-header work.
        resp_out = self.resp_out
        line = _STATUS_BARE.get(status) or status_line(status)[:-2]
        resp_out += (line, head.raw)
        head_bytes = len(line) + len(head.raw) + 4  # + _END_OF_HEAD
        if not head.has_length and not (self.is_head or status == 204 or status == 304):
            if self.head.version == "1.1":
                self.out_chunked = True
                resp_out.append(_CHUNKED_LINE)
                head_bytes += len(_CHUNKED_LINE)
            else:
                self.close_after = True  # an HTTP/1.0 client reads this body until close
        if self.close_after or self.down.draining:
            self.close_after = True
            resp_out.append(_CLOSE_LINE)
            head_bytes += len(_CLOSE_LINE)
        elif self.head.version != "1.1":
            resp_out.append(_KEEP_ALIVE_LINE)
            head_bytes += len(_KEEP_ALIVE_LINE)
        resp_out.append(_END_OF_HEAD)
        self.resp_bytes -= head_bytes
        if not self.out_chunked and self.conn is not None:
            self.conn.decoder.body_out = resp_out  # the body goes out as it came: no call per read

    def _may_retry(self) -> bool:
        route = self.route
        return (
            route is not None
            and route.retry
            and self.attempts < 2
            and self.retained is not None
            and self.request_done
        )

    def on_response_body(self, data: bytes) -> None:
        if not self.swallow:
            if self.out_chunked:
                chunk = encode_chunk(data)
                self.resp_bytes -= len(chunk) - len(data)  # the framing is not body
                self.resp_out.append(chunk)
            else:
                self.resp_out.append(data)

    def flush_response(self) -> None:
        resp_out = self.resp_out
        if resp_out:
            data = resp_out[0] if len(resp_out) == 1 else b"".join(resp_out)
            resp_out.clear()
            transport = self.down.transport
            if transport is not None and not transport.is_closing():
                transport.write(data)
                self.resp_bytes += len(data)

    def on_response_end(self) -> None:
        if self.swallow:
            self._replay_elsewhere()
            return
        resp_out = self.resp_out
        if self.out_chunked:
            resp_out.append(LAST_CHUNK)
            self.resp_bytes -= len(LAST_CHUNK)
        if resp_out:  # flush_response(), inlined
            data = resp_out[0] if len(resp_out) == 1 else b"".join(resp_out)
            resp_out.clear()
            transport = self.down.transport
            if transport is not None and not transport.is_closing():
                transport.write(data)
                self.resp_bytes += len(data)
        self.response_done = True
        if not self.request_done:
            # The upstream answered before the request ended: neither connection can carry another exchange.
            self.close_after = True
            self.keep_upstream = False
        self.finish()

    def _replay_elsewhere(self) -> None:
        self.swallow = False
        failed = self.endpoint
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.release(self.keep_upstream)
        self._end_attempt()
        self.down.ctx.stats.upstream_rq_retry += 1
        assert self.retained is not None
        self.out, self.retained = [bytes(self.retained)] if self.retained else [], b""
        self.out_bytes = sum(len(b) for b in self.out)
        self.dispatch(failed)
        if self.conn is not None and self.out:
            self.flush()

    def on_response_upgrade(self, head: ResponseHead, tail: bytes) -> None:
        conn = self.conn
        assert conn is not None
        self.status = 101
        self.response_started = True
        parts = [_STATUS_BARE[101], head.raw, b"\r\nconnection: upgrade\r\n\r\n", tail]
        self.flush_response()
        self.down.transport_write(b"".join(parts))
        self.piping = True
        self._finish_bookkeeping()
        self.down.start_pipe(conn)

    def on_response_error(self, error: ProtocolError) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()  # its framing is lost
        if self.endpoint is not None:
            self.endpoint.failures += 1
        log.debug("upstream protocol error: %s", error)
        self.fail(reasons.UPSTREAM_PROTOCOL_ERROR)

    def on_upstream_lost(self, conn: UpstreamConnection) -> None:
        self.conn = None
        if self.piping:
            self.down.close()
            return
        if self.done:
            return
        route = self.route
        if (
            not conn.received
            and self.request_done
            and self.attempts < 2
            and self.retained is not None
            and self.head.method in IDEMPOTENT
            and (conn.reused or (route is not None and route.retry))
        ):
            # No byte of an answer came back, and the method is idempotent (RFC 9110 §9.2.2), so replaying it
            # once is safe: a keep-alive connection the upstream closed while idle is replayed on a fresh
            # connection; an upstream that died with the request in flight (a crashed app) is retried on
            # another endpoint, as the provider sidecar's upstream_reset answer is (on_response_head).
            failed = None if conn.reused else self.endpoint
            if failed is not None:
                failed.failures += 1
                self.down.ctx.stats.upstream_rq_retry += 1
            self._end_attempt()
            self.out, self.retained = [bytes(self.retained)] if self.retained else [], b""
            self.dispatch(failed)
            if self.conn is not None and self.out:
                self.flush()
            return
        if self.endpoint is not None:
            self.endpoint.failures += 1
        if self.response_started:
            self.done = True
            self._end_attempt()
            self.down.abort()
            self._ended(self.down.loop.time(), reasons.UPSTREAM_RESET, response_flag(reasons.UPSTREAM_RESET))
            return
        self.fail(reasons.UPSTREAM_RESET)

    def on_upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.down.pause_for_upstream()
        else:
            self.down.resume_for_upstream()

    def on_upstream_eof(self) -> bool:
        return self.down.pipe_eof_from_upstream()

    def on_timeout(self) -> None:
        if not self.done:
            self.fail(reasons.UPSTREAM_REQUEST_TIMEOUT)

    def begin(self, route: Route) -> None:
        """PolicedExchange's start: an exchange becomes one (``start``) before this runs."""
        raise NotImplementedError

    def deadline(self) -> float:
        """When the connection's request timer answers this exchange 504 (loop time)."""
        return self.started + self.down.ctx.settings.request_timeout

    def abandon(self) -> None:
        """The client went away: the upstream exchange cannot complete."""
        self.done = True
        self._drop_upstream()
        self._ended(self.down.loop.time(), "", DOWNSTREAM_DISCONNECT)

    # -- ends ---------------------------------------------------------------------------------------

    def _end_attempt(self) -> None:
        endpoint = self.endpoint
        if endpoint is not None:
            self.endpoint = None
            endpoint.active -= 1

    def _drop_upstream(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        self._end_attempt()

    def _finish_bookkeeping(self, reason: str = "") -> None:
        self.done = True
        self._end_attempt()
        self._ended(self.down.loop.time(), reason, response_flag(reason))

    def finish(self) -> None:
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.release(self.keep_upstream and self.request_done)
        self.done = True
        endpoint = self.endpoint
        if endpoint is not None:
            self.endpoint = None
            endpoint.active -= 1
        down = self.down
        now = down.loop.time()  # uvloop: the loop's cached clock, not a system call
        self._ended(now, "", NO_FLAGS)
        down.exchange_finished(self, now)

    def _ended(self, now: float, reason: str, flags: str) -> None:
        """The request ended: handed to the telemetry through the way it ended (its Outcome:
        plexus.proxy.outcomes), journaled, counted later with the requests that ended alike. The outcome is
        the connection's last one when this request's signature (the head's fields as the decoder kept
        them, route, upstream, status, attempts, reason and flags) equals the last request's, as a
        keep-alive client's repeated requests do: no key made, no lookup. (That usual path in C when built:
        plexus.core.speedups.journal_end, which leaves every other request to the code below.)"""
        if _native_end is not None and _native_end(self, now, reason, flags):
            return
        down = self.down
        head = self.head
        signature = (
            head.method,
            head.target,
            head.host,
            head.user_agent,
            head.caller,
            self.route,
            self.upstream,
            self.upstream and self.upstream.instance,  # (the peer: an instance's metadata can change)
            self.status,
            self.attempts,
            reason,
            flags,
        )
        if signature == down.last_signature:  # (its fields compared by identity first, in C)
            outcome = down.last_outcome
        else:
            outcome = down.last_outcome = self._outcome(reason, flags)
            down.last_signature = signature
        started = self.started
        resp_bytes = self.resp_bytes
        trace = self.trace
        # Only what the entry's lazy fields need is held, not the head (its headers list is freed now). The
        # trace lines are b"" when the request was refused before it started; sampled (None) is read from
        # them when needed.
        item = (
            outcome,
            started,
            (now - started) * 1000.0,
            self.req_bytes,
            resp_bytes if resp_bytes > 0 else 0,
            (
                head.host,
                head.user_agent,
                head.trace_lines if trace is None else trace,
                head.trace_block or head.trace,
            ),
            None,
        )
        telemetry = outcome.telemetry
        if outcome.failed or telemetry.tapping:
            ended_at_once(outcome.stats, item)
            return
        journal = telemetry.journal  # (outcomes.journal, inlined)
        journal.append(item)
        if telemetry.exporting_spans and (
            lines[-3] in _SAMPLED_FLAGS  # (tracing.sampled_in_lines, inlined)
            if trace is None and len(lines := head.trace_lines) > 3
            else trace is not None and trace.sampled
        ):
            telemetry.queue_span(item)  # (its entry is made by the exporter's thread)
        if len(journal) >= JOURNAL_FOLD:
            telemetry.settle()

    def _outcome(self, reason: str, flags: str) -> Outcome:
        """The Outcome of this request, by its key (plexus.proxy.outcomes.OutcomeKey). A request no route
        took counts under the one "unknown" service of its direction, so a client-chosen Host never becomes
        a new label set."""
        down = self.down
        route = self.route
        stats = route.stats if route is not None else down.ctx.stats.service(UNKNOWN, down.direction)
        head = self.head
        upstream = self.upstream
        target = head.target
        query = target.find(b"?")
        if upstream is not None:
            address = upstream.key
            peer = upstream.instance.workload if down.outbound else head.caller
        else:
            address = ""
            peer = None if down.outbound else head.caller
        key = (
            head.method,
            target if query < 0 else target[:query],
            head.host,
            head.user_agent,
            self.status,
            reason,
            flags,
            address,
            peer,
            self.attempts,
        )
        return stats.outcomes.get(key) or outcome_for(stats, key)

    def fail(self, reason: str, status: int = 0) -> None:
        """Answer with a local reply naming ``reason`` (or reset the client if the response already began);
        ``status``: the reply's status when the reason does not decide it (a fault's abort)."""
        if self.done:
            return
        down = self.down
        if self.endpoint is not None and reason == reasons.UPSTREAM_REQUEST_TIMEOUT:
            self.endpoint.failures += 1
        self._drop_upstream()
        self.swallow = False
        status = status or _STATUS_FOR.get(reason, 503)
        route = self.route
        service = route.service if route is not None else (service_from_host(self.head.host) or "")
        down.ctx.stats.local_reply(reason, service)
        if self.response_started:
            self.done = True
            down.abort()
            self._ended(down.loop.time(), reason, response_flag(reason))
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("local reply %d %s service=%s", status, reason, service)
        self.status = status
        if not self.request_done and self.head.has_body:
            self.close_after = True  # the rest of the body is not read: the connection cannot go on
        self.resp_out.clear()
        reply = local_reply(
            status,
            error=reasons.error_header_value(reason, service),
            hop=down.ctx.settings.hop_name,
            close=self.close_after or down.draining,
            head_only=self.is_head,
        )
        self.resp_bytes = _body_length(reply)
        down.transport_write(reply)
        self._finish_bookkeeping(reason)
        down.exchange_finished(self)


class PolicedExchange(Exchange):
    """An exchange whose route carries policy: request policy (fault, timeouts, retries, mirror), admission
    (the ingress route's gate), circuit breaking and outlier reports.

    ``Exchange.start`` switches an exchange to this class when ``route.policed`` (same slots, no new object),
    so the plain path pays one attribute test. Per request: the gate admits it (else 429/503 at once), the
    route table's rule is matched once and its policy taken; a fault may answer instead (``fault_injected``)
    or hold the request first; the cluster's breaker counts it (``upstream_overflow`` at once when full).
    Each try picks an endpoint (a retry: another one, ``pick_in`` with ``exclude``), takes an idle connection
    or opens one within the cluster's ``max_connections`` (waiting as a pending request, counted by the
    breaker, when the cluster is full) and may run out of its per-try timeout. A failed try is retried when
    the policy's ``retry_on`` names the failure, tries remain, the request is replayable (it fit in
    RETRY_BUFFER_BYTES) and the breaker's retry budget allows; a retriable response is read and dropped,
    never half-forwarded. The whole request, retries included, ends at the policy's timeout (504). Every
    answer of an endpoint is reported to the cluster's outlier detector. A mirror copy leaves once the whole
    request is known. With no policy (``policy`` None) retries keep the built-in rules.
    """

    __slots__ = ()

    # -- start ---------------------------------------------------------------------------------------

    def begin(self, route: Route) -> None:
        # Set first only what a failure (_release_policy) or the connection's timer (deadline) may read
        # before the rest is set on the way: a store costs on every policed request.
        self.hold_timer = self.breaker = self.gate = self.cluster = None
        self.deadline_at = self.try_deadline = _NEVER
        self.head_len = 0  # 0 until the head is encoded (after a fault's delay)
        head = self.head
        gate = route._gate  # (the properties' slots: no call on this path)
        lookup: HeadLookup | None = None
        if gate is not None:
            lookup = self.lookup = HeadLookup(head)
            refused = gate.admit(lookup)
            if refused is not None:
                self.fail(refused)
                return
            self.gate = gate
            self.admitted_at = gate.clock()
        rule: Rule | None = None
        table = route.table
        if table is not None and route.local is None:
            rule = route.first_always
            if rule is None:
                if lookup is None:
                    lookup = HeadLookup(head)
                rule = table.match(lookup)  # once per request: its policy applies to every try
                if rule is None:
                    self.fail(reasons.NO_ROUTE)
                    return
        self.rule = rule
        self.lookup = lookup
        policy = rule.policy if rule is not None else None
        if policy is None:
            policy = route._policy
        self.policy = policy
        if policy is None:
            self.tries = 1 if route.retry else 0  # built-in: once elsewhere, for failures before send
            self.mirror = None
        else:
            self.tries = policy.retries
            fault = policy.fault
            if fault is not None:
                status = fault.abort()
                if status is not None:
                    self.fail(reasons.FAULT_INJECTED, status)
                    return
            mirror = policy.mirror
            self.mirror = mirror if mirror is not None and head.upgrade is None and mirror.take() else None
            if fault is not None:
                delay = fault.delay()
                if delay > 0:
                    self.hold_timer = self.down.loop.call_later(delay, self._go)
                    return
        self._go()

    def _go(self) -> None:
        """Past admission and fault: count the request, encode its head, start the first try (the common
        steps of _pick, _attempt, _acquire and _use inlined: this runs once per request)."""
        self.hold_timer = None
        if self.done:
            return
        route = self.route
        assert route is not None
        rule = self.rule
        endpoint = route.local
        if endpoint is None:
            balancer = route.fast if rule is None else route.rule_fast.get(rule)
            endpoint = balancer.pick(None, None) if balancer is not None else self._pick(None)
            if endpoint is None:
                self.fail(reasons.NO_HEALTHY_UPSTREAM)
                return
        extra = route.extra
        cluster = route.cluster
        if cluster is not None and endpoint.instance.service != cluster.service:
            cluster = route.cluster_of(endpoint)  # a rule sent it to another service: name that one
            extra = route.extra_for(endpoint)
        self.cluster = cluster
        self.retry_held = self.pending_held = self.waiting = self.last_on_conn = False
        self.retry_next = 0
        breaker = None
        if cluster is None:
            self.outlier = None
        else:
            breaker = cluster.breaker
            if not breaker.start_request():
                self.fail(reasons.UPSTREAM_OVERFLOW)
                return
            self.breaker = breaker
            self.outlier = cluster.outlier
        data = encode_request_head(self.head, extra)
        self.head_extra = extra
        self.head_len = len(data)
        self.out.insert(0, data)
        # the first try
        self.endpoint = self.upstream = endpoint
        endpoint.active += 1
        endpoint.total += 1
        self.attempts += 1
        idle: list[UpstreamConnection] = endpoint.idle
        conn = None
        while idle:
            conn = idle.pop()
            if not conn.closed:
                break
            conn = None
        if conn is None:
            self._acquire()
            if self.done:
                return
        else:
            conn.served += 1
            if breaker is not None:
                limit = breaker.max_requests_per_connection
                if limit is not None and conn.served >= limit:
                    self.last_on_conn = True
            self.conn = conn
            conn.exchange = self
            conn.received = False
            if self.is_head:
                conn.decoder.set_sink(self, True)
            else:
                conn.decoder.sink = self  # response events come straight here
            down = self.down
            if down.write_paused and conn.transport is not None:
                conn.transport.pause_reading()
            if self.out and not down.in_feed:
                self.flush()
        if self.request_done:
            self._request_complete()
        if self.head.expect_continue and not self.done and not self.sent_continue:
            self.sent_continue = True  # the proxy answers 100 itself and strips Expect (as Envoy does)
            self.down.transport_write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _pick(self, exclude: Endpoint | None) -> Endpoint | None:
        route = self.route
        assert route is not None
        local = route.local
        if local is not None:
            return local
        rule = self.rule
        if rule is None:
            fast = route.fast
            if fast is not None:
                return fast.pick(exclude, None)
        lookup = self.lookup
        if lookup is None:
            lookup = self.lookup = lookup_from_head(self.head)
        return route.pick_in(rule, lookup, exclude)

    # -- one try -------------------------------------------------------------------------------------

    def _attempt(self, endpoint: Endpoint) -> None:
        self.endpoint = self.upstream = endpoint
        endpoint.active += 1
        endpoint.total += 1
        self.attempts += 1
        if self.request_done:
            self._arm_try()
        self._acquire()

    def _acquire(self) -> None:
        """An idle connection to the try's endpoint, else a new one within the cluster's limits, else wait."""
        endpoint = self.endpoint
        assert endpoint is not None
        idle: list[UpstreamConnection] = endpoint.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self._use(conn)
                return
        breaker = self.breaker
        if breaker is not None:
            if not self.pending_held:
                if not breaker.start_pending():
                    self.fail(reasons.UPSTREAM_OVERFLOW)
                    return
                self.pending_held = True
            limit = breaker.max_connections
            cluster = self.cluster
            if limit is not None and cluster is not None:
                pool = self.down.ctx.pool
                endpoints = cluster.endpoints
                if pool.open_in(endpoints) >= limit and not pool.close_idle_in(endpoints):
                    breaker.connection_overflow()
                    self.waiting = True
                    pool.wait(cluster.service, self)
                    return
        self.down.loop.create_task(self._connect(endpoint))

    def on_capacity(self) -> None:
        """The cluster has room again (a connection was released or closed): try for a connection."""
        self.waiting = False
        if self.done or self.conn is not None or self.endpoint is None:
            cluster = self.cluster
            if cluster is not None:
                self.down.ctx.pool.wake(cluster.service)  # not needed here: pass it on
            return
        self._acquire()

    def _use(self, conn: UpstreamConnection) -> None:
        breaker = self.breaker
        if breaker is not None and self.pending_held:
            self.pending_held = False
            breaker.end_pending()
        conn.served += 1
        limit = breaker.max_requests_per_connection if breaker is not None else None
        self.last_on_conn = limit is not None and conn.served >= limit
        self.bind(conn)

    async def _connect(self, endpoint: Endpoint) -> None:
        ctx = self.down.ctx
        attempt = self.attempts  # a later try (after a per-try timeout) makes this one stale
        breaker = self.breaker
        timeout = ctx.settings.connect_timeout
        if breaker is not None and breaker.connect_timeout is not None:
            timeout = breaker.connect_timeout
        try:
            conn = await ctx.pool.connect(endpoint, timeout)
        except (OSError, TimeoutError) as exc:
            ctx.stats.upstream_cx_connect_fail += 1
            endpoint.failures += 1
            self._report(endpoint, 0)
            if self.done or self.attempts != attempt:
                return
            log.debug("connect to %s failed: %r", endpoint.key, exc)
            self._close_try()
            if self._approve(_CONNECT):
                self._schedule_retry(endpoint)
                return
            route = self.route
            assert route is not None
            self.fail(route.connect_fail_reason)
            return
        if self.done or self.attempts != attempt:
            conn.release(True)  # the request ended or moved on meanwhile: keep the connection for the next
            self._wake()
            return
        self._use(conn)

    def _arm_try(self) -> None:
        policy = self.policy
        if policy is not None and policy.per_try_timeout and self.try_deadline == _NEVER and self.endpoint:
            down = self.down
            self.try_deadline = down.loop.time() + policy.per_try_timeout
            down.arm_deadline(self.try_deadline)

    def _close_try(self) -> None:
        """The current try is over (failed or abandoned): its timeout, its retry count and its endpoint."""
        self.try_deadline = _NEVER
        if self.retry_held:
            self.retry_held = False
            if self.breaker is not None:
                self.breaker.end_retry()
        if self.waiting:
            self.waiting = False
            if self.cluster is not None:
                self.down.ctx.pool.unwait(self.cluster.service, self)
        self._end_attempt()

    # -- retries -------------------------------------------------------------------------------------

    def _approve(self, kind: int, status: int = 0) -> bool:
        """Whether the failure ``kind`` (with ``status`` for a response) is retried; when it is, the retry is
        counted by the breaker (``retry_next``) and one try is used up."""
        if self.done or self.retained is None or self.tries <= 0:
            return False
        if kind != _CONNECT and not self.request_done:
            return False  # a request not yet whole cannot be replayed from here
        policy = self.policy
        if policy is None:  # the built-in rules: failures before send, and resets of idempotent requests
            if kind == _RESET:
                if self.head.method not in IDEMPOTENT:
                    return False
            elif kind != _CONNECT and kind != _BEFORE_SEND:
                return False
        else:
            retry_on = policy.retry_on
            if kind == _CONNECT:
                allowed = retry_on.connect_failure
            elif kind in (_RESET, _PER_TRY):
                allowed = retry_on.reset
            elif kind == _BEFORE_SEND:
                allowed = retry_on.connect_failure or retry_on.status(status)
            else:
                allowed = retry_on.status(status)
            if not allowed:
                return False
        breaker = self.breaker
        if breaker is not None and not breaker.start_retry():
            if log.isEnabledFor(logging.DEBUG):
                service = self.route.service if self.route is not None else ""
                log.debug("%s: not retried: %s", service, reasons.RETRY_BUDGET_EXHAUSTED)
            return False
        self.tries -= 1
        # Nothing reached an app after a connect failure or a provider's answer before send, and the next try
        # goes to another host: no back-off (nor for the built-in retry, as it always was).
        at_once = policy is None or kind in (_CONNECT, _BEFORE_SEND)
        self.retry_next = _AT_ONCE if at_once else _AFTER_BACKOFF
        return True

    def _schedule_retry(self, failed: Endpoint | None) -> None:
        if self.retry_next == _AT_ONCE:
            self._retry_now(failed)
            return
        step = min(RETRY_BACKOFF_BASE * (1 << min(self.attempts - 1, 8)), RETRY_BACKOFF_MAX)
        self.hold_timer = self.down.loop.call_later(random.random() * step, self._retry_now, failed)

    def _retry_now(self, failed: Endpoint | None) -> None:
        self.hold_timer = None
        if self.done:
            return
        self.retry_held, self.retry_next = bool(self.retry_next), 0
        self.down.ctx.stats.upstream_rq_retry += 1
        endpoint = self._pick(failed)
        if endpoint is None:
            self.fail(reasons.NO_HEALTHY_UPSTREAM)
            return
        self._rewind(endpoint)
        self._attempt(endpoint)

    def _rewind(self, endpoint: Endpoint) -> None:
        """Put everything sent so far back in front of what waits, for a replay to ``endpoint`` (with the
        head naming its service, should the retry have left the first try's)."""
        retained = self.retained
        out = [bytes(retained)] if retained else []
        if self.out:
            out += self.out
        route = self.route
        assert route is not None
        extra = route.extra_for(endpoint) if self.rule is not None else self.head_extra
        if extra is not self.head_extra and out:
            data = b"".join(out)
            head = encode_request_head(self.head, extra)
            out = [head + data[self.head_len :]]
            self.head_len = len(head)
            self.head_extra = extra
        self.out = out
        self.retained = b""
        self.out_bytes = sum(len(b) for b in out)

    def _may_retry(self) -> bool:
        return False  # Exchange.on_response_head's built-in check: decided in on_response_head below

    # -- request side --------------------------------------------------------------------------------

    def on_request_end(self) -> None:
        self.request_done = True  # Exchange.on_request_end, then the policy's part
        if self.done:
            return
        if self.head.chunked:
            self.send(LAST_CHUNK)
        if self.response_done:
            self.finish()
        elif self.head_len:
            self._request_complete()

    def _request_complete(self) -> None:
        """The whole request is known and its first try has started: the timeouts run from here (as Envoy's
        route and per-try timeouts do), and a mirror copy can leave."""
        policy = self.policy
        if policy is not None:
            timeout = policy.timeout
            per_try = policy.per_try_timeout
            if (timeout is not None and self.deadline_at == _NEVER) or per_try:
                down = self.down
                now = down.loop.time()
                if timeout is not None and self.deadline_at == _NEVER:
                    self.deadline_at = now + timeout
                if per_try and self.try_deadline == _NEVER and self.endpoint is not None:
                    self.try_deadline = now + per_try
                earliest = min(self.deadline_at, self.try_deadline)
                if earliest != _NEVER:
                    down.arm_deadline(earliest)  # the connection's one timer, moved earlier if need be
            mirror = self.mirror
            if mirror is not None:
                self.mirror = None
                self._send_mirror(mirror)

    def _send_mirror(self, mirror: MirrorPolicy) -> None:
        retained = self.retained
        if retained is None:
            return  # bigger than the replay buffer: not mirrored
        route = self.route
        assert route is not None
        data = bytes(retained) + b"".join(self.out) if self.out else bytes(retained)
        cluster = route.clusters.get(mirror.service) if route.clusters is not None else None
        if cluster is None:
            return
        endpoint = cluster.pick_subset(mirror.subset)
        if endpoint is None or _Shadow.in_flight >= MAX_SHADOWS_IN_FLIGHT:
            return
        head = self.head
        host = _shadow_host(head.host or b"")
        headers = [(n, host) if n.lower() == b"host" else (n, v) for n, v in head.headers]
        shadow = head.copy()
        shadow.headers, shadow.host, shadow.expect_continue = headers, host, False
        payload = encode_request_head(shadow, route.extra_named(mirror.service)) + data[self.head_len :]
        _Shadow(self.down.ctx, endpoint, payload, self.is_head)

    # -- response side -------------------------------------------------------------------------------

    def on_response_head(self, head: ResponseHead) -> None:
        status = head.status
        if status >= 200:
            outlier = self.outlier
            endpoint = self.endpoint
            if outlier is not None and endpoint is not None:
                if status >= 500:
                    outlier.failure(endpoint, status in _GATEWAY)
                elif endpoint.errors_in_row or endpoint.gateway_errors_in_row:
                    outlier.success(endpoint)  # (a run of errors to reset; else nothing to do)
            kind = -1
            policy = self.policy
            if policy is not None and status in policy.retry_on.statuses:
                kind = _STATUS
            if status >= 502 and head.error_reason is not None:
                reason = reasons.parse_error_header(head.error_reason.decode("latin-1"))
                if reason in reasons.RETRIABLE_BEFORE_SEND or (
                    policy is None and reason == reasons.UPSTREAM_RESET and self.head.method in IDEMPOTENT
                ):
                    kind = _BEFORE_SEND
            if kind >= 0 and self._approve(kind, status):
                self.swallow = True  # read and dropped; the retry follows its end
                self.keep_upstream = head.keep_alive
                return
        Exchange.on_response_head(self, head)  # (named, not super(): no object per response)

    def _replay_elsewhere(self) -> None:
        """Exchange.on_response_end found the dropped answer's end: the approved retry follows."""
        self.swallow = False
        failed = self.endpoint
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.release(self.keep_upstream and not self.last_on_conn)
        self._close_try()
        self._wake()
        self._schedule_retry(failed)

    def on_response_error(self, error: ProtocolError) -> None:
        if self.endpoint is not None:
            self._report(self.endpoint, 502)
        super().on_response_error(error)

    def on_upstream_lost(self, conn: UpstreamConnection) -> None:
        self.conn = None
        if self.piping:
            self.down.close()
            return
        if self.done:
            return
        endpoint = self.endpoint
        if self.swallow:  # lost while reading an answer being dropped: the approved retry goes on
            self.swallow = False
            self._close_try()
            self._schedule_retry(endpoint)
            return
        if (
            not conn.received
            and conn.reused
            and self.request_done
            and self.retained is not None
            and self.head.method in IDEMPOTENT
            and endpoint is not None
        ):
            # A keep-alive connection the upstream closed while idle: the same try on a fresh connection
            # (RFC 9110 §9.2.2), neither a retry nor the endpoint's failure.
            self._rewind(endpoint)
            self._acquire()
            return
        if endpoint is not None:
            endpoint.failures += 1
            self._report(endpoint, 0)
        if not conn.received and not self.response_started:
            self._close_try()
            if self._approve(_RESET):
                self._schedule_retry(endpoint)
                return
        self.fail(reasons.UPSTREAM_RESET)

    def on_timeout(self) -> None:
        """The connection's timer found a deadline passed (timeouts cost no timer per request: see
        HttpDownstream.arm_deadline): the try's, else the whole request's."""
        if self.done:
            return
        if self.try_deadline <= self.down.loop.time():
            self._try_timed_out()
        else:
            self._timed_out()

    def _try_timed_out(self) -> None:
        self.try_deadline = _NEVER
        if self.done:
            return
        endpoint = self.endpoint
        if endpoint is not None:
            endpoint.failures += 1
            self._report(endpoint, 0)
        if self.response_started:
            self.fail(reasons.UPSTREAM_PER_TRY_TIMEOUT)  # the answer began: the client sees a reset
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()  # abandoned: an answer may still come, so the connection cannot be reused
        approved = self.swallow or self._approve(_PER_TRY)  # a dropped answer's retry was approved already
        self.swallow = False
        if approved:
            self._close_try()
            self._schedule_retry(endpoint)
            return
        self.fail(reasons.UPSTREAM_PER_TRY_TIMEOUT)

    def _timed_out(self) -> None:
        if self.done:
            return
        if self.endpoint is not None:
            self._report(self.endpoint, 0)
        self.fail(reasons.UPSTREAM_REQUEST_TIMEOUT)

    def deadline(self) -> float:
        until = self.deadline_at
        if until == _NEVER:
            until = super().deadline()  # before the request is whole, or no policy timeout: the default
        return min(until, self.try_deadline)

    def _report(self, endpoint: Endpoint, status: int) -> None:
        """An answer of ``endpoint`` for outlier detection: ``status`` 0 for a connect failure, reset or
        timeout (a gateway failure, as Envoy counts it)."""
        outlier = self.outlier
        if outlier is None:
            return
        if status == 0 or status >= 500:
            outlier.failure(endpoint, status == 0 or status in _GATEWAY)
        else:
            outlier.success(endpoint)  # (the data plane's timer runs the sweeps that bring hosts back)

    # -- ends ----------------------------------------------------------------------------------------

    def _release_policy(self) -> None:
        """Everything the request holds beyond the plain exchange; safe to call more than once."""
        timer = self.hold_timer
        if timer is not None:
            self.hold_timer = None
            timer.cancel()
        breaker = self.breaker
        if breaker is not None:
            self.breaker = None
            if self.pending_held:
                self.pending_held = False
                breaker.end_pending()
            if self.retry_held:
                self.retry_held = False
                breaker.end_retry()
            if self.retry_next:
                self.retry_next = 0
                breaker.end_retry()
            breaker.end_request()
            if self.waiting:  # (only a request its breaker counts waits for room)
                self.waiting = False
                cluster = self.cluster
                if cluster is not None:
                    self.down.ctx.pool.unwait(cluster.service, self)
        gate = self.gate
        if gate is not None:
            self.gate = None
            gate.done(self.admitted_at, self.lookup)

    def _wake(self) -> None:
        pool = self.down.ctx.pool
        if pool.waiters and self.cluster is not None:
            pool.wake(self.cluster.service)

    def finish(self) -> None:
        if self.last_on_conn:
            self.keep_upstream = False  # maxRequestsPerConnection reached: the connection closes
        self._release_policy()
        Exchange.finish(self)
        if self.down.ctx.pool.waiters:
            self._wake()

    def fail(self, reason: str, status: int = 0) -> None:
        if self.done:
            return
        self._release_policy()
        super().fail(reason, status)
        self._wake()

    def _finish_bookkeeping(self, reason: str = "") -> None:
        self._release_policy()
        super()._finish_bookkeeping(reason)

    def abort_request(self, reply: bytes, reason: str = "", status: int = 0) -> None:
        if not self.done:
            self._release_policy()
        super().abort_request(reply, reason, status)

    def abandon(self) -> None:
        self._release_policy()
        super().abandon()


_SAMPLED_FLAGS: Final = frozenset(b"13579bdf")  # a traceparent's last flags digit with bit 0 (sampled) set

# Exchange._ended's usual path in C (plexus.core.speedups; it returns False until plexus.transport's
# http_downstream has told it where the slots it reads are).
_native_end: Final = speedups.journal_end


def _trace_from(tracer: Tracer, head: RequestHead, incoming: dict[bytes, bytes]) -> TraceStart:
    """The client sent trace headers (held apart by the decoder, see RequestHead.trace): begin from them,
    then forward the tracer's headers and those incoming ones it did not replace (all of B3 when it wrote
    B3), so no name is sent twice."""
    get = incoming.get
    headers = head.headers
    parent = get(b"traceparent")
    request_id = get(b"x-request-id")
    b3_trace_id = get(b"x-b3-traceid")
    if b3_trace_id is None:
        trace = tracer.begin(_text(parent), _text(request_id))
        out = trace.headers
        if len(out) == 1:  # the usual inbound hop: traceparent replaced, the request id kept
            for name, value in incoming.items():
                if name != b"traceparent":
                    headers.append((name, value))
            headers.append((b"traceparent", out[0][1].encode("latin-1")))
            return trace
    else:
        trace = tracer.begin(
            _text(parent),
            _text(request_id),
            b3_trace_id=b3_trace_id.decode("latin-1"),
            b3_span_id=_text(get(b"x-b3-spanid")),
            b3_sampled=_text(get(b"x-b3-sampled")),
        )
    replaced = {name for name, _ in trace.headers}
    if B3_TRACE_ID in replaced:
        replaced |= _B3_NAMES
    for name, value in incoming.items():
        if name.decode("latin-1") not in replaced:
            headers.append((name, value))
    for trace_name, text in trace.headers:
        headers.append((_TRACE_NAME[trace_name], text.encode("latin-1")))
    return trace


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _body_length(reply: bytes) -> int:
    """The body bytes of a whole local reply (what follows its head)."""
    end = reply.find(b"\r\n\r\n")
    return len(reply) - end - 4 if end >= 0 else 0


def _shadow_host(host: bytes) -> bytes:
    """``orders:8080`` → ``orders-shadow:8080`` (Envoy's shadow host: the suffix goes before the port)."""
    name, colon, port = host.rpartition(b":")
    if colon and port.isdigit() and (b":" not in name or name.endswith(b"]")):  # name:port or [v6]:port
        return name + SHADOW_SUFFIX + b":" + port
    return host + SHADOW_SUFFIX


class _Shadow:
    """One mirrored copy of a request, fire and forget: sent to an endpoint of the mirror's service over the
    shared pool, its answer read and dropped. Nothing here reaches the original exchange; a failure ends
    here. Bounded in time (the data plane's request timeout) and in number (MAX_SHADOWS_IN_FLIGHT)."""

    __slots__ = ("conn", "ctx", "data", "ended", "endpoint", "is_head", "keep", "timer")
    in_flight: ClassVar[int] = 0

    def __init__(self, ctx: DataPlaneContext, endpoint: Endpoint, data: bytes, is_head: bool) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.data = data
        self.is_head = is_head
        self.conn: UpstreamConnection | None = None
        self.ended = False
        self.keep = False
        _Shadow.in_flight += 1
        self.timer: asyncio.TimerHandle | None = ctx.loop.call_later(ctx.settings.request_timeout, self.end)
        idle: list[UpstreamConnection] = endpoint.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self._bind(conn)
                return
        ctx.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self.ctx.pool.connect(self.endpoint, self.ctx.settings.connect_timeout)
        except (OSError, TimeoutError):
            self.end()
            return
        except BaseException:  # cancelled (the loop is stopping): still leave the in-flight count
            self.end()
            raise
        if self.ended:
            conn.release(True)
            return
        self._bind(conn)

    def _bind(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.exchange = self
        conn.received = False
        conn.decoder.set_sink(self, self.is_head)
        data, self.data = self.data, b""
        conn.write(data)

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        _Shadow.in_flight -= 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    # -- what the upstream connection reports (ExchangeSide) ----------------------------------------

    def on_response_head(self, head: ResponseHead) -> None:
        self.keep = head.keep_alive

    def on_response_body(self, data: bytes) -> None:
        pass  # dropped

    def on_response_end(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.release(self.keep)
        self.end()

    def on_response_upgrade(self, head: ResponseHead, tail: bytes) -> None:
        self.end()

    def on_response_error(self, error: ProtocolError) -> None:
        self.end()

    def on_upstream_lost(self, conn: UpstreamConnection) -> None:
        self.conn = None
        self.end()

    def on_upstream_write_paused(self, paused: bool) -> None:
        pass  # one write, then only reading

    def flush_response(self) -> None:
        pass

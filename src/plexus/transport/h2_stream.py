"""One HTTP/2 (or gRPC) stream through the proxy: route, pick, open upstream, relay both ways, retry, reply.

Theory of operation
-------------------
A stream sits between one downstream stream (``sid`` on an ``Http2Downstream``) and one upstream stream
(``up_sid`` on an ``Http2UpstreamConnection``). Bytes move under HTTP/2 flow control end to end: body bytes
from one side are queued on the stream and handed to the other side's codec only as far as that side's
window allows and while its socket is not backed up; the sender is credited (``acknowledge``) only for
bytes handed on. So what a stream holds is bounded by the window it advertised (RFC 9113 §5.2) and a
fast side is slowed to the speed of the slow one, whichever direction.

Trailers (``grpc-status``, ``grpc-message``) pass through untouched; RST_STREAM passes both ways. The
deadline is ``min(grpc-timeout, request_timeout)``: at expiry the upstream stream is reset and the caller gets
DEADLINE_EXCEEDED (gRPC) or 504. Failures before a response are answered in the caller's terms: a gRPC
trailers-only response from ``mesh_error_response`` (plus ``x-plexus-error`` / ``x-plexus-hop``, which lets
a consumer sidecar tell a provider sidecar's retriable refusal from an app's answer), or a ``:status`` with
the same two headers for plain HTTP/2.

A stream that never reached an app (connect failed, REFUSED_STREAM, above a GOAWAY's last-stream-id, a
provider sidecar's retriable reason) is retried once on another endpoint when every request byte sent so far
is still held (up to RETRY_BUFFER_BYTES) and no response byte went to the caller.

On a policed route (``Route.policed``: a request policy, a gate, connection-pool limits or outlier
detection) the stream keeps its policy state in ``gov`` (nothing is made otherwise): admission by the gate
(RESOURCE_EXHAUSTED / 429, UNAVAILABLE / 503), the rule matched once, its fault (delay; abort as a
trailers-only grpc-status or an HTTP status), the deadline min(rule timeout, grpc-timeout) with the
grpc-timeout rewritten per try, per-try timeouts, retries on the rule's retryOn (connect failure, refused
stream, reset before the response, a retriable :status or trailers-only grpc-status) while nothing went
to the caller and the request is held, with backoff, the breaker's limits and retry budget, outlier
detection fed with each try's result (gRPC statuses counted as the HTTP status Envoy maps them to), and a
mirrored copy of a request that was whole when routed.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

import h2.exceptions as h2x
from h2.errors import ErrorCodes

from plexus.codec.http2 import (
    GrpcStatus,
    Headers,
    encode_grpc_message_text,
    format_grpc_timeout,
    grpc_error_text,
    mesh_error_response,
    parse_grpc_timeout,
    trailers_only_response,
)
from plexus.core import reasons
from plexus.core.errors import ProtocolError
from plexus.proxy import Endpoint, service_from_host
from plexus.proxy.outcomes import outcome_for, request_ended
from plexus.proxy.stream import HeaderLookup
from plexus.proxy.telemetry import DOWNSTREAM_DISCONNECT, NO_FLAGS, response_flag
from plexus.proxy.tracing import sampled_in_lines
from plexus.transport.h2_upstream import OVERFLOW, PENDING

if TYPE_CHECKING:
    from plexus.proxy import ServiceStats
    from plexus.proxy.route_table import Rule
    from plexus.proxy.tracing import TraceStart
    from plexus.transport.h2_downstream import Http2Downstream
    from plexus.transport.h2_upstream import Http2UpstreamConnection
    from plexus.transport.routes import Route

log = logging.getLogger("plexus.dataplane")

RETRY_BUFFER_BYTES: Final = 64 * 1024  # request bytes kept for one replay; a longer body is not retried
# The local app refused a stream (REFUSED_STREAM: never processed, RFC 9113 §8.7). grpcio servers refuse
# streams below their advertised limit while slots of finished streams are still being freed, so the
# ingress tries its app again a few times after short, growing pauses before passing the refusal on.
LOCAL_REFUSAL_RETRIES: Final = 3
LOCAL_REFUSAL_PAUSE: Final = 0.01  # seconds before the first retry; doubled for each next one
# How long a trailers-only CANCELLED waits for its connection's GOAWAY. A grpc server that shuts down
# cancels the calls it accepted but never handed to a handler; about one time in forty grpc core writes that
# answer just before its GOAWAY (measured with grpcio 1.85), and the answer alone cannot tell an app's own
# CANCELLED from an unprocessed call. Held this long, the GOAWAY has arrived if one is coming.
SHUTDOWN_CANCEL_WAIT: Final = 0.05
# RFC 9113 §8.2.2: connection-specific fields must not be forwarded (h2 refuses most of them on input;
# stripped again here so nothing an app or a peer sends can smuggle them to the other side).
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"http2-settings",
    }
)
SERVICE_HEADER: Final = b"x-plexus-service"
_HOP_OR_TE: Final = HOP_BY_HOP | {b"te"}  # filter_headers's scan: one set test per field
CALLER_HEADER: Final = b"x-plexus-caller"  # who calls (a consumer sidecar's workload): the inbound peer
_USER_AGENT: Final = b"user-agent"
_GRPC_STATUS: Final = b"grpc-status"
_ERROR_HEADER: Final = reasons.ERROR_HEADER.encode()
_HOP_HEADER: Final = reasons.HOP_HEADER.encode()
_CANCELLED: Final = b"1"  # grpc-status CANCELLED
# The HTTP status a local reply is counted as (and answered with, for plain HTTP/2), as HTTP/1.1 does.
STATUS_FOR: Final = {
    reasons.UNKNOWN_SERVICE: 503,
    reasons.NO_HEALTHY_UPSTREAM: 503,
    reasons.UPSTREAM_CONNECT_FAILED: 503,
    reasons.UPSTREAM_CONNECT_TIMEOUT: 503,
    reasons.LOCAL_APP_UNAVAILABLE: 503,
    reasons.UPSTREAM_REQUEST_TIMEOUT: 504,
    reasons.UPSTREAM_RESET: 502,
    reasons.UPSTREAM_PROTOCOL_ERROR: 502,
    reasons.NOT_IMPLEMENTED: 501,
    reasons.DOWNSTREAM_PROTOCOL_ERROR: 400,
    reasons.UPSTREAM_OVERFLOW: 503,
    reasons.UPSTREAM_PER_TRY_TIMEOUT: 504,
    reasons.RATE_LIMITED: 429,
    reasons.LOAD_SHED: 503,
}
# The gRPC status of the policy's local replies (Envoy's: an overflow or a shed call is UNAVAILABLE, a rate
# limit RESOURCE_EXHAUSTED, a try's timeout DEADLINE_EXCEEDED); the others are in codec.http2's table.
GRPC_FOR_REASON: Final = {
    reasons.UPSTREAM_OVERFLOW: GrpcStatus.UNAVAILABLE,
    reasons.UPSTREAM_PER_TRY_TIMEOUT: GrpcStatus.DEADLINE_EXCEEDED,
    reasons.RATE_LIMITED: GrpcStatus.RESOURCE_EXHAUSTED,
    reasons.LOAD_SHED: GrpcStatus.UNAVAILABLE,
}
# gRPC's HTTP-to-status table (grpc/doc/http-grpc-status-mapping.md): what a fault's HTTP abort status tells
# a gRPC caller when the fault names no gRPC status; anything else is UNKNOWN.
GRPC_FOR_HTTP: Final = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
# Envoy's grpcToHttpStatus: the HTTP status a gRPC status counts as for outlier detection and retries on
# status classes (UNAVAILABLE 503, DEADLINE_EXCEEDED 504, INTERNAL / UNKNOWN / DATA_LOSS 500 ...).
HTTP_FOR_GRPC: Final = (200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401)
GATEWAY_STATUSES: Final = frozenset({502, 503, 504})
# Backoff between tries (Envoy's default: 25 ms base, full jitter, at most 10x the base).
RETRY_BACKOFF_BASE: Final = 0.025
RETRY_BACKOFF_MAX: Final = 0.25
_GRPC_TIMEOUT: Final = b"grpc-timeout"
SHADOW_SUFFIX: Final = b"-shadow"  # appended to a mirrored request's authority (Envoy's shadow host)
# Mirrored copies in flight per process: a slow mirror target must not pin unbounded streams and memory.
MAX_MIRRORS_IN_FLIGHT: Final = 1000


def filter_headers(headers: Headers) -> Headers:
    """End-to-end fields only (``te`` only as ``trailers``, RFC 9113 §8.2.2): ``headers`` itself when it has
    none to drop (the usual case: nghttp2 already refuses connection-specific fields in responses)."""
    for name, _ in headers:
        if name in _HOP_OR_TE:
            break
    else:
        return headers
    out: Headers = []
    for name, value in headers:
        if name in HOP_BY_HOP or (name == b"te" and value.strip().lower() != b"trailers"):
            continue
        out.append((name, value))
    return out


class H2Stream:
    __slots__ = (
        "agent",
        "attempts",
        "authority",
        "caller",
        "client_reset",
        "conn",
        "credit_conn",
        "credit_sid",
        "deadline",
        "done",
        "down",
        "endpoint",
        "gov",
        "grpc",
        "grpc_code",
        "held",
        "lookup",
        "method",
        "path",
        "picked",
        "reason",
        "refusals",
        "req_bytes",
        "req_end_sent",
        "req_ended",
        "req_q",
        "req_trailers",
        "resp_bytes",
        "resp_done",
        "resp_end",
        "resp_q",
        "resp_started",
        "resp_trailers",
        "route",
        "sent_copy",
        "service",
        "sid",
        "started",
        "status",
        "timeout_at",
        "trace",
        "up_headers",
        "up_sid",
    )

    def __init__(
        self,
        down: Http2Downstream,
        sid: int,
        up_headers: Headers,
        grpc: bool,
        ended: bool,
        service: str,
        trace: TraceStart | bytes | None = None,
        method: bytes | None = None,
        path: bytes | None = None,
        authority: bytes | None = None,
        timeout_at: int | None = None,
        agent: bytes | None = None,
        caller: bytes | None = None,
    ) -> None:
        self.down = down
        self.sid = sid
        self.up_headers = up_headers  # what the upstream stream opens with (egress adds x-plexus-service)
        self.grpc = grpc
        self.service = service  # for error texts and counters until a route names it
        self.route: Route | None = None
        self.lookup: HeaderLookup | None = None
        self.endpoint: Endpoint | None = None
        self.conn: Http2UpstreamConnection | None = None
        self.up_sid: int | None = None
        # Where response credits go: the upstream stream's connection, kept after the stream ends, since
        # acknowledging also reopens the connection window (RFC 9113 §6.9).
        self.credit_conn: Http2UpstreamConnection | None = None
        self.credit_sid = 0
        self.attempts = 0
        self.refusals = 0  # REFUSED_STREAM answers of the local app, retried (LOCAL_REFUSAL_RETRIES)
        self.req_q: deque[tuple[bytes, int]] = deque()  # (data, downstream credit owed once sent)
        self.req_ended = ended
        self.req_end_sent = False
        self.req_trailers: Headers | None = None
        # Request bytes sent upstream, kept for a retry (None: too many). Bytes, not a bytearray: a request
        # sent in one DATA frame (a unary call) is kept as that frame's payload, with no copy.
        self.sent_copy: bytes | None = b""
        self.resp_q: deque[tuple[bytes, int]] = deque()  # (data, upstream credit owed once sent)
        self.resp_started = False
        self.resp_end = False
        self.resp_done = False
        self.resp_trailers: Headers | None = None
        self.status = 0
        self.done = False
        self.started = down.loop.time()
        self.deadline = 0.0
        self.timeout_at = timeout_at  # index of grpc-timeout in up_headers
        self.gov: _Gov | None = None  # the request policy's state, only on a policed route
        # For the telemetry when the stream ends (plexus.proxy.outcomes).
        # This hop's trace context: a TraceStart (Tracer.begin), or Tracer.fresh_lines's block when no trace
        # field came in (ids_from_lines reads it back, only when a sink asks).
        self.trace = trace
        self.agent = agent  # user-agent and x-plexus-caller as the caller sent them
        self.caller = caller
        self.method = method
        self.path = path
        self.authority = authority
        self.picked: Endpoint | None = None  # the last try's endpoint (``endpoint`` is cleared as it ends)
        self.req_bytes = 0  # DATA payload from the caller
        self.resp_bytes = 0  # DATA payload toward the caller
        self.reason = ""  # the reason code when this hop failed or limited the stream
        self.grpc_code: bytes | None = None  # a trailers-only answer's grpc-status (upstream's or ours)
        self.client_reset = False  # the caller reset the stream (or left) before it ended: flag DC
        self.held: Headers | None = None  # a CANCELLED answer waiting for its connection's GOAWAY

    # -- routing ------------------------------------------------------------------------------------

    def routed(self, route: Route, lookup: HeaderLookup, timeout: float) -> None:
        self.route = route
        self.lookup = lookup
        self.service = route.service
        if route.cluster is not None:
            self.up_headers.append((SERVICE_HEADER, route.service.encode()))
            caller = self.down.proxy.caller
            if caller is not None:
                self.up_headers.append(caller)
        if route.policed:
            self._govern(route, lookup, timeout)
            return
        deadline = self.deadline = self.started + timeout
        down = self.down
        if deadline < down.deadline_due:  # (watch_deadline's own test: the sweep is usually due earlier)
            down.watch_deadline(deadline)  # one sweep timer per connection, not a timer per stream
        self.dispatch(None, False)

    def dispatch(self, exclude: Endpoint | None, same_ok: bool) -> None:
        route = self.route
        assert route is not None and self.lookup is not None
        picked = route.pick_stream(self.lookup, exclude)
        if picked is None and same_ok and exclude is not None and not exclude.removed:
            picked = exclude  # the peer refused the stream unseen: the same endpoint may take it now
        if picked is None:
            self.fail(reasons.NO_HEALTHY_UPSTREAM)
            return
        if isinstance(picked, str):
            self.fail(picked)
            return
        self.endpoint = self.picked = picked
        picked.active += 1
        picked.total += 1
        self.attempts += 1
        self.down.pool.submit(picked, self)

    # -- the request policy (only on a policed route: Route.policed) --------------------------------

    def _govern(self, route: Route, lookup: HeaderLookup, timeout: float) -> None:
        """Admit (gate), match the rule once, apply its fault, timeout, mirror and limits, then start the
        first try. Every later step of the stream reads the state kept in ``self.gov``."""
        gate = route.gate
        admitted = 0.0
        if gate is not None:
            refused = gate.admit(lookup)
            if refused is not None:
                self.fail(refused)
                return
            admitted = gate.clock()
        rule = route.match_rule(lookup)
        policy = route.policy_of(rule) if not isinstance(rule, str) else None
        cluster = route.cluster
        breaker = None
        detects = False
        if cluster is not None:
            detects = True  # outlier detection of the cluster each try's endpoint comes from, if it has one
            held = cluster.breaker
            # The breaker counts every request of a limited cluster, and every request that may retry (the
            # retry budget is a share of the requests in flight).
            if held.limited or policy is not None:
                breaker = held
        gov = self.gov = _Gov(gate, rule if not isinstance(rule, str) else None, policy, breaker, detects)
        gov.admitted = admitted
        if isinstance(rule, str):
            self.fail(rule)
            return
        loop = self.down.loop
        now = loop.time()
        caller = math.inf  # the caller's own deadline (grpc-timeout), which nothing extends
        at = self.timeout_at
        if at is not None:
            try:
                caller = self.started + parse_grpc_timeout(self.up_headers[at][1])
            except ProtocolError:
                caller = self.started + timeout
        fault = delay = None
        rule_timeout = None
        if policy is not None:
            fault = policy.fault
            rule_timeout = policy.timeout
            if self.grpc and at is None and (rule_timeout is not None or policy.per_try_timeout is not None):
                # The app learns the deadline the rule sets (rewritten per try in on_upstream_ready).
                self.timeout_at = len(self.up_headers)
                self.up_headers.append((_GRPC_TIMEOUT, b"1S"))
        if fault is not None:
            delay = fault.delay()
        start = now + delay if delay else now  # a rule's timeout starts after its fault delay, as in Envoy
        if rule_timeout is not None:
            gov.overall = min(start + rule_timeout, caller)
        else:
            gov.overall = min(self.started + timeout + (delay or 0.0), caller)
        self.deadline = gov.overall
        self.down.watch_deadline(gov.overall)
        abort = fault.abort() if fault is not None else None
        if delay:
            loop.call_later(delay, self._after_delay, abort)
            return
        if abort is not None:
            self._fault_abort(abort)
            return
        mirror = policy.mirror if policy is not None else None
        if mirror is not None and mirror.take():
            self._mirror(route, mirror)
        self._start()

    def _mirror(self, route: Route, mirror: Any) -> None:
        """A copy of the request to the mirror's service, its answer dropped (Envoy's shadow: authority
        ``-shadow``). Only a request whole when routed (a unary call, a body that came with its headers) and
        within the replay buffer is copied; a streaming one is not mirrored."""
        if not self.req_ended or self.req_trailers is not None:
            return
        size = 0
        for data, _ in self.req_q:
            size += len(data)
        if size > RETRY_BUFFER_BYTES:
            return
        clusters = route.clusters
        cluster = clusters.get(mirror.service) if clusters is not None else None
        endpoint = cluster.pick_subset(mirror.subset) if cluster is not None else None
        if endpoint is None or _MirrorStream.in_flight >= MAX_MIRRORS_IN_FLIGHT:
            return
        body = b"".join(data for data, _ in self.req_q)
        headers: Headers = []
        for name, value in self.up_headers:
            if name == SERVICE_HEADER:
                value = mirror.service.encode()
            elif name == b":authority":
                value = value.split(b":", 1)[0] + SHADOW_SUFFIX
            elif name == _GRPC_TIMEOUT and self.gov is not None:
                left = max(self.gov.overall - self.down.loop.time(), 0.001)
                value = format_grpc_timeout(min(left, 3600.0)).encode()
            headers.append((name, value))
        self.down.pool.submit(endpoint, _MirrorStream(headers, body))

    def _after_delay(self, abort: int | None) -> None:
        if self.done:
            return
        if abort is not None:
            self._fault_abort(abort)
        else:
            gov, route = self.gov, self.route
            mirror = gov.policy.mirror if gov is not None and gov.policy is not None else None
            if mirror is not None and route is not None and mirror.take():
                self._mirror(route, mirror)
            self._start()
        self.down.want_flush()

    def _fault_abort(self, status: int) -> None:
        gov = self.gov
        assert gov is not None and gov.policy is not None
        fault = gov.policy.fault
        code = fault.grpc_status if fault is not None else None
        if code is None:
            code = GRPC_FOR_HTTP.get(status, GrpcStatus.UNKNOWN)
        self.fail(reasons.FAULT_INJECTED, None, status, code)

    def _start(self) -> None:
        gov = self.gov
        assert gov is not None
        breaker = gov.breaker
        if breaker is not None:
            if not breaker.start_request():
                self.fail(reasons.UPSTREAM_OVERFLOW)
                return
            gov.requested = True
        self._try(None, False)

    def _try(self, exclude: Endpoint | None, same_ok: bool) -> None:
        """One try of a governed stream: the rule's destination, its per-try deadline, the pending limit."""
        gov = self.gov
        route = self.route
        assert gov is not None and route is not None and self.lookup is not None
        picked = route.pick_in(gov.rule, self.lookup, exclude)
        tried = gov.tried
        if exclude is not None:
            if tried is None:
                tried = gov.tried = []
            tried.append(exclude)
            picked = pick_untried(route, gov.rule, self.lookup, exclude, picked, tried)
        if picked is None and same_ok and exclude is not None and not exclude.removed:
            picked = exclude  # the peer refused the stream unseen: the same endpoint may take it now
        if picked is None:
            self.fail(reasons.NO_HEALTHY_UPSTREAM)
            return
        self.endpoint = self.picked = picked
        picked.active += 1
        picked.total += 1
        self.attempts += 1
        if gov.detects:
            cluster = route.cluster_of(picked)
            outlier = cluster.outlier if cluster is not None else None
            if outlier is not None:
                gov.outlier = outlier
                gov.watched = picked
        deadline = gov.overall
        policy = gov.policy
        if policy is not None and policy.per_try_timeout is not None:
            try_deadline = self.down.loop.time() + policy.per_try_timeout
            if try_deadline < deadline:
                gov.try_deadline = deadline = try_deadline
        self.deadline = deadline
        self.down.watch_deadline(deadline)
        taken = self.down.pool.submit(picked, self, gov.breaker)
        if taken == OVERFLOW:
            gov.watched = None
            self._end_attempt()
            self.fail(reasons.UPSTREAM_OVERFLOW)
        elif taken == PENDING:
            gov.pending = True

    def _gov_response(self, gov: _Gov, headers: Headers, status: int, end_stream: bool) -> bool:
        """A try's response headers: retried when the rule's retry_on names its status (True), else
        counted for outlier detection (a gRPC call with messages: at its trailers)."""
        code = grpc_status_of(headers) if self.grpc and end_stream else None
        counted = status if code is None else http_for_grpc(code)
        policy = gov.policy
        if policy is not None:
            on = policy.retry_on
            if (on.status(status) or (code is not None and on.grpc(code))) and self._take_retry(_STATUS):
                failed = self.endpoint
                gov.outcome(counted)
                self._drop_upstream(ErrorCodes.CANCEL)
                self._retry(failed, False)
                return True
        if code is not None or end_stream or not self.grpc:
            gov.outcome(counted)
        return False

    # -- upstream events (UpstreamStream) -----------------------------------------------------------

    def on_upstream_ready(self, conn: Http2UpstreamConnection) -> None:
        if self.done:
            return
        gov = self.gov
        if gov is not None and gov.pending:
            gov.end_pending()
        self.conn = conn
        if self.timeout_at is not None:
            # The upstream is told what is left of the deadline (the caller's or the sidecar's, the shorter),
            # so the app gives up when the sidecar does.
            left = max(self.deadline - self.down.loop.time(), 0.001)
            self.up_headers[self.timeout_at] = (b"grpc-timeout", format_grpc_timeout(left).encode())
        end = self.req_ended and not self.req_q and self.req_trailers is None
        self.up_sid = self.credit_sid = conn.open(self, self.up_headers, end)
        self.credit_conn = conn
        if end:
            self.req_end_sent = True
        else:
            self.pump_request()

    def on_upstream_headers(self, headers: Headers, end_stream: bool) -> None:
        if self.done:
            return
        # nghttp2 puts the pseudo-fields first, and :status is a response's only one.
        name, value = headers[0] if headers else (b"", b"")
        status = int(value) if name == b":status" and value.isdigit() else _status_of(headers)
        if 100 <= status < 200:
            if status != 101:  # 101 is forbidden in HTTP/2 (RFC 9113 §8.6); h2 refuses it on input
                self.down.codec.send_headers(self.sid, filter_headers(headers))
                self.down.want_flush()
            return
        if not end_stream and self.gov is None:
            # The usual answer (headers now, body and trailers to follow): _forward_headers, one call fewer.
            self.status = status
            self.resp_started = True
            down = self.down
            down.codec.send_headers(self.sid, filter_headers(headers), False)
            if not down.dirty:
                down.want_flush()
            return
        if end_stream:
            if self._unprocessed_reply(headers):
                if self._answer_unprocessed():
                    return
            elif self._cancel_before_goaway(headers):
                self.held = headers
                self.down.loop.call_later(SHUTDOWN_CANCEL_WAIT, self._decide_held, self.conn, self.endpoint)
                return
        self._forward_headers(headers, status, end_stream)

    def _forward_headers(self, headers: Headers, status: int, end_stream: bool) -> None:
        gov = self.gov
        if gov is not None and self._gov_response(gov, headers, status, end_stream):
            return
        self.status = status
        self.resp_started = True
        down = self.down
        down.codec.send_headers(self.sid, filter_headers(headers), end_stream)
        if not down.dirty:
            down.want_flush()
        if end_stream:
            if self.grpc:
                self.grpc_code = _grpc_status_value(headers)  # trailers-only: the status is in the headers
            self.resp_end = self.resp_done = True
            self.finish()

    def _answer_unprocessed(self, failed: Endpoint | None = None) -> bool:
        """No app took the request: retry it elsewhere, or (ingress) tell the consumer sidecar so in its
        terms (it retries). False: neither applies, the answer goes to the caller as it is."""
        if failed is None:
            failed = self.endpoint
        gov = self.gov
        if gov is not None:
            gov.outcome(503)  # no app behind that endpoint took it: the endpoint is failing
        if self._take_retry(_REFUSED):
            self._drop_upstream(ErrorCodes.CANCEL)
            self._retry(failed, False)
            return True
        route = self.route
        if route is not None and route.local is not None:
            self.fail(route.connect_fail_reason)
            return True
        return False

    def _cancel_before_goaway(self, headers: Headers) -> bool:
        """A gRPC trailers-only CANCELLED on a connection that has not (yet) said it shuts down."""
        conn = self.conn
        if not self.grpc or conn is None or conn.codec.goaway_received:
            return False
        for name, value in headers:
            if name == _GRPC_STATUS:
                return value == _CANCELLED
        return False

    def _decide_held(self, conn: Http2UpstreamConnection | None, failed: Endpoint | None) -> None:
        headers = self.held
        self.held = None
        if self.done or headers is None:
            return
        shut_down = conn is not None and (conn.codec.goaway_received or conn.closed)
        if shut_down and self._answer_unprocessed(failed):
            return
        self._forward_headers(headers, _status_of(headers), True)

    def on_upstream_data(self, data: bytes, flow_controlled_length: int, end_stream: bool) -> None:
        if self.done:
            return
        self.resp_bytes += len(data)
        self.resp_q.append((data, flow_controlled_length))
        if end_stream:
            self.resp_end = True
        self.pump_response()

    def on_upstream_trailers(self, headers: Headers) -> None:
        if self.done:
            return
        gov = self.gov
        if gov is not None and gov.watched is not None and self.grpc:
            code = grpc_status_of(headers)
            if code is not None:
                gov.outcome(http_for_grpc(code))
        self.resp_trailers = filter_headers(headers)
        self.resp_end = True
        self.pump_response()

    def on_upstream_end(self) -> None:
        conn, up_sid = self.conn, self.up_sid
        self.up_sid_closed()
        if conn is not None and up_sid is not None and not self.req_end_sent:
            # The response is complete before the request: stop sending it (else the stream would stay
            # half-open in the codec and count against the peer's concurrent-stream limit forever).
            conn.reset(up_sid, ErrorCodes.NO_ERROR)
        if self.done or self.held is not None:
            return
        self.resp_end = True
        self.pump_response()

    def on_upstream_reset(self, error_code: int, unprocessed: bool) -> None:
        failed = self.endpoint
        self.up_sid_closed()
        self._end_attempt()
        if self.done:
            return
        if unprocessed and self._take_retry(_REFUSED):
            self._retry(failed, True)
            return
        if unprocessed and error_code == ErrorCodes.REFUSED_STREAM and self._may_retry_local_refusal():
            self.refusals += 1
            pause = LOCAL_REFUSAL_PAUSE * (2 ** (self.refusals - 1))
            self.down.loop.call_later(pause, self._retry_local, failed)
            return
        gov = self.gov
        if gov is not None and not unprocessed:
            gov.outcome(503)  # Envoy counts a reset as a 5xx of the endpoint
            if self._take_retry(_RESET):
                self._retry(failed, False)
                return
        if failed is not None and error_code != ErrorCodes.CANCEL:
            failed.failures += 1
        self.reason = reasons.UPSTREAM_RESET
        self.reset_downstream(error_code)

    def on_upstream_window(self) -> None:
        if not self.done:
            self.pump_request()

    def on_upstream_lost(self, unprocessed: bool, reason: str) -> None:
        failed = self.endpoint
        self.up_sid_closed()
        self._end_attempt()
        if self.done:
            return
        gov = self.gov
        if gov is not None:
            if gov.pending:
                gov.end_pending()  # it failed while waiting for a connection
            gov.outcome(503)  # a connect failure or a lost connection: a local-origin 5xx (Envoy)
            if not unprocessed and self._take_retry(_RESET):
                self._retry(failed, False)
                return
        if unprocessed:
            if self._take_retry(_CONNECT):
                self._retry(failed, False)
                return
            route = self.route
            fail_reason = route.connect_fail_reason if route is not None else reasons.UPSTREAM_CONNECT_FAILED
            if reason == "timeout" and route is not None and route.cluster is not None:
                fail_reason = reasons.UPSTREAM_CONNECT_TIMEOUT
            self.fail(fail_reason)
            return
        if failed is not None:
            failed.failures += 1
        log.debug("h2 upstream lost (%s) under stream %d", reason, self.sid)
        self.fail(reasons.UPSTREAM_RESET)

    def up_sid_closed(self) -> None:
        """The connection forgot our upstream stream (it ended, was reset, or the connection died)."""
        self.conn = None
        self.up_sid = None

    # -- downstream events --------------------------------------------------------------------------

    def on_down_data(self, data: bytes, flow_controlled_length: int, end_stream: bool) -> None:
        if self.done:
            self.down.codec.acknowledge(self.sid, flow_controlled_length)
            if end_stream:
                self.req_ended = True  # (no h2_end follows: see EventSink.h2_end)
            return
        if data or flow_controlled_length:
            self.req_bytes += len(data)
            self.req_q.append((data, flow_controlled_length))
        if end_stream:
            self.req_ended = True
        if self.conn is not None:  # else it is sent once the upstream stream opens (on_upstream_ready)
            self.pump_request()

    def on_down_trailers(self, headers: Headers) -> None:
        self.req_trailers = filter_headers(headers)
        self.req_ended = True
        if not self.done and self.conn is not None:
            self.pump_request()

    def on_down_end(self) -> None:
        self.req_ended = True
        if not self.done and self.conn is not None:
            self.pump_request()

    def on_down_reset(self, error_code: int) -> None:
        """The caller reset its stream (or its connection is gone): cancel upstream too."""
        if self.done:
            return
        self.done = True
        self.client_reset = True
        self._drop_upstream(ErrorCodes.CANCEL)
        self._record()

    def on_down_window(self) -> None:
        if not self.done:
            self.pump_response()

    # -- moving bytes -------------------------------------------------------------------------------

    def pump_request(self) -> None:
        conn = self.conn
        up_sid = self.up_sid
        if conn is None or up_sid is None or conn.write_paused or self.req_end_sent:
            return
        codec = conn.codec
        q = self.req_q
        credited = False
        try:
            while q:
                data, credit = q[0]
                end = self.req_ended and len(q) == 1 and self.req_trailers is None
                taken = codec.send_data(up_sid, data, end)
                copy = self.sent_copy
                if copy is not None and taken:
                    if len(copy) + taken > RETRY_BUFFER_BYTES:
                        self.sent_copy = None  # too long to replay: no retry from now on
                    else:
                        part = data[:taken] if taken < len(data) else data
                        self.sent_copy = copy + part if copy else part
                if taken < len(data):
                    q[0] = (data[taken:], credit)
                    break
                q.popleft()
                if credit:
                    self.down.codec.acknowledge(self.sid, credit)
                    credited = True
                if end:
                    self.req_end_sent = True
            if not q and self.req_ended and not self.req_end_sent:
                if self.req_trailers is not None:
                    codec.send_trailers(up_sid, self.req_trailers)
                else:
                    codec.end_stream(up_sid)
                self.req_end_sent = True
        except h2x.StreamClosedError:
            pass  # the upstream stream just ended or was reset: its event follows
        if not conn.dirty:
            conn.want_flush()
        if credited and not self.down.dirty:
            self.down.want_flush()

    def pump_response(self) -> None:
        if not self.resp_started or self.resp_done:
            return
        down = self.down
        if down.write_paused or down.closed:
            return
        codec = down.codec
        conn = self.credit_conn
        q = self.resp_q
        try:
            while q:
                data, credit = q[0]
                end = self.resp_end and len(q) == 1 and self.resp_trailers is None
                taken = codec.send_data(self.sid, data, end)
                if taken < len(data):
                    q[0] = (data[taken:], credit)
                    break
                q.popleft()
                if credit and conn is not None:
                    conn.codec.acknowledge(self.credit_sid, credit)
                    if not conn.dirty:
                        conn.want_flush()
                if end:
                    self.resp_done = True
            if not q and self.resp_end and not self.resp_done:
                if self.resp_trailers is not None:
                    codec.send_trailers(self.sid, self.resp_trailers)
                else:
                    codec.end_stream(self.sid)
                self.resp_done = True
        except h2x.StreamClosedError:
            self.resp_done = True  # the caller reset meanwhile: its reset event follows
        if not down.dirty:
            down.want_flush()
        if self.resp_done:
            self.finish()

    # -- ends ---------------------------------------------------------------------------------------

    def _unprocessed_reply(self, headers: Headers) -> bool:
        """A final answer that says no app processed the request: a provider sidecar's retriable reason, or
        the trailers-only CANCELLED grpc servers give calls they accepted but never handed to a handler
        once they shut down (after their GOAWAY)."""
        conn = self.conn
        shutting_down = self.grpc and conn is not None and conn.codec.goaway_received
        for name, value in headers:
            if name == _ERROR_HEADER:
                reason = reasons.parse_error_header(value.decode("latin-1"))
                return reason in reasons.RETRIABLE_BEFORE_SEND
            if shutting_down and name == b"grpc-status" and value == _CANCELLED:
                return True
        return False

    def _may_retry(self) -> bool:
        route = self.route
        return (
            route is not None
            and route.retry
            and self.attempts < 2
            and self.sent_copy is not None
            and not self.resp_started
        )

    def _take_retry(self, kind: int) -> bool:
        """Whether a try that failed in way ``kind`` is retried; a policy's retry is counted (retries left,
        the breaker's retry budget) when it is. Without a policy: the built-in single retry elsewhere, and
        only for failures before any app saw the request."""
        gov = self.gov
        if gov is None or gov.policy is None:
            return kind != _RESET and self._may_retry()
        if self.sent_copy is None or self.resp_started or self.done:
            return False
        if not gov.allows(kind) or self.down.loop.time() >= gov.overall:
            return False
        if not gov.start_retry(kind):
            self.down.proxy.stats.local_reply(reasons.RETRY_BUDGET_EXHAUSTED, self.service)
            if not self.reason:
                self.reason = reasons.RETRY_BUDGET_EXHAUSTED  # the answer passed on is flagged URX
            return False
        return True

    def _may_retry_local_refusal(self) -> bool:
        route = self.route
        return (
            route is not None
            and route.local is not None
            and self.refusals < LOCAL_REFUSAL_RETRIES
            and self.sent_copy is not None
            and not self.resp_started
        )

    def _retry_local(self, failed: Endpoint | None) -> None:
        if not self.done:
            self._retry(failed, True)

    def _retry(self, failed: Endpoint | None, same_ok: bool) -> None:
        self.down.proxy.stats.upstream_rq_retry += 1
        copy = self.sent_copy
        if copy:
            self.req_q.appendleft((copy, 0))  # already credited to the caller when first sent
        self.sent_copy = b""
        self.req_end_sent = False
        gov = self.gov
        if gov is None:
            self.dispatch(failed, same_ok)
            return
        gov.try_deadline = 0.0
        self.deadline = gov.overall
        if gov.policy is not None and not same_ok:
            # Envoy's backoff: full jitter over 25 ms doubled per retry, so retries do not arrive in a burst.
            done = gov.policy.retries - gov.retries_left
            pause = random.random() * min(RETRY_BACKOFF_BASE * (1 << max(done - 1, 0)), RETRY_BACKOFF_MAX)
            self.down.loop.call_later(pause, self._retry_later, failed)
            return
        self._try(failed, same_ok)

    def _retry_later(self, failed: Endpoint | None) -> None:
        if not self.done:
            self._try(failed, False)
            self.down.want_flush()

    def _end_attempt(self) -> None:
        endpoint = self.endpoint
        if endpoint is not None:
            self.endpoint = None
            endpoint.active -= 1

    def _drop_upstream(self, error_code: int) -> None:
        conn, up_sid = self.conn, self.up_sid
        self.conn = self.up_sid = None
        if conn is not None and up_sid is not None:
            conn.reset(up_sid, error_code)
        elif self.endpoint is not None:
            self.down.pool.withdraw(self.endpoint, self)  # still waiting for a connection
            gov = self.gov
            if gov is not None and gov.pending:
                gov.end_pending()
        self._end_attempt()

    def _release_credits(self) -> None:
        """Credit back the bytes an ending stream still holds: unacknowledged, they would shrink both
        connections' windows for good. (A stream that ends normally holds none: nothing to do.)"""
        resp_q = self.resp_q
        if resp_q:
            conn = self.credit_conn
            for _, credit in resp_q:
                if credit and conn is not None:
                    conn.codec.acknowledge(self.credit_sid, credit)
            resp_q.clear()
            if conn is not None:
                conn.want_flush()
        req_q = self.req_q
        if req_q:
            down = self.down
            for _, credit in req_q:
                if credit:
                    down.codec.acknowledge(self.sid, credit)
            req_q.clear()
            down.want_flush()

    def _record(self) -> None:
        if self.resp_q or self.req_q:
            self._release_credits()
        self.credit_conn = None
        gov = self.gov
        if gov is not None:
            gov.release(self.lookup)
        route = self.route
        down = self.down
        down.stream_done(self)
        self._report(route.stats if route is not None else down.unrouted_stats())

    def _report(self, stats: ServiceStats) -> None:
        """The stream ended: counted and handed to the telemetry sinks through the way it ended (its Outcome,
        found by one key: plexus.proxy.outcomes), a RequestEntry only when a sink needs one."""
        down = self.down
        started = self.started
        counted = status = self.status
        grpc_status = ""
        grpc = self.grpc
        if grpc:
            if status and not self.resp_started:
                status = 200  # our trailers-only local reply: HTTP 200, the error is in grpc-status
            code = self.grpc_code
            trailers = self.resp_trailers
            if code is None and trailers is not None:
                code = _grpc_status_value(trailers)
            if code is not None:
                grpc_status = _GRPC_STATUS_TEXT.get(code) or code.decode("latin-1")
        reason = self.reason
        picked = self.picked
        if down.direction != "egress":
            peer: str | bytes | None = self.caller
        else:
            peer = picked.instance.workload if picked is not None else None
        key = (
            self.method,
            self.path,
            self.authority,
            self.agent,
            status,
            reason,
            DOWNSTREAM_DISCONNECT if self.client_reset else (response_flag(reason) if reason else NO_FLAGS),
            picked.key if picked is not None else "",
            peer,
            self.attempts,
            grpc_status,
            "grpc" if grpc else "http",
            counted,
        )
        outcome = stats.outcomes.get(key) or outcome_for(stats, key)
        trace = self.trace
        if trace is None:
            sampled = False
        elif type(trace) is bytes:
            sampled = sampled_in_lines(trace)
        else:
            sampled = trace.sampled  # type: ignore[union-attr]
        request_ended(
            stats,
            outcome,
            started,
            (down.loop.time() - started) * 1000.0,
            self.req_bytes,
            self.resp_bytes,
            (self.authority, self.agent, trace, None),
            sampled,
        )

    def finish(self) -> None:
        """The response ended toward the caller."""
        if self.done:
            return
        self.done = True
        gov = self.gov
        if gov is not None and gov.watched is not None:
            gov.outcome(self.status)  # a response that ended without grpc-status trailers
        conn, up_sid = self.conn, self.up_sid
        if conn is not None and up_sid is not None:
            self.conn = self.up_sid = None
            if self.req_end_sent:
                conn.finished(up_sid)
            else:
                conn.reset(up_sid, ErrorCodes.NO_ERROR)  # the response is complete: stop the request
        endpoint = self.endpoint
        if endpoint is not None:  # _end_attempt, inline
            self.endpoint = None
            endpoint.active -= 1
        if not self.req_ended:
            self.down.reset_stream(self.sid, ErrorCodes.NO_ERROR)  # RFC 9113 §8.1: rest of request unread
        self._record()

    @staticmethod
    def _grpc_reply(reason: str, service: str, message: str | None, grpc: int | None) -> Headers:
        """The trailers-only answer of a local reply: the reason's gRPC status unless ``grpc`` names one."""
        if grpc is None:
            grpc = GRPC_FOR_REASON.get(reason)
        if grpc is None:
            headers = mesh_error_response(reason, service or None)
        else:
            headers = trailers_only_response(GrpcStatus(grpc), grpc_error_text(reason, service or None))
        if message is not None:
            headers = [h for h in headers if h[0] != b"grpc-message"]
            headers.append((b"grpc-message", encode_grpc_message_text(message)))
        return headers

    def reset_downstream(self, error_code: int) -> None:
        if self.done:
            return
        self.done = True
        self._drop_upstream(ErrorCodes.CANCEL)
        self.down.reset_stream(self.sid, error_code)
        self._record()

    def on_deadline(self) -> None:
        if self.done:
            return
        gov = self.gov
        if gov is not None and gov.try_deadline and gov.try_deadline < gov.overall:
            self._try_timed_out(gov)
            return
        # A deadline the caller chose says nothing about the endpoint's health: no failure is counted (a
        # rule's timeout does count, as in Envoy). A gRPC call gets DEADLINE_EXCEEDED (trailers-only, or
        # trailers once its headers went out).
        if gov is not None and gov.policy is not None and gov.policy.timeout is not None:
            gov.outcome(504)
        self.fail(reasons.UPSTREAM_REQUEST_TIMEOUT)

    def _try_timed_out(self, gov: _Gov) -> None:
        """One try passed the rule's per-try timeout: cancel it, retry (as a reset, Envoy) or answer 504."""
        failed = self.endpoint
        gov.outcome(504)
        if self._take_retry(_RESET):
            self._drop_upstream(ErrorCodes.CANCEL)
            self._retry(failed, False)
            return
        self.fail(reasons.UPSTREAM_PER_TRY_TIMEOUT)

    def fail(
        self, reason: str, message: str | None = None, status: int | None = None, grpc: int | None = None
    ) -> None:
        """Answer the caller with a local reply naming ``reason`` (a reset when its response began):
        ``status`` (HTTP/2) or ``grpc`` (a gRPC status) when the reason's own mapping is not the answer."""
        if self.done:
            return
        self.reason = reason
        down = self.down
        proxy = down.proxy
        self._drop_upstream(ErrorCodes.CANCEL)
        service = self.service
        proxy.stats.local_reply(reason, service)
        if self.resp_started:
            if self.grpc:
                # The call's headers went out: end it with the mesh status as trailers (UNAVAILABLE for an
                # upstream reset, as Envoy reports it), dropping bytes not yet sent.
                self._release_credits()
                status_line = self._grpc_reply(reason, service, None, grpc)
                self.resp_trailers = [h for h in status_line if h[0].startswith(b"grpc-")]
                self.resp_end = True
                self.pump_response()
                if self.done:
                    return
            self.reset_downstream(ErrorCodes.INTERNAL_ERROR)
            return
        self.done = True
        if status is None:
            status = STATUS_FOR.get(reason, 503)
        self.status = status
        error = reasons.error_header_value(reason, service or None).encode()
        hop = proxy.hop_name.encode()
        codec = down.codec
        if log.isEnabledFor(logging.DEBUG):
            log.debug("h2 local reply %d %s service=%s", status, reason, service)
        try:
            if self.grpc:
                headers = self._grpc_reply(reason, service, message, grpc)
                self.grpc_code = _grpc_status_value(headers)
                headers += [(_ERROR_HEADER, error), (_HOP_HEADER, hop)]
                codec.send_headers(self.sid, headers, end_stream=True)
            else:
                text = message or reason
                body = f"{status} {HTTPStatus(status).phrase}: {text}\n".encode()
                fits = codec.send_window(self.sid) >= len(body)
                headers = [
                    (b":status", str(status).encode()),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (_ERROR_HEADER, error),
                    (_HOP_HEADER, hop),
                ]
                if fits:
                    headers.append((b"content-length", str(len(body)).encode()))
                codec.send_headers(self.sid, headers, end_stream=not fits)
                if fits:
                    codec.send_data(self.sid, body, end_stream=True)
                    self.resp_bytes = len(body)
        except h2x.StreamClosedError:
            pass  # the caller reset meanwhile
        if not self.req_ended:
            down.reset_stream(self.sid, ErrorCodes.NO_ERROR)
        down.want_flush()
        self._record()


_GRPC_STATUS_TEXT: Final = {str(code).encode(): str(code) for code in range(17)}  # decoded once, not per call


def service_from_authority(authority: bytes | None) -> str:
    return service_from_host(authority) or ""


# What failed a try, for RetryOn: no connection; refused unseen (REFUSED_STREAM, a provider sidecar's
# retriable reply); reset or timed out after it was sent; a response whose status retry_on names.
_CONNECT: Final = 1
_REFUSED: Final = 2
_RESET: Final = 3
_STATUS: Final = 4


# Istio's retry host predicate (previous_hosts, host_selection_retry_max_attempts 5): a retry picks again
# when the balancer offers an endpoint the request already tried.
RETRY_HOST_SELECTIONS: Final = 5


def pick_untried(
    route: Route,
    rule: Rule | None,
    lookup: HeaderLookup,
    exclude: Endpoint,
    picked: Endpoint | None,
    tried: list[Endpoint],
) -> Endpoint | None:
    """A retry's endpoint: another pick while the balancer offers one already tried (a few times at most,
    then the last offer stands, as in Envoy)."""
    for _ in range(RETRY_HOST_SELECTIONS):
        if picked is None or picked not in tried:
            break
        picked = route.pick_in(rule, lookup, exclude)
    return picked


def http_for_grpc(code: int) -> int:
    return HTTP_FOR_GRPC[code] if 0 <= code < len(HTTP_FOR_GRPC) else 500


def _status_of(headers: Headers) -> int:
    for name, value in headers:
        if name == b":status":
            return int(value) if value.isdigit() else 0
    return 0


def _grpc_status_value(headers: Headers) -> bytes | None:
    """The raw ``grpc-status`` of a header block (None without one), as the entry reports it."""
    for name, value in headers:
        if name == _GRPC_STATUS:
            return value
    return None


def grpc_status_of(headers: Headers) -> int | None:
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() else 2  # garbage: UNKNOWN
    return None


class _Gov:
    """A governed stream's policy state: made once per stream, only on a policed route (Route.policed)."""

    __slots__ = (
        "admitted",
        "breaker",
        "detects",
        "gate",
        "outlier",
        "overall",
        "pending",
        "policy",
        "requested",
        "retries_left",
        "retrying",
        "rule",
        "tried",
        "try_deadline",
        "watched",
    )

    def __init__(self, gate: Any, rule: Rule | None, policy: Any, breaker: Any, detects: bool) -> None:
        self.gate = gate  # admitted: gate.done(admitted, lookup) once the stream ends
        self.admitted = 0.0  # on the gate's clock
        self.rule = rule
        self.policy = policy  # a plexus.proxy.resilience.RulePolicy, or None (built-in retries)
        self.breaker = breaker  # the cluster's CircuitBreaker when it counts this request
        self.detects = detects  # egress: each try's endpoint may be watched by its cluster's outlier detector
        self.outlier: Any = None  # the OutlierDetector watching ``watched``
        self.overall = math.inf  # the request's deadline, every try included
        self.try_deadline = 0.0  # this try's (per-try timeout), 0.0: none
        self.retries_left = policy.retries if policy is not None else 0
        self.requested = False  # breaker.start_request() counted
        self.pending = False  # breaker.start_pending() counted (waiting for a connection)
        self.retrying = False  # breaker.start_retry() counted for the try under way
        self.watched: Endpoint | None = None  # the endpoint whose result outlier detection still awaits
        self.tried: list[Endpoint] | None = None  # endpoints earlier tries went to (made at the first retry)

    def allows(self, kind: int) -> bool:
        if self.retries_left <= 0:
            return False
        on = self.policy.retry_on
        if kind == _CONNECT:
            return bool(on.connect_failure)
        if kind == _REFUSED:  # never reached an app: as safe as a connect failure
            return bool(on.refused_stream or on.connect_failure)
        if kind == _RESET:
            return bool(on.reset)
        return True  # _STATUS: the caller asked retry_on about the status

    def start_retry(self, kind: int) -> bool:
        """Count a retry. One of a request no app saw (connect failure, refused unseen) adds no load to
        any app, so it spends retries left but not the breaker's retry budget."""
        breaker = self.breaker
        if breaker is not None and kind != _CONNECT and kind != _REFUSED:
            if self.retrying:
                self.retrying = False
                breaker.end_retry()  # the try that just failed was a retry
            if not breaker.start_retry():
                return False
            self.retrying = True
        self.retries_left -= 1
        return True

    def end_pending(self) -> None:
        self.pending = False
        self.breaker.end_pending()

    def outcome(self, status: int) -> None:
        """The watched endpoint answered ``status`` (or failed as it: 503 reset, 504 timeout)."""
        endpoint = self.watched
        if endpoint is None:
            return
        self.watched = None
        if status >= 500:
            self.outlier.failure(endpoint, status in GATEWAY_STATUSES)
        else:
            self.outlier.success(endpoint)

    def release(self, lookup: HeaderLookup | None) -> None:
        """The stream is over: give back what it holds of the breaker and the gate."""
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
            gate.done(self.admitted, lookup)


class _MirrorStream:
    """One mirrored copy of a request, fire and forget: opened on the mirror endpoint's connection, its
    response read and dropped (credited back so the connection's window stays open), any failure ignored."""

    __slots__ = ("body", "conn", "headers", "live", "sid")
    in_flight = 0  # every mirror stream of the process (MAX_MIRRORS_IN_FLIGHT)

    def __init__(self, headers: Headers, body: bytes) -> None:
        self.headers = headers
        self.body = body
        self.conn: Http2UpstreamConnection | None = None
        self.sid = 0
        self.live = True
        _MirrorStream.in_flight += 1

    def _gone(self) -> None:
        self.conn = None
        if self.live:
            self.live = False
            _MirrorStream.in_flight -= 1

    def on_upstream_ready(self, conn: Http2UpstreamConnection) -> None:
        body = self.body
        self.conn = conn
        self.sid = sid = conn.open(self, self.headers, not body)
        if body:
            try:
                taken = conn.codec.send_data(sid, body, True)
            except h2x.StreamClosedError:
                return
            if taken < len(body):
                conn.reset(sid)  # no window for the whole copy now: a mirror never waits
                self._gone()
        self.body = b""

    def on_upstream_headers(self, headers: Headers, end_stream: bool) -> None:
        return None

    def on_upstream_data(self, data: bytes, flow_controlled_length: int, end_stream: bool) -> None:
        conn = self.conn
        if conn is not None and flow_controlled_length:
            conn.codec.acknowledge(self.sid, flow_controlled_length)
            conn.want_flush()

    def on_upstream_trailers(self, headers: Headers) -> None:
        return None

    def on_upstream_end(self) -> None:
        self._gone()

    def on_upstream_reset(self, error_code: int, unprocessed: bool) -> None:
        self._gone()

    def on_upstream_window(self) -> None:
        return None

    def on_upstream_lost(self, unprocessed: bool, reason: str) -> None:
        self._gone()

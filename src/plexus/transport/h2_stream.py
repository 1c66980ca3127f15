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
"""

from __future__ import annotations

import logging
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import h2.exceptions as h2x
from h2.errors import ErrorCodes

from plexus.codec.http2 import (
    Headers,
    encode_grpc_message_text,
    format_grpc_timeout,
    mesh_error_response,
)
from plexus.core import reasons
from plexus.proxy import Endpoint, service_from_host
from plexus.proxy.stream import HeaderLookup

if TYPE_CHECKING:
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
}


def filter_headers(headers: Headers) -> Headers:
    """End-to-end fields only (``te`` only as ``trailers``, RFC 9113 §8.2.2)."""
    out: Headers = []
    for name, value in headers:
        if name in HOP_BY_HOP or (name == b"te" and value.strip().lower() != b"trailers"):
            continue
        out.append((name, value))
    return out


class H2Stream:
    __slots__ = (
        "attempts",
        "conn",
        "credit_conn",
        "credit_sid",
        "deadline",
        "done",
        "down",
        "endpoint",
        "grpc",
        "lookup",
        "refusals",
        "req_end_sent",
        "req_ended",
        "req_q",
        "req_trailers",
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
        "up_headers",
        "up_sid",
    )

    def __init__(
        self, down: Http2Downstream, sid: int, up_headers: Headers, grpc: bool, ended: bool, service: str
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
        self.req_q: deque[list[bytes | int]] = deque()  # [data, downstream credit owed once sent]
        self.req_ended = ended
        self.req_end_sent = False
        self.req_trailers: Headers | None = None
        self.sent_copy: bytearray | None = bytearray()  # request bytes sent upstream (None: too many)
        self.resp_q: deque[list[bytes | int]] = deque()  # [data, upstream credit owed once sent]
        self.resp_started = False
        self.resp_end = False
        self.resp_done = False
        self.resp_trailers: Headers | None = None
        self.status = 0
        self.done = False
        self.started = down.loop.time()
        self.deadline = 0.0
        self.timeout_at: int | None = None  # index of grpc-timeout in up_headers

    # -- routing ------------------------------------------------------------------------------------

    def routed(self, route: Route, lookup: HeaderLookup, timeout: float) -> None:
        self.route = route
        self.lookup = lookup
        self.service = route.service
        if route.cluster is not None:
            self.up_headers.append((SERVICE_HEADER, route.service.encode()))
        self.deadline = self.started + timeout
        self.down.watch_deadline(self.deadline)  # one sweep timer per connection, not a timer per stream
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
        self.endpoint = picked
        picked.active += 1
        picked.total += 1
        self.attempts += 1
        self.down.proxy.pool.submit(picked, self)

    # -- upstream events (UpstreamStream) -----------------------------------------------------------

    def on_upstream_ready(self, conn: Http2UpstreamConnection) -> None:
        if self.done:
            return
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
        status = 0
        for name, value in headers:
            if name == b":status":
                status = int(value) if value.isdigit() else 0
                break
        if 100 <= status < 200:
            if status != 101:  # 101 is forbidden in HTTP/2 (RFC 9113 §8.6); h2 refuses it on input
                self.down.codec.send_headers(self.sid, filter_headers(headers))
                self.down.want_flush()
            return
        if end_stream and self._unprocessed_reply(headers):
            failed = self.endpoint
            if self._may_retry():
                self._drop_upstream(ErrorCodes.CANCEL)
                self._retry(failed, False)
                return
            route = self.route
            if route is not None and route.local is not None:
                # Ingress: tell the consumer sidecar in its terms that no app took the call (it retries).
                self.fail(route.connect_fail_reason)
                return
        self.status = status
        self.resp_started = True
        self.down.codec.send_headers(self.sid, filter_headers(headers), end_stream)
        self.down.want_flush()
        if end_stream:
            self.resp_end = self.resp_done = True
            self.finish()

    def on_upstream_data(self, data: bytes, flow_controlled_length: int, end_stream: bool) -> None:
        if self.done:
            return
        self.resp_q.append([data, flow_controlled_length])
        if end_stream:
            self.resp_end = True
        self.pump_response()

    def on_upstream_trailers(self, headers: Headers) -> None:
        if self.done:
            return
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
        if self.done:
            return
        self.resp_end = True
        self.pump_response()

    def on_upstream_reset(self, error_code: int, unprocessed: bool) -> None:
        failed = self.endpoint
        self.up_sid_closed()
        self._end_attempt()
        if self.done:
            return
        if unprocessed and self._may_retry():
            self._retry(failed, True)
            return
        if unprocessed and error_code == ErrorCodes.REFUSED_STREAM and self._may_retry_local_refusal():
            self.refusals += 1
            pause = LOCAL_REFUSAL_PAUSE * (2 ** (self.refusals - 1))
            self.down.loop.call_later(pause, self._retry_local, failed)
            return
        if failed is not None and error_code != ErrorCodes.CANCEL:
            failed.failures += 1
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
        if unprocessed:
            if self._may_retry():
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
            return
        if data or flow_controlled_length:
            self.req_q.append([data, flow_controlled_length])
        if end_stream:
            self.req_ended = True
        self.pump_request()

    def on_down_trailers(self, headers: Headers) -> None:
        self.req_trailers = filter_headers(headers)
        self.req_ended = True
        if not self.done:
            self.pump_request()

    def on_down_end(self) -> None:
        self.req_ended = True
        if not self.done:
            self.pump_request()

    def on_down_reset(self, error_code: int) -> None:
        """The caller reset its stream (or its connection is gone): cancel upstream too."""
        if self.done:
            return
        self.done = True
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
        down_codec = self.down.codec
        q = self.req_q
        credited = False
        try:
            while q:
                item = q[0]
                data = item[0]
                assert isinstance(data, bytes)
                end = self.req_ended and len(q) == 1 and self.req_trailers is None
                taken = codec.send_data(up_sid, data, end)
                copy = self.sent_copy
                if copy is not None and taken:
                    if len(copy) + taken > RETRY_BUFFER_BYTES:
                        self.sent_copy = None  # too long to replay: no retry from now on
                    else:
                        copy += data[:taken] if taken < len(data) else data
                if taken < len(data):
                    item[0] = data[taken:]
                    break
                q.popleft()
                credit = item[1]
                assert isinstance(credit, int)
                if credit:
                    down_codec.acknowledge(self.sid, credit)
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
        conn.want_flush()
        if credited:
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
                item = q[0]
                data = item[0]
                assert isinstance(data, bytes)
                end = self.resp_end and len(q) == 1 and self.resp_trailers is None
                taken = codec.send_data(self.sid, data, end)
                if taken < len(data):
                    item[0] = data[taken:]
                    break
                q.popleft()
                credit = item[1]
                assert isinstance(credit, int)
                if credit and conn is not None:
                    conn.codec.acknowledge(self.credit_sid, credit)
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
            self.req_q.appendleft([bytes(copy), 0])  # already credited to the caller when first sent
        self.sent_copy = bytearray()
        self.req_end_sent = False
        self.dispatch(failed, same_ok)

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
            self.down.proxy.pool.withdraw(self.endpoint, self)  # still waiting for a connection
        self._end_attempt()

    def _release_credits(self) -> None:
        """Credit back the bytes an ending stream still holds: unacknowledged, they would shrink both
        connections' windows for good."""
        conn = self.credit_conn
        for item in self.resp_q:
            credit = item[1]
            if credit and conn is not None:
                assert isinstance(credit, int)
                conn.codec.acknowledge(self.credit_sid, credit)
        self.resp_q.clear()
        if conn is not None:
            conn.want_flush()
        down = self.down
        for item in self.req_q:
            credit = item[1]
            if credit:
                assert isinstance(credit, int)
                down.codec.acknowledge(self.sid, credit)
        self.req_q.clear()
        down.want_flush()

    def _record(self) -> None:
        self._release_credits()
        self.credit_conn = None
        route = self.route
        down = self.down
        down.stream_done(self)
        if route is not None:
            route.stats.record(self.status, (down.loop.time() - self.started) * 1000.0)

    def finish(self) -> None:
        """The response ended toward the caller."""
        if self.done:
            return
        self.done = True
        conn, up_sid = self.conn, self.up_sid
        if conn is not None and up_sid is not None:
            self.conn = self.up_sid = None
            if self.req_end_sent:
                conn.finished(up_sid)
            else:
                conn.reset(up_sid, ErrorCodes.NO_ERROR)  # the response is complete: stop the request
        self._end_attempt()
        if not self.req_ended:
            self.down.reset_stream(self.sid, ErrorCodes.NO_ERROR)  # RFC 9113 §8.1: rest of request unread
        self._record()

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
        # A deadline the caller chose says nothing about the endpoint's health: no failure is counted. A
        # gRPC call gets DEADLINE_EXCEEDED (trailers-only, or trailers once its headers went out).
        self.fail(reasons.UPSTREAM_REQUEST_TIMEOUT)

    def fail(self, reason: str, message: str | None = None) -> None:
        """Answer the caller with a local reply naming ``reason`` (a reset when its response began)."""
        if self.done:
            return
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
                status_line = mesh_error_response(reason, service or None)
                self.resp_trailers = [h for h in status_line if h[0].startswith(b"grpc-")]
                self.resp_end = True
                self.pump_response()
                if self.done:
                    return
            self.reset_downstream(ErrorCodes.INTERNAL_ERROR)
            return
        self.done = True
        status = STATUS_FOR.get(reason, 503)
        self.status = status
        error = reasons.error_header_value(reason, service or None).encode()
        hop = proxy.hop_name.encode()
        codec = down.codec
        if log.isEnabledFor(logging.DEBUG):
            log.debug("h2 local reply %d %s service=%s", status, reason, service)
        try:
            if self.grpc:
                headers = mesh_error_response(reason, service or None)
                if message is not None:
                    headers = [h for h in headers if h[0] != b"grpc-message"]
                    headers.append((b"grpc-message", encode_grpc_message_text(message)))
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
        except h2x.StreamClosedError:
            pass  # the caller reset meanwhile
        if not self.req_ended:
            down.reset_stream(self.sid, ErrorCodes.NO_ERROR)
        down.want_flush()
        self._record()


def service_from_authority(authority: bytes | None) -> str:
    return service_from_host(authority) or ""

"""One HTTP/1.1 request/response through the proxy: route, pick, connect or reuse, stream, retry, reply.

Writes to the upstream are batched: while the downstream connection is inside ``data_received`` the
exchange collects bytes and the connection flushes them once, so a request's head and body usually leave in
one ``write``; responses are batched the same way per upstream read. An exchange keeps a copy of what it
sent (up to RETRY_BUFFER_BYTES) so it can be replayed once on another endpoint when the first one was never
reached (connect failure, or a provider sidecar's 503 with a reason in RETRIABLE_BEFORE_SEND).
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

from plexus.codec.http1 import ResponseHead, encode_chunk, encode_request_head, local_reply, status_line
from plexus.codec.http1.encode import (
    CHUNKED_HEADER,
    CONNECTION_CLOSE,
    CONNECTION_KEEP_ALIVE,
    LAST_CHUNK,
    header_block,
)
from plexus.codec.http1.encode import STATUS_LINES as _STATUS_LINES
from plexus.core import reasons
from plexus.core.errors import ProtocolError
from plexus.proxy import Endpoint, service_from_host
from plexus.proxy.stats import DURATION_BUCKETS_MS
from plexus.transport.routes import Route

if TYPE_CHECKING:
    from plexus.codec.http1 import RequestHead
    from plexus.transport.http_downstream import HttpDownstream
    from plexus.transport.upstream import UpstreamConnection

log = logging.getLogger("plexus.dataplane")

RETRY_BUFFER_BYTES: Final = 64 * 1024  # requests up to this size can be replayed on another endpoint
HIGH_WATER_BYTES: Final = 256 * 1024  # bytes held while no upstream connection is ready before reading pauses
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_STATUS_FOR: Final = {
    reasons.UNKNOWN_SERVICE: 503,
    reasons.NO_HEALTHY_UPSTREAM: 503,
    reasons.UPSTREAM_CONNECT_FAILED: 503,
    reasons.UPSTREAM_CONNECT_TIMEOUT: 503,
    reasons.LOCAL_APP_UNAVAILABLE: 503,
    reasons.UPSTREAM_REQUEST_TIMEOUT: 504,
    reasons.UPSTREAM_RESET: 502,
    reasons.UPSTREAM_PROTOCOL_ERROR: 502,
}


class Exchange:
    __slots__ = (
        "attempts",
        "close_after",
        "conn",
        "done",
        "down",
        "endpoint",
        "head",
        "is_head",
        "keep_upstream",
        "out",
        "out_bytes",
        "out_chunked",
        "piping",
        "request_done",
        "resp_out",
        "response_done",
        "response_started",
        "retained",
        "retained_bytes",
        "route",
        "sent_continue",
        "started",
        "status",
        "swallow",
    )

    def __init__(self, down: HttpDownstream, head: RequestHead) -> None:
        self.down = down
        self.head = head
        self.is_head = head.method == b"HEAD"
        self.route: Route | None = None
        self.endpoint: Endpoint | None = None
        self.conn: UpstreamConnection | None = None
        self.out: list[bytes] = []  # bytes for the upstream not yet written
        self.out_bytes = 0
        self.retained: list[bytes] | None = []  # bytes written, kept for one replay
        self.retained_bytes = 0
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

    # -- request side -------------------------------------------------------------------------------

    def start(self) -> None:
        down = self.down
        self.started = down.loop.time()
        if down.request_timer is None:
            down.arm_request_timer()  # one timer per connection, re-armed lazily: no timer per request
        route = down.router.resolve(self.head)
        if isinstance(route, str):
            waiter = down.router.unknown_hook(self.head)
            if waiter is None:
                self.fail(route)
                return
            down.loop.create_task(self._await_route(waiter))  # rare: a service this sidecar never saw
            return
        # The common path, inlined (_routed does the same for the rare one): head first, then an endpoint.
        self.route = route
        head = self.head
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
        self.out.insert(0, encode_request_head(self.head, route.extra))
        self.dispatch(None)
        if self.head.expect_continue and not self.done and not self.sent_continue:
            self.sent_continue = True  # the proxy answers 100 itself and strips Expect (as Envoy does)
            self.down.transport_write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def dispatch(self, exclude: Endpoint | None) -> None:
        route = self.route
        assert route is not None
        endpoint = route.local or route.pick(self.head, exclude)
        if endpoint is None:
            self.fail(reasons.NO_HEALTHY_UPSTREAM)
            return
        self.endpoint = endpoint
        endpoint.active += 1
        endpoint.total += 1
        self.attempts += 1
        idle = self.down.ctx.pool.idle.get(endpoint.key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                # bind(), inlined for the pooled path
                self.conn = conn
                conn.exchange = self
                conn.received = False
                decoder = conn.decoder
                if self.is_head:
                    decoder.set_sink(self, True)
                else:
                    decoder.sink = self  # response events come straight here
                if self.down.write_paused and conn.transport is not None:
                    conn.transport.pause_reading()
                if self.out and not self.down.in_feed:
                    self.flush()
                return
        self.down.loop.create_task(self._connect(endpoint))  # no idle connection: the uncommon path

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
                self.out = [*self.retained, *self.out]
                self.retained, self.retained_bytes = [], 0
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
            self.retained_bytes += len(data)
            if self.retained_bytes > RETRY_BUFFER_BYTES:
                self.retained = None  # too big to replay: no retry after this point
            else:
                retained.append(data)
        assert self.conn is not None
        self.conn.write(data)

    def on_request_body(self, data: bytes) -> None:
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

    def abort_request(self, reply: bytes) -> None:
        """The request's own framing broke mid-body: reset the upstream, answer ``reply`` if we still can."""
        if self.done:
            return
        self.done = True
        self._drop_upstream()
        if self.response_started:
            self.down.abort()
        else:
            self.down.transport_write(reply)
            self.down.close()

    # -- response side ------------------------------------------------------------------------------

    def on_response_head(self, head: ResponseHead) -> None:
        status = head.status
        self.keep_upstream = head.keep_alive
        if status < 200:
            if status == 100 and self.sent_continue:
                return
            if self.head.version == "1.1":
                parts = [status_line(status, head.reason)]
                for name, value in head.headers:
                    parts += (name, b": ", value, b"\r\n")
                parts.append(b"\r\n")
                self.resp_out.append(b"".join(parts))
            return
        if status == 503 and head.error_reason is not None and self._may_retry():
            reason = reasons.parse_error_header(head.error_reason.decode("latin-1"))
            if reason in reasons.RETRIABLE_BEFORE_SEND:
                self.swallow = True
                return
        self.status = status
        self.response_started = True
        parts = [_STATUS_LINES.get(status) or status_line(status, head.reason)]
        for name, value in head.headers:
            parts += (name, b": ", value, b"\r\n")
        if not (self.is_head or status == 204 or status == 304) and head.content_length is None:
            if self.head.version == "1.1":
                self.out_chunked = True
                parts.append(CHUNKED_HEADER)
            else:
                self.close_after = True  # an HTTP/1.0 client reads this body until close
        if self.close_after or self.down.draining:
            self.close_after = True
            parts.append(CONNECTION_CLOSE)
        elif self.head.version != "1.1":
            parts.append(CONNECTION_KEEP_ALIVE)
        parts.append(b"\r\n")
        self.resp_out.append(b"".join(parts))

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
            self.resp_out.append(encode_chunk(data) if self.out_chunked else data)

    def flush_response(self) -> None:
        resp_out = self.resp_out
        if resp_out:
            data = resp_out[0] if len(resp_out) == 1 else b"".join(resp_out)
            resp_out.clear()
            transport = self.down.transport
            if transport is not None and not transport.is_closing():
                transport.write(data)

    def on_response_end(self) -> None:
        if self.swallow:
            self._replay_elsewhere()
            return
        resp_out = self.resp_out
        if self.out_chunked:
            resp_out.append(LAST_CHUNK)
        if resp_out:  # flush_response(), inlined
            data = resp_out[0] if len(resp_out) == 1 else b"".join(resp_out)
            resp_out.clear()
            transport = self.down.transport
            if transport is not None and not transport.is_closing():
                transport.write(data)
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
        self.out, self.retained, self.retained_bytes = list(self.retained), [], 0
        self.out_bytes = sum(len(b) for b in self.out)
        self.dispatch(failed)
        if self.conn is not None and self.out:
            self.flush()

    def on_response_upgrade(self, head: ResponseHead, tail: bytes) -> None:
        conn = self.conn
        assert conn is not None
        self.status = 101
        self.response_started = True
        parts = [status_line(101, head.reason)]
        header_block(head.headers, parts)
        parts += (b"connection: upgrade\r\n\r\n", tail)
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
        if (
            conn.reused
            and not conn.received
            and self.request_done
            and self.attempts < 2
            and self.retained is not None
            and self.head.method in IDEMPOTENT
        ):
            # A keep-alive connection the upstream closed while idle: replay once on a fresh connection.
            self._end_attempt()
            self.out, self.retained, self.retained_bytes = list(self.retained), [], 0
            self.dispatch(None)
            if self.conn is not None and self.out:
                self.flush()
            return
        if self.endpoint is not None:
            self.endpoint.failures += 1
        if self.response_started:
            self.done = True
            self._end_attempt()
            self.down.abort()
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

    def _finish_bookkeeping(self) -> None:
        self.done = True
        self._end_attempt()
        route = self.route
        if route is not None:
            route.stats.record(self.status, (self.down.loop.time() - self.started) * 1000.0)

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
        route = self.route
        if route is not None:  # ServiceStats.record(), inlined
            stats = route.stats
            status_class = self.status // 100
            stats.by_class[status_class if 0 < status_class < 6 else 0] += 1
            ms = (self.down.loop.time() - self.started) * 1000.0
            stats.buckets[bisect_left(DURATION_BUCKETS_MS, ms)] += 1
            stats.duration_sum_ms += ms
        self.down.exchange_finished(self)

    def fail(self, reason: str) -> None:
        """Answer with a local reply naming ``reason`` (or reset the client if the response already began)."""
        if self.done:
            return
        down = self.down
        if self.endpoint is not None and reason == reasons.UPSTREAM_REQUEST_TIMEOUT:
            self.endpoint.failures += 1
        self._drop_upstream()
        self.swallow = False
        status = _STATUS_FOR.get(reason, 503)
        route = self.route
        service = route.service if route is not None else (service_from_host(self.head.host) or "")
        down.ctx.stats.local_reply(reason, service)
        if self.response_started:
            self.done = True
            if route is not None:
                route.stats.record(self.status, (down.loop.time() - self.started) * 1000.0)
            down.abort()
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("local reply %d %s service=%s", status, reason, service)
        self.status = status
        if not self.request_done and self.head.has_body:
            self.close_after = True  # the rest of the body is not read: the connection cannot go on
        self.resp_out.clear()
        down.transport_write(
            local_reply(
                status,
                error=reasons.error_header_value(reason, service),
                hop=down.ctx.settings.hop_name,
                close=self.close_after or down.draining,
                head_only=self.is_head,
            )
        )
        self._finish_bookkeeping()
        down.exchange_finished(self)

"""One HTTP/1.1 request/response through the proxy: route, pick, connect or reuse, stream, retry, reply.

Writes to the upstream are batched: while the downstream connection is inside ``data_received`` the
exchange collects bytes and the connection flushes them once, so a request's head and body usually leave in
one ``write``; responses are batched the same way per upstream read. An exchange keeps a copy of what it
sent (up to RETRY_BUFFER_BYTES) so it can be replayed once on another endpoint when the first one was never
reached (connect failure, or a provider sidecar's 503 with a reason in RETRIABLE_BEFORE_SEND), and an
idempotent request whose upstream reset before any byte of an answer (directly, or as a provider sidecar's
upstream_reset).
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

from plexus.codec.http1 import ResponseHead, encode_chunk, encode_request_head, local_reply, status_line
from plexus.codec.http1.encode import LAST_CHUNK, STATUS_LINES
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
# Response heads are written as status line + the upstream's raw lines (each CRLF-first) + ours + CRLFCRLF.
_STATUS_BARE: Final = {status: line[:-2] for status, line in STATUS_LINES.items()}  # without the CRLF
_CHUNKED_LINE: Final = b"\r\ntransfer-encoding: chunked"
_CLOSE_LINE: Final = b"\r\nconnection: close"
_KEEP_ALIVE_LINE: Final = b"\r\nconnection: keep-alive"
_END_OF_HEAD: Final = b"\r\n\r\n"
# Index into ServiceStats.by_class for every status llhttp can report (3 digits): 1..5 for 1xx..5xx, else 0.
_STATUS_CLASS: Final = [s // 100 if 100 <= s < 600 else 0 for s in range(1000)]
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
        self.endpoint = endpoint
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
                line = _STATUS_BARE.get(status) or status_line(status)[:-2]
                self.resp_out += (line, head.raw, _END_OF_HEAD)
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
        resp_out += (_STATUS_BARE.get(status) or status_line(status)[:-2], head.raw)
        if not head.has_length and not (self.is_head or status == 204 or status == 304):
            if self.head.version == "1.1":
                self.out_chunked = True
                resp_out.append(_CHUNKED_LINE)
            else:
                self.close_after = True  # an HTTP/1.0 client reads this body until close
        if self.close_after or self.down.draining:
            self.close_after = True
            resp_out.append(_CLOSE_LINE)
        elif self.head.version != "1.1":
            resp_out.append(_KEEP_ALIVE_LINE)
        resp_out.append(_END_OF_HEAD)
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
        down = self.down
        now = down.loop.time()  # uvloop: the loop's cached clock, not a system call
        if route is not None:  # ServiceStats.record(), inlined
            stats = route.stats
            stats.by_class[_STATUS_CLASS[self.status]] += 1
            ms = (now - self.started) * 1000.0
            stats.buckets[bisect_left(DURATION_BUCKETS_MS, ms)] += 1
            stats.duration_sum_ms += ms
        down.exchange_finished(self, now)

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

"""The downstream side of an HTTP/1.1 listener: one protocol object per client connection.

Requests are decoded by ``RequestDecoder`` (callbacks, no event objects) and become ``Exchange``s; one is
current, later pipelined ones wait in order (reading pauses while any wait, so what is buffered stays
bounded by what was read). Reading also pauses while bytes pile up for an upstream that is not ready or
whose socket buffer is full; the upstream's reading pauses while this client's socket buffer is full.
After a 101 the connection becomes a byte pipe to the upstream connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Final, cast

from plexus.codec.http1 import RequestDecoder, RequestHead, local_reply
from plexus.core import reasons, speedups
from plexus.core.errors import ProtocolError
from plexus.proxy import Endpoint
from plexus.proxy.outcomes import JOURNAL_FOLD, Outcome
from plexus.proxy.telemetry import INBOUND, OUTBOUND, UNKNOWN, RequestEntry, Telemetry, response_flag
from plexus.transport.http_exchange import Exchange

if TYPE_CHECKING:
    from plexus.transport.context import DataPlaneContext
    from plexus.transport.routes import Router
    from plexus.transport.upstream import UpstreamConnection

log = logging.getLogger("plexus.dataplane")

_PAUSE_PIPELINE: Final = 1  # a later request waits for the current one
_PAUSE_BUFFER: Final = 2  # bytes wait for an upstream connection
_PAUSE_UPSTREAM: Final = 4  # the upstream socket buffer is full
_PAUSE_STOPPED: Final = 8  # framing broke or the connection is closing: read nothing more
UPGRADE_BUFFER_BYTES: Final = 64 * 1024  # bytes held after an Upgrade request until the 101 arrives


class HttpDownstream(asyncio.Protocol):
    # (slots: read per request, from Python and from plexus.core.speedups.journal_end, by offset)
    __slots__ = (
        "__weakref__",
        "_starting",
        "closed",
        "ctx",
        "current",
        "decoder",
        "decoding",
        "direction",
        "draining",
        "error_reply",
        "idle_since",
        "idle_timer",
        "in_feed",
        "last_outcome",
        "last_signature",
        "loop",
        "outbound",
        "paused",
        "peer_eof",
        "pending",
        "pipe_conn",
        "request_timer",
        "router",
        "tracer",
        "traffic",
        "transport",
        "upgrade_buffer",
        "write_paused",
    )

    def __init__(self, ctx: DataPlaneContext, router: Router, direction: str) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.router = router
        self.direction = direction  # "egress" | "ingress"
        self.outbound = direction == "egress"
        self.traffic = OUTBOUND if self.outbound else INBOUND  # RequestEntry.direction (Istio's words)
        self.tracer = ctx.stats.telemetry.tracer  # (read once per request by Exchange.start)
        self.transport: asyncio.Transport | None = None
        # (trace blocks come as head.trace_block only in shapes the tracer approved: Exchange.start)
        self.decoder = RequestDecoder(self, ctx.limits, block_check=self.tracer.approves_block)
        self.current: Exchange | None = None
        self.decoding: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.paused = 0
        self.write_paused = False
        self.in_feed = False
        self.closed = False
        self.draining = False
        self.peer_eof = False
        self.error_reply: bytes | None = None
        self.upgrade_buffer: list[bytes] | None = None
        self.pipe_conn: UpstreamConnection | None = None
        self.idle_since = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.request_timer: asyncio.TimerHandle | None = None
        self._starting = False
        # The last request's ending (Exchange._ended): its signature and its Outcome (set with the first
        # signature: () matches none).
        self.last_signature: tuple[object, ...] = ()
        self.last_outcome: Outcome

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        ctx = self.ctx
        ctx.connections.add(self)
        ctx.stats.downstream_cx_total += 1
        ctx.stats.downstream_cx_active += 1
        self.idle_since = self.loop.time()
        self.idle_timer = self.loop.call_later(ctx.settings.idle_timeout, self._idle_check)

    def data_received(self, data: bytes) -> None:
        pipe = self.pipe_conn
        if pipe is not None:
            pipe.write(data)
            return
        if self.upgrade_buffer is not None:
            self._buffer_upgrade(data)
            return
        self.in_feed = True
        try:
            self.decoder.feed(data)
        finally:
            self.in_feed = False
        current = self.current
        if current is not None and current.out and current.conn is not None:
            current.flush()

    def eof_received(self) -> bool | None:
        if self.pipe_conn is not None:
            transport = self.pipe_conn.transport
            if transport is not None and transport.can_write_eof():
                transport.write_eof()
            return True
        self.peer_eof = True
        decoding = self.decoding
        if decoding is not None and not decoding.request_done:
            return False  # the client left mid-request, which can never complete: close now (DC), as Envoy
        return self.current is not None  # answer what is in flight, then close; else close now

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.stats.downstream_cx_active -= 1
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None
        if self.pipe_conn is not None:
            self.pipe_conn.close()
            self.pipe_conn = None
        current, self.current = self.current, None
        self.pending.clear()
        self.decoding = None
        self.decoder.release()  # (its parsers and sinks point back here: freed now, not by the collector)
        if current is not None and not current.done:
            current.abandon()  # the client is gone: the upstream exchange cannot complete

    def pause_writing(self) -> None:
        self.write_paused = True
        conn = self.pipe_conn or (self.current.conn if self.current is not None else None)
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        conn = self.pipe_conn or (self.current.conn if self.current is not None else None)
        if conn is not None and conn.transport is not None:
            conn.transport.resume_reading()

    # -- RequestSink --------------------------------------------------------------------------------

    def on_request_head(self, head: RequestHead) -> None:
        exchange = Exchange(self, head)
        self.decoding = exchange
        self.decoder.body_sink = exchange
        if self.current is None and not self.pending:
            self.current = exchange
            exchange.start()
        else:
            self.pending.append(exchange)
            self._pause(_PAUSE_PIPELINE)

    def on_request_body(self, data: bytes) -> None:
        if self.decoding is not None:
            self.decoding.on_request_body(data)

    def on_request_end(self) -> None:
        if self.decoding is not None:
            self.decoding.on_request_end()

    def on_upgrade(self, tail: bytes) -> None:
        exchange = self.decoding
        if exchange is None or exchange.head.upgrade is None:
            self.on_request_error(ProtocolError(reasons.NOT_IMPLEMENTED, "CONNECT is not proxied", 501))
            return
        exchange.close_after = True  # unless a 101 turns this into a pipe, the connection ends with it
        self.upgrade_buffer = []
        if tail:
            self._buffer_upgrade(tail)

    def on_request_error(self, error: ProtocolError) -> None:
        ctx = self.ctx
        ctx.stats.downstream_reject(error.reason)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("downstream request refused: %s (%s)", error, error.reason)
        self._pause(_PAUSE_STOPPED)
        reply = local_reply(
            error.status_hint,
            error=reasons.error_header_value(error.reason),
            hop=ctx.settings.hop_name,
            close=True,
        )
        broken = self.decoding
        if broken is not None and not broken.request_done:
            if broken is self.current:
                broken.abort_request(reply, error.reason, error.status_hint)
                return
            if broken in self.pending:
                self.pending.remove(broken)
        self._report_refused(error, broken.head if broken is not None and not broken.request_done else None)
        if self.current is None and not self.pending:
            self.transport_write(reply)
            self.close()
        else:
            self.error_reply = reply  # answered after the requests before it, then the connection closes

    def _report_refused(self, error: ProtocolError, head: RequestHead | None) -> None:
        """A request refused before it became an exchange (its head is None when it never parsed): counted
        under the direction's one "unknown" service, never under a name the client chose."""
        now = self.loop.time()
        self.ctx.stats.service(UNKNOWN, self.direction).done(
            RequestEntry(
                self.traffic,
                UNKNOWN,
                "http",
                head.method.decode("latin-1") if head is not None else "",
                head.target.partition(b"?")[0].decode("latin-1") if head is not None else "",
                now,
                0.0,
                error.status_hint,
                reason=error.reason,
                flags=response_flag(error.reason),
                attempts=0,
            )
        )

    # -- used by exchanges --------------------------------------------------------------------------

    def transport_write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def exchange_finished(self, exchange: Exchange, now: float | None = None) -> None:
        if exchange is not self.current:
            return
        self.current = None
        self.idle_since = self.loop.time() if now is None else now
        if exchange.close_after:
            self.close()
            return
        if (
            self.pending
            or self.paused
            or self.draining
            or self.peer_eof
            or self.closed
            or self._starting
            or self.error_reply is not None
        ):
            self._after_exchange()
        # else (the common case): nothing waits and nothing ends; the connection idles for the next request

    def _after_exchange(self) -> None:
        """Start the next pipelined exchange, or end the connection when it is closing."""
        if self.draining and not self.pending:
            self.close()
            return
        if self._starting:
            return  # the loop below starts the next one
        self._starting = True
        try:
            while self.current is None and self.pending:
                nxt = self.pending.popleft()
                self.current = nxt
                nxt.start()
                if nxt.conn is not None and nxt.out and not self.in_feed:
                    nxt.flush()
        finally:
            self._starting = False
        if self.current is None:
            if self.closed:
                return
            if self.error_reply is not None:
                self.transport_write(self.error_reply)
                self.close()
                return
            if self.peer_eof or self.draining:
                self.close()
                return
        if not self.pending and self.paused & _PAUSE_PIPELINE:
            self._resume(_PAUSE_PIPELINE)

    def pause_for_buffer(self) -> None:
        self._pause(_PAUSE_BUFFER)

    def resume_for_buffer(self) -> None:
        self._resume(_PAUSE_BUFFER)

    def pause_for_upstream(self) -> None:
        self._pause(_PAUSE_UPSTREAM)

    def resume_for_upstream(self) -> None:
        self._resume(_PAUSE_UPSTREAM)

    def start_pipe(self, conn: UpstreamConnection) -> None:
        """After a 101: bytes flow both ways untouched."""
        self.current = None
        self.pipe_conn = conn
        conn.pipe = self.transport_write
        buffered, self.upgrade_buffer = self.upgrade_buffer or [], None
        if buffered:
            conn.write(b"".join(buffered))
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self._resume(_PAUSE_PIPELINE | _PAUSE_BUFFER)

    def pipe_eof_from_upstream(self) -> bool:
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        return True

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._pause(_PAUSE_STOPPED)
            self.transport.close()  # written bytes are flushed first

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def drain(self) -> None:
        """Stop taking new requests: close now if idle, else after the current response."""
        self.draining = True
        if self.pipe_conn is not None:
            return  # upgraded streams are long-lived; they end with the process or the peer
        if self.current is None:
            self.close()
        else:
            self.current.close_after = True

    # -- helpers ------------------------------------------------------------------------------------

    def _buffer_upgrade(self, data: bytes) -> None:
        assert self.upgrade_buffer is not None
        self.upgrade_buffer.append(data)
        if sum(len(b) for b in self.upgrade_buffer) > UPGRADE_BUFFER_BYTES:
            self._pause(_PAUSE_BUFFER)

    def _pause(self, bit: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= bit

    def _resume(self, bit: int) -> None:
        if self.paused & bit:
            self.paused &= ~bit
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def arm_request_timer(self) -> None:
        self.request_timer = self.loop.call_later(
            self.ctx.settings.request_timeout, self._request_timer_fired
        )

    def arm_deadline(self, when: float) -> None:
        """The current exchange must hear ``on_timeout`` at ``when`` (loop time): the connection's one timer
        is moved earlier when it would fire later, so timeouts cost no timer per request."""
        timer = self.request_timer
        if timer is not None:
            if timer.when() <= when:
                return  # it fires first and re-arms for what is left
            timer.cancel()
        self.request_timer = self.loop.call_at(when, self._request_timer_fired)

    def _request_timer_fired(self) -> None:
        """The current exchange may have started after the timer was armed: re-arm for what it has left."""
        self.request_timer = None
        current = self.current
        if current is None or current.done or self.closed:
            return
        remaining = current.deadline() - self.loop.time()
        if remaining <= 0:
            current.on_timeout()
            current = self.current
            if current is None or current.done or self.closed or self.request_timer is not None:
                return  # (a retry's deadline may have armed the timer meanwhile)
            remaining = current.deadline() - self.loop.time()
        # A policy's timeout may move the deadline on while the request runs: look again at least this often.
        remaining = min(remaining, self.ctx.settings.request_timeout)
        self.request_timer = self.loop.call_later(max(remaining, 0.001), self._request_timer_fired)

    def _idle_check(self) -> None:
        self.idle_timer = None
        if self.closed or self.pipe_conn is not None:
            return
        timeout = self.ctx.settings.idle_timeout
        remaining = self.idle_since + timeout - self.loop.time()
        if self.current is None and not self.pending and remaining <= 0:
            self.close()
            return
        self.idle_timer = self.loop.call_later(max(remaining, 1.0), self._idle_check)


# Exchange._ended's usual path in C (plexus.core.speedups.journal_end), told once where the slots it reads
# are (this module imports http_exchange, not the other way round).
if speedups.journal_setup is not None:
    speedups.journal_setup(Exchange, RequestHead, Outcome, Endpoint, HttpDownstream, Telemetry, JOURNAL_FOLD)

"""Raw TCP proxying: a downstream connection piped to an upstream one, with flow control and half-close.

The downstream's bytes are held (reading paused past HOLD_BYTES) until the upstream connects; a failed
connect is retried once on another endpoint (egress) before the downstream is closed.

Counters (istio_tcp_*): the service's ``TcpStats`` (opened when accepted, bytes each way, closed) and the
same split by peer workload (``TcpStats.peer``): outbound the connected upstream instance's workload, inbound
"unknown" (nothing on a plain TCP connection says who called). The peer is known once the upstream is
connected (or has failed: then "unknown"); bytes read before that are added to it then.

Access log: with one configured, a connection is one line when it closes, as Envoy's TCP proxy logs it
(``RequestEntry`` with protocol "tcp": its duration, the bytes each way, the upstream, the attempts, and UF
or UH with their reason when no upstream took it). It goes to the access log only: a connection is no
request for the request counters, the ring that ``plexus explain`` reads, or the taps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, cast

from plexus.core import reasons
from plexus.proxy import Endpoint, TcpStats
from plexus.proxy.access_line import TCP
from plexus.proxy.telemetry import INBOUND, OUTBOUND, UNKNOWN, RequestEntry, response_flag
from plexus.transport.context import DataPlaneContext

log = logging.getLogger("plexus.dataplane")

HOLD_BYTES: Final = 64 * 1024  # bytes read from the downstream before the upstream is up


class _UpstreamSide(asyncio.Protocol):
    def __init__(self, pipe: TcpPipe) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self.pipe.from_upstream(data)

    def eof_received(self) -> bool:
        self.pipe.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        pipe = self.pipe
        pipe.upstream_lost()
        if pipe.upstream is self:  # (the two name each other: freed now, not left for the cycle collector)
            pipe.upstream = None

    def pause_writing(self) -> None:
        self.pipe.pause_downstream_reading()

    def resume_writing(self) -> None:
        self.pipe.resume_downstream_reading()


class TcpPipe(asyncio.Protocol):
    """The downstream side; ``pick(exclude)`` chooses the upstream endpoint (None: nothing to connect to)."""

    def __init__(
        self,
        ctx: DataPlaneContext,
        stats: TcpStats,
        pick: Callable[[Endpoint | None], Endpoint | None],
        retry: bool,
        initial: bytes = b"",
    ) -> None:
        self.ctx = ctx
        self.stats = stats
        self.pick = pick
        self.retry = retry
        self.transport: asyncio.Transport | None = None
        self.upstream: _UpstreamSide | None = None
        self.held: list[bytes] = [initial] if initial else []
        self.held_bytes = len(initial)
        self.down_eof = False
        self.up_eof = False
        self.endpoint: Endpoint | None = None
        self.closed = False
        # The peer's [opened, closed, bytes_received, bytes_sent] (TcpStats.peer), once the peer is known;
        # ``early`` / ``early_sent`` count the bytes moved each way before that.
        self.peer: list[int] | None = None
        self.early = len(initial)
        self.early_sent = 0
        # For the access-log line: when the connection opened (loop clock), its bytes each way, the connect
        # attempts, the last upstream tried, and why none took it ("" once one did).
        self.started = 0.0
        self.received = len(initial)
        self.sent = 0
        self.attempts = 0
        self.upstream_host = ""
        self.reason = ""
        self.peer_workload = UNKNOWN

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.started = self.ctx.loop.time()
        self.ctx.tcp_connections.add(self)
        self.stats.connections += 1
        self.stats.active += 1
        self.stats.bytes_received += self.held_bytes
        self.ctx.loop.create_task(self._connect())

    async def _connect(self) -> None:
        exclude: Endpoint | None = None
        for attempt in range(2 if self.retry else 1):
            endpoint = self.pick(exclude)
            if endpoint is None:
                if not self.attempts:  # (after a failed attempt, its reason stands)
                    self.reason = reasons.NO_HEALTHY_UPSTREAM
                break
            endpoint.active += 1
            endpoint.total += 1
            self.endpoint = endpoint
            self.attempts += 1
            self.upstream_host = endpoint.key
            side = _UpstreamSide(self)
            host, port = endpoint.address
            try:
                await asyncio.wait_for(
                    self.ctx.loop.create_connection(lambda s=side: s, host, port),  # type: ignore[misc]
                    self.ctx.settings.connect_timeout,
                )
            except (OSError, TimeoutError) as exc:
                endpoint.active -= 1
                endpoint.failures += 1
                self.endpoint = None
                self.ctx.stats.upstream_cx_connect_fail += 1
                self.reason = self._connect_failure(exc)
                log.debug("tcp connect to %s failed (attempt %d): %r", endpoint.key, attempt + 1, exc)
                exclude = endpoint
                continue
            self.reason = ""
            if self.closed:
                if side.transport is not None:
                    side.transport.close()
                return
            self.ctx.stats.upstream_cx_total += 1
            self.upstream = side
            self._peer_known(endpoint.instance.workload if self.stats.direction == "egress" else UNKNOWN)
            if self.held:
                self._write_up(b"".join(self.held))
                self.held = []
                self.held_bytes = 0
            if self.down_eof and side.transport is not None and side.transport.can_write_eof():
                side.transport.write_eof()
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
            return
        if self.transport is not None:
            self.transport.abort()

    def _connect_failure(self, exc: BaseException) -> str:
        if self.stats.direction == "ingress":
            return reasons.LOCAL_APP_UNAVAILABLE
        if isinstance(exc, TimeoutError):
            return reasons.UPSTREAM_CONNECT_TIMEOUT
        return reasons.UPSTREAM_CONNECT_FAILED

    def _peer_known(self, workload: str) -> list[int]:
        peer = self.peer
        if peer is None:
            self.peer_workload = workload or UNKNOWN
            peer = self.peer = self.stats.peer(self.peer_workload)
            peer[0] += 1
            peer[2] += self.early
            peer[3] += self.early_sent
            self.early = self.early_sent = 0
        return peer

    def _write_up(self, data: bytes) -> None:
        side = self.upstream
        if side is not None and side.transport is not None:
            side.transport.write(data)

    def data_received(self, data: bytes) -> None:
        size = len(data)
        self.stats.bytes_received += size
        self.received += size
        peer = self.peer
        if peer is not None:
            peer[2] += size
        else:
            self.early += size
        if self.upstream is not None:
            self._write_up(data)
            return
        self.held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes > HOLD_BYTES and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.down_eof = True
        side = self.upstream
        if side is not None and side.transport is not None and side.transport.can_write_eof():
            side.transport.write_eof()
        return not self.up_eof  # both directions done: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.tcp_connections.discard(self)
        stats = self.stats
        stats.active -= 1
        stats.closed += 1
        self._peer_known(UNKNOWN)[1] += 1  # no upstream ever connected: the peer stays unknown
        if self.endpoint is not None:
            self.endpoint.active -= 1
            self.endpoint = None
        side = self.upstream
        if side is not None and side.transport is not None:
            if exc is None:
                side.transport.close()
            else:
                side.transport.abort()
        telemetry = self.ctx.stats.telemetry
        if telemetry.access_log is not None:
            telemetry.settle()  # (the requests that ended before: the log keeps the order of endings)
            telemetry.queue_line(self._entry(self.ctx.loop.time()))

    def _entry(self, now: float) -> RequestEntry:
        """The connection as one access-log entry (see the module's docstring)."""
        stats = self.stats
        reason = self.reason
        return RequestEntry(
            OUTBOUND if stats.direction == "egress" else INBOUND,
            stats.service,
            TCP,
            "",
            "",
            self.started,
            (now - self.started) * 1000.0,
            0,
            reason=reason,
            flags=response_flag(reason),
            request_bytes=self.received,
            response_bytes=self.sent,
            peer_workload=self.peer_workload,
            upstream=self.upstream_host,
            attempts=self.attempts,
        )

    def pause_writing(self) -> None:
        side = self.upstream
        if side is not None and side.transport is not None:
            side.transport.pause_reading()

    def resume_writing(self) -> None:
        side = self.upstream
        if side is not None and side.transport is not None:
            side.transport.resume_reading()

    # -- from the upstream side ---------------------------------------------------------------------

    def from_upstream(self, data: bytes) -> None:
        size = len(data)
        self.stats.bytes_sent += size
        self.sent += size
        peer = self.peer
        if peer is not None:
            peer[3] += size
        else:
            self.early_sent += size  # the upstream answered before its connect completed for us
        if self.transport is not None:
            self.transport.write(data)

    def upstream_eof(self) -> None:
        self.up_eof = True
        if self.transport is not None and not self.closed:
            if self.transport.can_write_eof():
                self.transport.write_eof()
            if self.down_eof:
                self.transport.close()

    def upstream_lost(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def pause_downstream_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_downstream_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

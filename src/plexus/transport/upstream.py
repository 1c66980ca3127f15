"""Upstream HTTP/1.1 connections and the keep-alive pool per endpoint.

An ``UpstreamConnection`` serves one exchange at a time (HTTP/1.1 without pipelining upstream); between
exchanges it sits idle in its endpoint's pool. Bytes that arrive on an idle connection break framing (a body
after a HEAD response, garbage): the connection is closed, so the next request never reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, cast

from plexus.codec.http1 import Http1Limits, ResponseDecoder, ResponseHead
from plexus.core.errors import ProtocolError
from plexus.proxy import DataPlaneStats, Endpoint

if TYPE_CHECKING:
    from collections.abc import Callable


class ExchangeSide(Protocol):
    """What an upstream connection reports to the exchange it serves (the decoder calls the on_response_*
    methods directly while the exchange is bound)."""

    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...
    def on_response_upgrade(self, head: ResponseHead, tail: bytes) -> None: ...
    def on_response_error(self, error: ProtocolError) -> None: ...
    def on_upstream_lost(self, conn: UpstreamConnection) -> None: ...
    def on_upstream_write_paused(self, paused: bool) -> None: ...
    def flush_response(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "closed",
        "counted",
        "decoder",
        "endpoint",
        "exchange",
        "pipe",
        "pool",
        "received",
        "reused",
        "served",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, endpoint: Endpoint) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.exchange: ExchangeSide | None = None
        self.decoder = ResponseDecoder(self, pool.limits)
        self.reused = False  # served an earlier exchange: it may have been closed by the peer meanwhile
        self.received = False  # a byte of the current exchange's response arrived
        self.closed = False
        self.pipe: Callable[[bytes], None] | None = None  # after a 101: raw bytes go straight here
        self.counted = False  # in the pool's count of its endpoint's connections (open or opening)
        self.served = 0  # requests it carried, counted by policed exchanges (maxRequestsPerConnection)

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.pool.stats.upstream_cx_total += 1
        self.pool.stats.upstream_cx_active += 1

    def data_received(self, data: bytes) -> None:
        pipe = self.pipe
        if pipe is not None:
            pipe(data)
            return
        if self.exchange is None:
            self.close()  # bytes nobody asked for: framing is lost
            return
        self.received = True
        self.decoder.feed(data)
        exchange = self.exchange  # still bound: the response goes on past this read
        if exchange is not None:
            exchange.flush_response()  # stream what this read produced (a body is never held whole)

    def eof_received(self) -> bool | None:
        if self.pipe is not None and self.exchange is not None:
            return self.exchange_eof()
        return None

    def exchange_eof(self) -> bool:
        on_eof = getattr(self.exchange, "on_upstream_eof", None)
        return bool(on_eof()) if on_eof is not None else False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
        self.pool.stats.upstream_cx_active -= 1
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            if self.pipe is None and self.decoder.eof():
                self.decoder.release()
                return  # the close ended a close-delimited body; on_response_end already ran
            exchange.on_upstream_lost(self)
        self.decoder.release()  # (its parser and sink point back here: freed now, not by the collector)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.on_upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.on_upstream_write_paused(False)

    # -- ResponseSink: straight through to the exchange ---------------------------------------------

    # While bound, the decoder reports to the exchange itself; these run only when no exchange is bound
    # (a response nobody asked for, e.g. a second response in the same read): framing is lost, so close.

    def on_response_head(self, head: ResponseHead) -> None:
        self.close()

    def on_response_body(self, data: bytes) -> None:
        self.close()

    def on_response_end(self) -> None:
        self.close()

    def on_response_upgrade(self, head: ResponseHead, tail: bytes) -> None:
        self.close()

    def on_response_error(self, error: ProtocolError) -> None:
        self.close()

    # -- use ----------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        """Close now (used when framing is lost or an exchange is abandoned): the peer sees a reset of it."""
        self.exchange = None
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def release(self, keep_alive: bool) -> None:
        """The exchange is over: back to the idle pool, or closed when it cannot carry another."""
        self.exchange = None
        decoder = self.decoder
        decoder.sink = self  # stray events now close this connection
        decoder.body_out = None
        decoder.is_head = False
        endpoint = self.endpoint
        if keep_alive and not decoder.dead and not self.closed and not endpoint.removed:
            self.reused = True
            idle = endpoint.idle
            if len(idle) < self.pool.max_idle:
                idle.append(self)
                return
        self.close()


class CapacityWaiter(Protocol):
    """A request waiting for its cluster to have room for a connection (circuit breaking)."""

    def on_capacity(self) -> None: ...


class UpstreamPool:
    """Idle keep-alive connections by endpoint address (newest reused first, so older ones time out).

    It also counts connections per endpoint (open or opening; a count per connection, never per request), so
    a cluster's ``max_connections`` can be held: a request that finds its cluster full waits in ``waiters``
    (by service) until a connection of that service is released or closes."""

    def __init__(self, stats: DataPlaneStats, limits: Http1Limits, max_idle_per_endpoint: int = 64) -> None:
        self.stats = stats
        self.limits = limits
        self.max_idle = max_idle_per_endpoint  # bounds memory: idle connections beyond this are closed
        self.idle: dict[str, list[UpstreamConnection]] = {}  # by address: each endpoint's own idle list
        self._all: set[UpstreamConnection] = set()
        self.open: dict[str, int] = {}  # by address: connections open or being opened
        self.waiters: dict[str, deque[CapacityWaiter]] = {}  # by service: requests waiting for room

    def acquire(self, endpoint: Endpoint) -> UpstreamConnection | None:
        idle: list[UpstreamConnection] = endpoint.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def idle_push(self, conn: UpstreamConnection) -> None:
        idle: list[UpstreamConnection] = conn.endpoint.idle
        if len(idle) >= self.max_idle:
            conn.close()
            return
        idle.append(conn)

    async def connect(self, endpoint: Endpoint, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(self, endpoint)
        host, port = endpoint.address
        key = endpoint.key
        conn.counted = True
        self.open[key] = self.open.get(key, 0) + 1
        try:
            await asyncio.wait_for(loop.create_connection(lambda: conn, host, port), timeout)
        except BaseException:
            self._uncount(conn)
            raise
        self._all.add(conn)
        self.idle[endpoint.key] = endpoint.idle  # the pool's view by address (drop_endpoint, close_all)
        return conn

    def forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        idle = conn.endpoint.idle
        if idle and conn in idle:
            idle.remove(conn)
        self._uncount(conn)

    def _uncount(self, conn: UpstreamConnection, wake: bool = True) -> None:
        if not conn.counted:
            return
        conn.counted = False
        key = conn.endpoint.key
        left = self.open.get(key, 0) - 1
        if left > 0:
            self.open[key] = left
        else:
            self.open.pop(key, None)
        if wake and self.waiters:
            self.wake(conn.endpoint.instance.service)

    # -- cluster capacity (circuit breaking) --------------------------------------------------------

    def open_in(self, endpoints: Iterable[Endpoint]) -> int:
        """Connections open or opening to ``endpoints`` (a cluster's)."""
        get = self.open.get
        return sum(get(e.key, 0) for e in endpoints)

    def close_idle_in(self, endpoints: Iterable[Endpoint]) -> bool:
        """Close one idle connection to any of ``endpoints`` to make room for a new one; False: none idle."""
        for endpoint in endpoints:
            idle: list[UpstreamConnection] = endpoint.idle
            while idle:
                conn = idle.pop(0)  # the oldest: the one most likely to be timed out by its peer soon
                if not conn.closed:
                    self._uncount(conn, wake=False)  # the room goes to the caller, not to a waiter
                    conn.close()
                    return True
        return False

    def wait(self, service: str, waiter: CapacityWaiter) -> None:
        queue = self.waiters.get(service)
        if queue is None:
            queue = self.waiters[service] = deque()
        queue.append(waiter)

    def unwait(self, service: str, waiter: CapacityWaiter) -> None:
        queue = self.waiters.get(service)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self.waiters[service]

    def wake(self, service: str) -> None:
        """A connection of ``service`` was released or closed: the first waiter tries again."""
        queue = self.waiters.get(service)
        if queue is None:
            return
        waiter = queue.popleft()
        if not queue:
            del self.waiters[service]
        waiter.on_capacity()

    def drop_endpoint(self, key: str) -> None:
        """The endpoint left its cluster: close its idle connections (busy ones close when released)."""
        for conn in list(self.idle.pop(key, ())):
            conn.close()

    def close_all(self) -> None:
        self.idle.clear()
        for conn in list(self._all):
            conn.close()

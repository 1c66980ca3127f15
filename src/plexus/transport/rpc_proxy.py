"""Multiplexed SOFA Bolt / Dubbo proxying for a per-service egress port.

Theory of operation: a downstream connection's bytes go through the protocol's sans-IO decoder. A heartbeat
is answered here. Every request picks its own endpoint with the cluster's balancer and rides a shared,
multiplexed upstream connection to it (``RpcUpstreamPool``: one connection per endpoint and protocol, opened
on first use). The request id is rewritten to one unique on that upstream connection; the pending entry
remembers the caller's connection and original id, so the response is patched back and written to it. A
one-way request leaves no pending entry.

Failures are answered in the protocol's own terms (``RpcCodec.error_reply``): no endpoint → NO_UPSTREAM, a
failed connect is retried once on another endpoint and then → UNAVAILABLE, an upstream connection lost →
every request in flight on it → UNAVAILABLE at once, no response within the frame's timeout (Bolt) or the
sidecar's request timeout → TIMEOUT. A late response (its entry gone) is dropped and counted. A malformed
downstream frame closes that downstream connection only, counted in ``plexus_downstream_rejects_total``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, cast

from plexus.codec.bolt import BoltCodec
from plexus.codec.dubbo import DubboCodec
from plexus.codec.rpc import FrameKind, LocalError, RpcCodec, RpcDecoder, RpcFrame, RpcProtocolError
from plexus.core import reasons
from plexus.proxy import Cluster, DataPlaneStats, Endpoint, ServiceStats
from plexus.transport.context import DataPlaneContext

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


class RpcStats:
    """RPC-only counters beside ``DataPlaneStats``; rendered after it by the data plane."""

    __slots__ = ("heartbeats", "oneway", "unknown_responses")

    def __init__(self) -> None:
        self.heartbeats: dict[str, int] = {}  # service → heartbeats answered locally
        self.oneway: dict[str, int] = {}  # service → one-way requests forwarded
        self.unknown_responses: dict[str, int] = {}  # service → responses with no pending entry, dropped

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
        ):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} counter")
            for service, count in sorted(counter.items()):
                escaped = service.replace("\\", "\\\\").replace('"', '\\"')
                out.append(f'{name}{{service="{escaped}"}} {count}')
        return "\n".join(out) + "\n"


class _Pending:
    __slots__ = ("down", "endpoint", "frame", "started", "timer")

    def __init__(self, down: RpcDownstream, frame: RpcFrame, endpoint: Endpoint, started: float) -> None:
        self.down = down
        self.frame = frame
        self.endpoint = endpoint
        self.started = started
        self.timer: asyncio.TimerHandle | None = None


class RpcUpstream(asyncio.Protocol):
    """One multiplexed connection to an endpoint; requests queue while it connects."""

    def __init__(self, pool: RpcUpstreamPool, codec: RpcCodec, service: str, endpoint: Endpoint) -> None:
        self.pool = pool
        self.codec = codec
        self.service = service
        self.endpoint = endpoint
        self.decoder: RpcDecoder = codec.decoder()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, _Pending] = {}
        self.queued: list[tuple[RpcDownstream, RpcFrame, bool]] = []  # (caller, request, already retried)
        self.next_id = 0
        self.closed = False
        self.draining = False  # out of the pool: close once the requests in flight are answered

    # -- sending ------------------------------------------------------------------------------------

    def send(self, down: RpcDownstream, frame: RpcFrame, retried: bool) -> None:
        if self.transport is None:
            self.queued.append((down, frame, retried))
            return
        self._write(down, frame)

    def _write(self, down: RpcDownstream, frame: RpcFrame) -> None:
        transport = self.transport
        assert transport is not None
        endpoint = self.endpoint
        endpoint.total += 1
        uid = self._next_id()
        if frame.kind is FrameKind.ONEWAY:
            transport.write(self.codec.with_request_id(frame, uid))
            self.pool.rpc_stats.bump(self.pool.rpc_stats.oneway, self.service)
            return
        loop = self.pool.ctx.loop
        entry = _Pending(down, frame, endpoint, loop.time())
        timeout_ms = frame.timeout_ms
        timeout = timeout_ms / 1000.0 if timeout_ms else self.pool.ctx.settings.request_timeout
        entry.timer = loop.call_later(timeout, self._timed_out, uid)
        self.pending[uid] = entry
        endpoint.active += 1
        transport.write(self.codec.with_request_id(frame, uid))

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
        entry.down.local_error(entry.frame, LocalError.TIMEOUT, reason, entry.started)

    # -- connection events --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        stats = self.pool.ctx.stats
        stats.upstream_cx_total += 1
        stats.upstream_cx_active += 1
        queued, self.queued = self.queued, []
        for down, frame, _ in queued:
            if down.closed:
                down.inflight -= 1
                continue
            self._write(down, frame)
            if frame.kind is FrameKind.ONEWAY:
                down.inflight -= 1  # written, nothing pending
        if self.draining and not self.pending:
            self.close()

    def connect_failed(self) -> None:
        """Every queued request goes once to another endpoint; a request already retried gets UNAVAILABLE."""
        self.closed = True
        self.endpoint.failures += 1
        self.pool.forget(self)
        queued, self.queued = self.queued, []
        for down, frame, retried in queued:
            down.inflight -= 1
            if down.closed:
                continue
            if retried:
                down.local_error(
                    frame, LocalError.UNAVAILABLE, reasons.UPSTREAM_CONNECT_FAILED, self.pool.ctx.loop.time()
                )
            else:
                self.pool.ctx.stats.upstream_rq_retry += 1
                down.dispatch(frame, exclude=self.endpoint, retried=True)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except RpcProtocolError as exc:
            frames = exc.frames
            log.debug("upstream %s broke %s: %s", self.endpoint.key, self.codec.name, exc)
            self._deliver(frames)
            if self.transport is not None:
                self.transport.abort()  # framing lost: every request in flight fails in connection_lost
            return
        self._deliver(frames)

    def _deliver(self, frames: list[RpcFrame]) -> None:
        codec = self.codec
        for frame in frames:
            kind = frame.kind
            if kind is FrameKind.RESPONSE:
                entry = self._finish(frame.request_id)
                if entry is None:
                    self.pool.rpc_stats.bump(self.pool.rpc_stats.unknown_responses, self.service)
                    continue
                entry.down.respond(entry, codec.with_request_id(frame, entry.frame.request_id), frame.status)
            elif kind is FrameKind.HEARTBEAT and self.transport is not None:
                self.transport.write(codec.heartbeat_reply(frame))
            # heartbeat replies and events from the provider need nothing from us

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        stats = self.pool.ctx.stats
        stats.upstream_cx_active -= 1
        self.pool.forget(self)
        pending, self.pending = self.pending, {}
        now = self.pool.ctx.loop.time()
        for entry in pending.values():
            if entry.timer is not None:
                entry.timer.cancel()
            entry.endpoint.active -= 1
            entry.endpoint.failures += 1
            entry.down.inflight -= 1
            entry.down.local_error(entry.frame, LocalError.UNAVAILABLE, reasons.UPSTREAM_RESET, now)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RpcUpstreamPool:
    """Shared multiplexed connections, one per (protocol, endpoint address)."""

    def __init__(self, ctx: DataPlaneContext, rpc_stats: RpcStats) -> None:
        self.ctx = ctx
        self.rpc_stats = rpc_stats
        self.conns: dict[tuple[str, str], RpcUpstream] = {}
        self.draining: set[RpcUpstream] = set()  # dropped endpoints' connections finishing their requests
        self.downstreams: set[RpcDownstream] = set()

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


class RpcDownstream(asyncio.Protocol):
    """A caller's connection to a per-service egress port whose service speaks Bolt or Dubbo."""

    def __init__(
        self,
        pool: RpcUpstreamPool,
        codec: RpcCodec,
        service: str,
        cluster: Callable[[], Cluster | None],
        stats: ServiceStats,
    ) -> None:
        self.pool = pool
        self.codec = codec
        self.service = service
        self.cluster = cluster
        self.stats = stats
        self.decoder: RpcDecoder = codec.decoder()
        self.transport: asyncio.Transport | None = None
        self.inflight = 0  # requests queued or pending upstream for this caller
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.pool.downstreams.add(self)
        stats: DataPlaneStats = self.pool.ctx.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except RpcProtocolError as exc:
            for frame in exc.frames:  # the whole frames before the bad bytes still count
                self._on_frame(frame)
            self.pool.ctx.stats.downstream_reject(exc.reason)
            log.debug("downstream broke %s on %s: %s", self.codec.name, self.service, exc)
            if self.transport is not None:
                self.transport.close()
            return
        for frame in frames:
            self._on_frame(frame)

    def _on_frame(self, frame: RpcFrame) -> None:
        kind = frame.kind
        if kind is FrameKind.REQUEST or kind is FrameKind.ONEWAY:
            if kind is FrameKind.REQUEST and self.inflight >= MAX_PENDING_PER_DOWNSTREAM:
                self.local_error(
                    frame, LocalError.OVERLOADED, "rpc_too_many_pending", self.pool.ctx.loop.time()
                )
                return
            self.dispatch(frame, exclude=None, retried=False)
        elif kind is FrameKind.HEARTBEAT:
            self.pool.rpc_stats.bump(self.pool.rpc_stats.heartbeats, self.service)
            if self.transport is not None:
                self.transport.write(self.codec.heartbeat_reply(frame))
        # responses, heartbeat replies and events from a caller have nothing to answer

    def dispatch(self, frame: RpcFrame, exclude: Endpoint | None, retried: bool) -> None:
        cluster = self.cluster()
        endpoint = cluster.pick(exclude) if cluster is not None else None
        if endpoint is None or (retried and endpoint is exclude):
            reason = reasons.NO_HEALTHY_UPSTREAM if not retried else reasons.UPSTREAM_CONNECT_FAILED
            error = LocalError.NO_UPSTREAM if not retried else LocalError.UNAVAILABLE
            self.local_error(frame, error, reason, self.pool.ctx.loop.time())
            return
        self.inflight += 1
        conn = self.pool.get(self.codec, self.service, endpoint)
        conn.send(self, frame, retried)
        if frame.kind is FrameKind.ONEWAY and conn.transport is not None:
            self.inflight -= 1  # written at once, nothing pending

    def respond(self, entry: _Pending, data: bytes, status: int | None) -> None:
        ok = status == _OK_STATUS.get(self.codec.name)
        self.stats.record(
            _STATUS_OK if ok else _STATUS_UPSTREAM_ERROR,
            (self.pool.ctx.loop.time() - entry.started) * 1000.0,
        )
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def local_error(self, frame: RpcFrame, error: LocalError, reason: str, started: float) -> None:
        """Answer ``frame`` here, in its protocol's terms; a one-way request is only counted."""
        self.pool.ctx.stats.local_reply(reason, self.service)
        status = _STATUS_TIMEOUT if error is LocalError.TIMEOUT else _STATUS_UNAVAILABLE
        self.stats.record(status, (self.pool.ctx.loop.time() - started) * 1000.0)
        if frame.kind is not FrameKind.REQUEST or self.closed or self.transport is None:
            return
        message = reasons.error_header_value(reason, self.service)
        self.transport.write(self.codec.error_reply(frame, error, message))

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests in flight stay pending upstream; their answers are dropped when they come.
        self.closed = True
        self.pool.downstreams.discard(self)
        self.pool.ctx.stats.downstream_cx_active -= 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

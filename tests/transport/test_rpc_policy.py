"""The request policy on the Bolt and Dubbo path: a real DataPlane with a per-service egress port (and a
dedicated RPC ingress for admission), providers written with the codecs, policy installed with
``DataPlane.set_policy`` from the typed resources.

RPC calls are not idempotent by default: only failures before the frame reached an app are retried
(connect failure, a provider sidecar's refusal); a response status or a try's timeout only when the rule's
retryOn says so. Faults, the breaker, timeouts and admission answer in the protocol's own statuses. Each
provider records the tokens it received (the upstream side of the ledger)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import pytest

from plexus.codec import bolt, dubbo
from plexus.codec.rpc import FrameKind, LocalError, RpcCodec, RpcFrame
from plexus.config.policy_kinds import LocalRateLimit, RateLimitPolicy
from plexus.config.resources import PolicySet
from plexus.config.route_config import (
    ConnectionPool,
    DestinationRule,
    HttpFault,
    HttpRetry,
    HttpRoute,
    OutlierDetection,
    RouteDestination,
    VirtualService,
)
from plexus.core.address import HostPort
from plexus.transport.rpc_proxy import CODECS
from transport.conftest import Mesh
from transport.test_rpc_proxy import read_frames, request, token
from transport.upstreams import LoopThread, closed_port

PROTOCOLS = ("bolt", "dubbo")
OK = {"bolt": bolt.BoltStatus.SUCCESS, "dubbo": dubbo.DubboStatus.OK}
UNAVAILABLE = {"bolt": bolt.BoltStatus.ERROR_COMM, "dubbo": dubbo.DubboStatus.SERVER_ERROR}
TIMEOUT = {"bolt": bolt.BoltStatus.TIMEOUT, "dubbo": dubbo.DubboStatus.SERVER_TIMEOUT}
BUSY = {
    "bolt": bolt.BoltStatus.SERVER_THREADPOOL_BUSY,
    "dubbo": dubbo.DubboStatus.SERVER_THREADPOOL_EXHAUSTED,
}
APP_ERROR = {"bolt": bolt.BoltStatus.SERVER_EXCEPTION, "dubbo": dubbo.DubboStatus.SERVICE_ERROR}


class _Conn(asyncio.Protocol):
    def __init__(self, server: Provider) -> None:
        self.server = server
        self.decoder = server.codec.decoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            self.server.on_frame(self, frame)


class Provider:
    """A Bolt or Dubbo provider answering by ``mode``: ``ok`` (``@name@`` + the request's bytes, so the
    caller's token comes back), ``error`` (the app's own error status), ``refuse`` (what a provider sidecar
    answers when its app is gone: UNAVAILABLE naming local_app_unavailable), ``silent`` (never answers), or
    ``slow:S`` (answers after S seconds). ``received`` counts request ids: the upstream ledger."""

    def __init__(self, protocol: str, name: str, mode: str = "ok") -> None:
        self.protocol = protocol
        self.codec: RpcCodec = CODECS[protocol]
        self.name = name
        self.mode = mode
        self.received: Counter[int] = Counter()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def on_frame(self, conn: _Conn, frame: RpcFrame) -> None:
        assert conn.transport is not None
        if frame.kind is FrameKind.HEARTBEAT:
            conn.transport.write(self.codec.heartbeat_reply(frame))
            return
        if frame.kind is not FrameKind.REQUEST:
            return
        tok = frame.raw[frame.raw.index(b"<tok:") :].split(b">")[0]
        self.received[int(tok[5:])] += 1
        mode = self.mode
        if mode == "silent":
            return
        if mode == "refuse":
            message = "local_app_unavailable; service=echo"
            conn.transport.write(self.codec.error_reply(frame, LocalError.UNAVAILABLE, message))
            return
        if mode == "error":
            reply = _error(self.protocol)(frame, APP_ERROR[self.protocol], "the app threw")
            conn.transport.write(reply)
            return
        fixed = 22 if self.protocol == "bolt" else dubbo.HEADER_LENGTH
        content = b"@" + self.name.encode() + b"@" + frame.raw[fixed:]
        if self.protocol == "bolt":
            reply = bolt.encode_response(frame.request_id, bolt.BoltStatus.SUCCESS, content)
        else:
            reply = dubbo.encode_response(frame.request_id, dubbo.DubboStatus.OK, content)
        delay = float(mode[5:]) if mode.startswith("slow:") else 0.0
        asyncio.get_running_loop().call_later(delay, conn.transport.write, reply)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def _error(protocol: str) -> Any:
    return bolt.error_reply if protocol == "bolt" else dubbo.error_reply


class Rig:
    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.mesh = Mesh(lt, connect_timeout=0.5, request_timeout=5.0)
        self.providers: list[Provider] = []

    def provider(self, protocol: str, name: str, mode: str = "ok") -> Provider:
        p = Provider(protocol, name, mode)
        self.lt.run(p.start())
        self.providers.append(p)
        return p

    def egress(self, protocol: str, addresses: list[str], policy: PolicySet) -> HostPort:
        self.lt.call(self.mesh.plane.set_policy, policy)
        self.mesh.set_instances("echo", addresses, protocol=protocol)
        port: HostPort = self.lt.run(self.mesh.plane.listen_service_egress("echo", "127.0.0.1", 0))
        return port

    def breaker(self) -> dict[str, Any]:
        views: list[dict[str, Any]] = self.lt.call(self.mesh.plane.clusters_view)
        return cast(dict[str, Any], next(v for v in views if v["service"] == "echo")["circuit_breaker"])

    def endpoints(self) -> list[dict[str, Any]]:
        views: list[dict[str, Any]] = self.lt.call(self.mesh.plane.clusters_view)
        return cast(list[dict[str, Any]], next(v for v in views if v["service"] == "echo")["endpoints"])

    def close(self) -> None:
        self.mesh.close()
        for p in self.providers:
            self.lt.run(p.stop())


@pytest.fixture
def rig(lt: LoopThread) -> Iterator[Rig]:
    r = Rig(lt)
    try:
        yield r
    finally:
        r.close()


def rule(
    *, timeout: float | None = None, retries: HttpRetry | None = None, fault: HttpFault | None = None
) -> PolicySet:
    route = HttpRoute(None, (), (RouteDestination("echo"),), timeout=timeout, retries=retries, fault=fault)
    return PolicySet(virtual_services=(VirtualService("echo", "default", ("echo",), (route,)),))


def with_destination(
    policy: PolicySet, *, pool: ConnectionPool | None = None, outlier: OutlierDetection | None = None
) -> PolicySet:
    dr = DestinationRule("echo", "default", "echo", connection_pool=pool, outlier_detection=outlier)
    return PolicySet(virtual_services=policy.virtual_services, destination_rules=(dr,))


def exchange(port: HostPort, protocol: str, ids: list[int], timeout_ms: int | None = None) -> list[RpcFrame]:
    """Send every request on one connection at once; the responses, by request id order."""
    with socket.create_connection(port, timeout=5) as s:
        s.sendall(b"".join(request(protocol, i, timeout_ms=timeout_ms) for i in ids))
        frames = read_frames(s, protocol, len(ids))
    return sorted(frames, key=lambda f: f.request_id)


def check_ledger(frames: list[RpcFrame], ids: list[int], providers: list[Provider], protocol: str) -> None:
    """lost 0 (an answer for every id), misdelivered 0 (each OK answer carries its own token)."""
    assert [f.request_id for f in frames] == sorted(ids)
    misdelivered = sum(1 for f in frames if f.status == OK[protocol] and token(f.request_id) not in f.raw)
    print("ledger:", {"sent": len(ids), "answered": len(frames), "misdelivered": misdelivered})
    assert misdelivered == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_connect_failure_and_refusal_are_retried_elsewhere(rig: Rig, protocol: str) -> None:
    good, refusing = rig.provider(protocol, "good"), rig.provider(protocol, "sidecar", "refuse")
    dead = f"127.0.0.1:{closed_port()}"
    port = rig.egress(protocol, [dead, refusing.address, good.address], rule(timeout=5.0))
    ids = list(range(1, 31))
    frames = exchange(port, protocol, ids)
    check_ledger(frames, ids, [good, refusing], protocol)
    assert all(f.status == OK[protocol] and b"@good@" in f.raw for f in frames)
    assert good.received == Counter(ids)  # duplicated 0: each reached the app once
    assert sum(refusing.received.values()) > 0  # the refused tries were never processed there


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_app_error_is_not_retried_unless_retry_on_says_so(rig: Rig, protocol: str) -> None:
    bad, good = rig.provider(protocol, "bad", "error"), rig.provider(protocol, "good")
    port = rig.egress(protocol, [bad.address, good.address], rule(retries=HttpRetry(2)))
    ids = list(range(1, 11))
    frames = exchange(port, protocol, ids)
    check_ledger(frames, ids, [bad, good], protocol)
    errors = [f for f in frames if f.status == APP_ERROR[protocol]]
    assert len(errors) == sum(bad.received.values()) == 5  # round robin: half failed, none retried
    assert set(bad.received.values()) == {1} and set(good.received.values()) == {1}

    # retryOn given explicitly with the 5xx class: the same errors are retried on the good provider (one
    # call at a time: ten at once would find the retry budget, 20 % of them, spent).
    rig.lt.call(rig.mesh.plane.set_policy, rule(retries=HttpRetry(2, retry_on=("5xx",))))
    ids = list(range(100, 110))
    frames = [exchange(port, protocol, [i])[0] for i in ids]
    check_ledger(frames, ids, [bad, good], protocol)
    assert all(f.status == OK[protocol] and b"@good@" in f.raw for f in frames)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rule_timeout_and_per_try_timeout(rig: Rig, protocol: str) -> None:
    silent, good = rig.provider(protocol, "silent", "silent"), rig.provider(protocol, "good")
    # Per-try timeout, not retried by default (the frame was written: the app may have run it).
    port = rig.egress(
        protocol, [silent.address], rule(timeout=5.0, retries=HttpRetry(2, per_try_timeout=0.2))
    )
    started = time.monotonic()
    (frame,) = exchange(port, protocol, [1])
    assert time.monotonic() - started < 3.0
    assert frame.status == TIMEOUT[protocol] and b"upstream_per_try_timeout" in frame.raw
    assert silent.received == Counter({1: 1})
    # The rule's timeout bounds the request when no per-try timeout is set.
    rig.lt.call(rig.mesh.plane.set_policy, rule(timeout=0.3, retries=HttpRetry(0)))
    (frame,) = exchange(port, protocol, [2])
    assert frame.status == TIMEOUT[protocol] and b"upstream_request_timeout" in frame.raw
    # With retryOn naming resets, a try's timeout moves the call to another provider.
    policy = rule(timeout=5.0, retries=HttpRetry(2, per_try_timeout=0.2, retry_on=("reset",)))
    rig.lt.call(rig.mesh.plane.set_policy, policy)
    rig.mesh.set_instances("echo", [silent.address, good.address], protocol=protocol)
    ids = list(range(10, 14))
    frames = exchange(port, protocol, ids)
    check_ledger(frames, ids, [silent, good], protocol)
    assert all(f.status == OK[protocol] for f in frames)


def test_bolt_timeout_field_bounds_the_rule(rig: Rig) -> None:
    silent = rig.provider("bolt", "silent", "silent")
    port = rig.egress("bolt", [silent.address], rule(timeout=5.0, retries=HttpRetry(0)))
    started = time.monotonic()
    (frame,) = exchange(port, "bolt", [1], timeout_ms=200)  # the caller's 200 ms, not the rule's 5 s
    assert time.monotonic() - started < 3.0
    assert frame.status == TIMEOUT["bolt"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fault_abort_and_delay_in_protocol_terms(rig: Rig, protocol: str) -> None:
    p = rig.provider(protocol, "p")
    port = rig.egress(protocol, [p.address], rule(fault=HttpFault(abort_status=503)))
    (frame,) = exchange(port, protocol, [1])
    assert frame.status == UNAVAILABLE[protocol] and b"fault_injected" in frame.raw
    rig.lt.call(rig.mesh.plane.set_policy, rule(fault=HttpFault(abort_status=429)))
    (frame,) = exchange(port, protocol, [2])
    assert frame.status == BUSY[protocol]
    assert not p.received  # no provider was called
    rig.lt.call(rig.mesh.plane.set_policy, rule(fault=HttpFault(delay=0.3)))
    started = time.monotonic()
    (frame,) = exchange(port, protocol, [3])
    assert time.monotonic() - started >= 0.3  # held for the delay, then served
    assert frame.status == OK[protocol] and p.received == Counter({3: 1})


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_breaker_full_answers_busy_at_once(rig: Rig, protocol: str) -> None:
    slow = rig.provider(protocol, "slow", "slow:0.6")
    port = rig.egress(protocol, [slow.address], with_destination(rule(), pool=ConnectionPool(max_requests=1)))
    frames = exchange(port, protocol, [1, 2])
    assert frames[0].status == OK[protocol]
    assert frames[1].status == BUSY[protocol] and b"upstream_overflow" in frames[1].raw
    assert slow.received == Counter({1: 1})
    view = rig.breaker()
    assert view["overflows"]["requests"] == 1 and view["requests"] == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_provider_is_ejected(rig: Rig, protocol: str) -> None:
    bad = rig.provider(protocol, "bad", "error")
    good = [rig.provider(protocol, f"good{i}") for i in range(3)]
    outlier = OutlierDetection(
        consecutive_errors=3, interval=0.1, base_ejection_time=30.0, max_ejection_percent=50
    )
    policy = with_destination(rule(retries=HttpRetry(0)), outlier=outlier)
    port = rig.egress(protocol, [bad.address, *(g.address for g in good)], policy)
    for i in range(1, 41):  # one at a time: each result is counted before the next pick
        exchange(port, protocol, [i])
    assert sum(bad.received.values()) == 3  # ejected after 3 errors in a row
    assert [e["address"] for e in rig.endpoints() if e["ejected"]] == [bad.address]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ingress_rate_limit_answers_busy(lt: LoopThread, protocol: str) -> None:
    mesh = Mesh(lt, connect_timeout=0.5, request_timeout=5.0)
    app = Provider(protocol, "app")
    lt.run(app.start())
    try:
        port = lt.run(
            mesh.plane.listen_rpc_ingress("echo", protocol, "127.0.0.1", 0, HostPort("127.0.0.1", app.port))
        )
        limited = RateLimitPolicy(
            "echo", "default", "echo", local=(LocalRateLimit("all", tokens=2, fill_per_second=0.01),)
        )
        lt.call(mesh.plane.set_policy, PolicySet(rate_limits=(limited,)))
        frames = exchange(port, protocol, [1, 2, 3])
        assert [f.status for f in frames] == [OK[protocol], OK[protocol], BUSY[protocol]]
        assert b"rate_limited" in frames[2].raw
        assert app.received == Counter({1: 1, 2: 1})
    finally:
        mesh.close()
        lt.run(app.stop())


SOFA_CALLER_APP = "rpc_trace_context.sofaCallerApp"  # what SOFA RPC clients send as the calling app


def test_bolt_per_caller_buckets_key_on_the_callers_own_header(lt: LoopThread) -> None:
    # RPC frames carry no x-plexus-caller (the consumer sidecar does not re-encode them); a per-caller limit
    # on a Bolt service names the caller field SOFA clients send themselves: each caller gets its own bucket.
    mesh = Mesh(lt, connect_timeout=0.5, request_timeout=5.0)
    app = Provider("bolt", "app")
    lt.run(app.start())
    try:
        port = lt.run(
            mesh.plane.listen_rpc_ingress("echo", "bolt", "127.0.0.1", 0, HostPort("127.0.0.1", app.port))
        )
        per_caller = LocalRateLimit(
            "per-app", tokens=2, fill_per_second=0.01, per_caller=True, caller_header=SOFA_CALLER_APP.lower()
        )
        limits = RateLimitPolicy("echo", "default", "echo", local=(per_caller,))
        lt.call(mesh.plane.set_policy, PolicySet(rate_limits=(limits,)))

        def call(caller: str, request_id: int) -> RpcFrame:
            headers = {bolt.HEADER_SERVICE: "com.acme.Echo:1.0", bolt.HEADER_METHOD: "echo",
                       SOFA_CALLER_APP: caller}
            with socket.create_connection(port, timeout=5) as s:
                s.sendall(bolt.encode_request(request_id, headers, token(request_id)))
                (frame,) = read_frames(s, "bolt", 1)
            return frame

        first = [call("orders", i).status for i in (1, 2, 3)]
        other = [call("billing", i).status for i in (4, 5, 6)]
        assert first == [OK["bolt"], OK["bolt"], BUSY["bolt"]]
        assert other == [OK["bolt"], OK["bolt"], BUSY["bolt"]]  # its own bucket, untouched by the first
        assert app.received == Counter({1: 1, 2: 1, 4: 1, 5: 1})
    finally:
        mesh.close()
        lt.run(app.stop())

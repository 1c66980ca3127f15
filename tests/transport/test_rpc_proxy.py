"""Bolt and Dubbo through a per-service egress port: per-request balancing over shared multiplexed upstream
connections, request ids mapped back to their callers, local heartbeats, and failures in protocol terms.

The providers are real servers written with the codecs; each echoes the caller's token (carried in the
request body, which the proxy never reads) so a response delivered to the wrong caller or id is seen.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from plexus.codec import bolt, dubbo, hessian2
from plexus.codec.rpc import FrameKind, RpcCodec, RpcFrame
from plexus.core.address import HostPort
from plexus.transport.rpc_proxy import CODECS
from transport.conftest import Mesh
from transport.upstreams import LoopThread, closed_port

PROTOCOLS = ("bolt", "dubbo")
UNAVAILABLE = {"bolt": bolt.BoltStatus.ERROR_COMM, "dubbo": dubbo.DubboStatus.SERVER_ERROR}
NO_UPSTREAM = {"bolt": bolt.BoltStatus.NO_PROCESSOR, "dubbo": dubbo.DubboStatus.SERVICE_NOT_FOUND}
TIMEOUT = {"bolt": bolt.BoltStatus.TIMEOUT, "dubbo": dubbo.DubboStatus.SERVER_TIMEOUT}
OK = {"bolt": bolt.BoltStatus.SUCCESS, "dubbo": dubbo.DubboStatus.OK}


def token(request_id: int) -> bytes:
    return b"<tok:%d>" % request_id


def request(protocol: str, request_id: int, *, oneway: bool = False, timeout_ms: int | None = None) -> bytes:
    """A request whose body carries ``token(request_id)`` (opaque content for Bolt, an argument for Dubbo)."""
    if protocol == "bolt":
        return bolt.encode_request(
            request_id,
            {bolt.HEADER_SERVICE: "com.acme.Echo:1.0", bolt.HEADER_METHOD: "echo"},
            token(request_id),
            oneway=oneway,
            timeout_ms=timeout_ms or 0,
        )
    tail = hessian2.encode_string("Ljava/lang/String;") + hessian2.encode_string(token(request_id).decode())
    return dubbo.encode_request(request_id, "com.acme.Echo", "echo", tail=tail + b"HZ", two_way=not oneway)


class FakeProvider(asyncio.Protocol):
    """One connection of a ``ProviderServer``."""

    def __init__(self, server: ProviderServer) -> None:
        self.server = server
        self.decoder = server.codec.decoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.conns.add(self)

    def data_received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            self.server.on_frame(self, frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)


class ProviderServer:
    """A Bolt or Dubbo provider: answers each request with ``@name@`` + the request's bytes after its fixed
    header (so the caller's token comes back), after a random delay (out of order) unless ``silent``."""

    def __init__(self, protocol: str, name: str, max_delay: float = 0.0, silent: bool = False) -> None:
        self.protocol = protocol
        self.codec: RpcCodec = CODECS[protocol]
        self.name = name
        self.max_delay = max_delay
        self.silent = silent
        self.rng = random.Random(name)
        self.conns: set[FakeProvider] = set()
        self.requests = 0
        self.oneway = 0
        self.heartbeats = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: FakeProvider(self), "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    def on_frame(self, conn: FakeProvider, frame: RpcFrame) -> None:
        if frame.kind is FrameKind.HEARTBEAT:
            self.heartbeats += 1
            assert conn.transport is not None
            conn.transport.write(self.codec.heartbeat_reply(frame))
            return
        if frame.kind is FrameKind.ONEWAY:
            self.oneway += 1
            return
        if frame.kind is not FrameKind.REQUEST:
            return
        self.requests += 1
        if self.silent:
            return
        fixed = 22 if self.protocol == "bolt" else dubbo.HEADER_LENGTH
        content = b"@" + self.name.encode() + b"@" + frame.raw[fixed:]
        if self.protocol == "bolt":
            reply = bolt.encode_response(frame.request_id, bolt.BoltStatus.SUCCESS, content)
        else:
            reply = dubbo.encode_response(frame.request_id, dubbo.DubboStatus.OK, content)
        delay = self.rng.uniform(0, self.max_delay) if self.max_delay else 0.0
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self._write, conn, reply)

    @staticmethod
    def _write(conn: FakeProvider, reply: bytes) -> None:
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(reply)

    async def kill(self) -> None:
        """Stop listening and reset every connection (a crashed provider)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)


class Peers:
    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.started: list[ProviderServer] = []

    def provider(self, protocol: str, name: str, **kw: Any) -> ProviderServer:
        p = ProviderServer(protocol, name, **kw)
        self.lt.run(p.start())
        self.started.append(p)
        return p


@pytest.fixture
def peers(lt: LoopThread) -> Iterator[Peers]:
    ps = Peers(lt)
    try:
        yield ps
    finally:
        for p in ps.started:
            lt.run(p.kill())


def egress_for(mesh: Mesh, service: str, protocol: str, ports: list[int]) -> HostPort:
    mesh.set_instances(service, [f"127.0.0.1:{p}" for p in ports], protocol=protocol)
    return mesh.lt.run(mesh.plane.listen_service_egress(service, "127.0.0.1", 0))


def read_frames(sock: socket.socket, protocol: str, count: int, timeout: float = 10.0) -> list[RpcFrame]:
    decoder = CODECS[protocol].decoder()
    frames: list[RpcFrame] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(frames)} of {count} frames within {timeout}s"
        sock.settimeout(left)
        data = sock.recv(65536)
        assert data, f"connection closed after {len(frames)} of {count} frames"
        frames += decoder.feed(data)
    return frames


def pending_upstream(mesh: Mesh) -> int:
    return cast(int, mesh.lt.call(lambda: sum(len(c.pending) for c in mesh.plane.rpc_pool.conns.values())))


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_thousand_in_flight_out_of_order_balanced(mesh: Mesh, peers: Peers, protocol: str) -> None:
    providers = [peers.provider(protocol, f"p{i}", max_delay=0.05) for i in range(2)]
    mesh.lt.call(mesh.plane.configure_service, "echo", "round_robin")
    egress = egress_for(mesh, "echo", protocol, [p.port for p in providers])
    count = 1000
    ids = [7_000_000 + i * 3 for i in range(count)]  # caller ids unlike the proxy's own
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(b"".join(request(protocol, i) for i in ids))
        frames = read_frames(s, protocol, count)
    misdelivered = 0
    order = []
    by_provider: dict[bytes, int] = {}
    for frame in frames:
        assert frame.kind is FrameKind.RESPONSE and frame.status == OK[protocol]
        order.append(frame.request_id)
        if token(frame.request_id) not in frame.raw:
            misdelivered += 1
        found = re.search(rb"@(p\d)@", frame.raw)
        assert found is not None
        name = found.group(1)
        by_provider[name] = by_provider.get(name, 0) + 1
    assert misdelivered == 0
    assert sorted(order) == ids  # lost 0, duplicated 0
    assert order != ids  # the providers' random delays did reorder them
    assert by_provider == {
        b"p0": count // 2,
        b"p1": count // 2,
    }  # round robin per request, not per connection
    assert [p.requests for p in providers] == [count // 2, count // 2]
    assert len(providers[0].conns) == 1 and len(providers[1].conns) == 1  # multiplexed on one connection each
    assert pending_upstream(mesh) == 0
    text = mesh.lt.call(mesh.plane.metrics_text)
    assert f'plexus_requests_total{{service="echo",direction="egress",code_class="2xx"}} {count}' in text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_heartbeat_answered_without_reaching_a_provider(mesh: Mesh, peers: Peers, protocol: str) -> None:
    provider = peers.provider(protocol, "p0")
    egress = egress_for(mesh, "echo", protocol, [provider.port])
    beat = bolt.encode_heartbeat(42) if protocol == "bolt" else dubbo.encode_heartbeat(42)
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(beat + request(protocol, 43))
        frames = read_frames(s, protocol, 2)
    by_id = {f.request_id: f for f in frames}
    assert by_id[42].kind is FrameKind.HEARTBEAT_REPLY
    assert by_id[43].kind is FrameKind.RESPONSE and token(43) in by_id[43].raw
    assert provider.heartbeats == 0 and provider.requests == 1
    assert 'plexus_rpc_heartbeats_total{service="echo"} 1' in mesh.lt.call(mesh.plane.metrics_text)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_oneway_leaves_no_pending_entry(mesh: Mesh, peers: Peers, protocol: str) -> None:
    provider = peers.provider(protocol, "p0", silent=True)
    egress = egress_for(mesh, "echo", protocol, [provider.port])
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(b"".join(request(protocol, i, oneway=True) for i in range(1, 21)))
        wait_for(lambda: provider.oneway == 20)
        assert pending_upstream(mesh) == 0
        s.sendall(request(protocol, 99))  # a two-way one does leave an entry (the provider is silent)
        wait_for(lambda: provider.requests == 1)
        assert pending_upstream(mesh) == 1
    assert 'plexus_rpc_oneway_total{service="echo"} 20' in mesh.lt.call(mesh.plane.metrics_text)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_provider_killed_with_fifty_in_flight(mesh: Mesh, peers: Peers, protocol: str) -> None:
    provider = peers.provider(protocol, "p0", silent=True)
    egress = egress_for(mesh, "echo", protocol, [provider.port])
    ids = list(range(500, 550))
    with socket.create_connection(egress, timeout=5) as s:
        # Bolt callers ask for 30 s: the error must come from the reset, not from a timeout.
        s.sendall(b"".join(request(protocol, i, timeout_ms=30_000) for i in ids))
        wait_for(lambda: provider.requests == 50)
        started = time.monotonic()
        mesh.lt.run(provider.kill())
        frames = read_frames(s, protocol, 50, timeout=3.0)
        assert time.monotonic() - started < 3.0
    assert sorted(f.request_id for f in frames) == ids
    assert {f.status for f in frames} == {UNAVAILABLE[protocol]}
    assert pending_upstream(mesh) == 0
    text = mesh.lt.call(mesh.plane.metrics_text)
    assert 'plexus_local_replies_total{reason="upstream_reset",service="echo"} 50' in text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_endpoints_answers_no_upstream(mesh: Mesh, peers: Peers, protocol: str) -> None:
    provider = peers.provider(protocol, "p0")
    egress = egress_for(mesh, "echo", protocol, [provider.port])
    mesh.lt.call(mesh.plane.update_service, "echo", [])  # every endpoint withdrawn
    # A service never heard of: the port sniffs the protocol from the first bytes.
    other = mesh.lt.run(mesh.plane.listen_service_egress("ghost", "127.0.0.1", 0))
    for address in (egress, other):
        with socket.create_connection(address, timeout=5) as s:
            s.sendall(request(protocol, 5) + request(protocol, 6, oneway=True) + request(protocol, 7))
            frames = read_frames(s, protocol, 2)
        assert [f.request_id for f in frames] == [5, 7]  # the one-way call gets no answer
        assert {f.status for f in frames} == {NO_UPSTREAM[protocol]}
        assert b"no_healthy_upstream" in frames[0].raw
    assert provider.requests == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_malformed_frame_closes_only_that_connection(mesh: Mesh, peers: Peers, protocol: str) -> None:
    provider = peers.provider(protocol, "p0", max_delay=0.2)
    egress = egress_for(mesh, "echo", protocol, [provider.port])
    bad = request(protocol, 2)
    bad = bad[:9] + b"\x02" + bad[10:] if protocol == "bolt" else bad[:2] + b"\xc3" + bad[3:]  # java codec
    with (
        socket.create_connection(egress, timeout=5) as good_conn,
        socket.create_connection(egress, timeout=5) as bad_conn,
    ):
        good_conn.sendall(request(protocol, 1))  # in flight on the shared upstream while the other one fails
        bad_conn.sendall(request(protocol, 1) + bad)
        bad_conn.settimeout(3)
        with _closed():
            assert bad_conn.recv(1024) == b""  # closed at once: framing is lost
        (first,) = read_frames(good_conn, protocol, 1)
        assert first.request_id == 1 and token(1) in first.raw
        good_conn.sendall(request(protocol, 3))
        assert token(3) in read_frames(good_conn, protocol, 1)[0].raw
    reason = "bolt_codec_not_allowed" if protocol == "bolt" else "dubbo_serialization_not_allowed"
    text = mesh.lt.call(mesh.plane.metrics_text)
    assert f'plexus_downstream_rejects_total{{reason="{reason}"}} 1' in text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_local_replies_keep_order_and_precede_a_rejection_close(mesh: Mesh, protocol: str) -> None:
    # Replies to one read are written together after it: they must keep the frames' order, and the replies
    # to the whole frames before a malformed one must go out before the connection closes.
    ghost = mesh.lt.run(mesh.plane.listen_service_egress("ghost", "127.0.0.1", 0))
    beat = bolt.encode_heartbeat if protocol == "bolt" else dubbo.encode_heartbeat
    bad = request(protocol, 9)
    bad = bad[:9] + b"\x02" + bad[10:] if protocol == "bolt" else bad[:2] + b"\xc3" + bad[3:]  # java codec
    with socket.create_connection(ghost, timeout=5) as s:
        s.sendall(beat(1) + request(protocol, 2) + beat(3) + request(protocol, 4) + bad)
        frames = read_frames(s, protocol, 4)
        assert [(f.request_id, f.kind) for f in frames] == [
            (1, FrameKind.HEARTBEAT_REPLY),
            (2, FrameKind.RESPONSE),
            (3, FrameKind.HEARTBEAT_REPLY),
            (4, FrameKind.RESPONSE),
        ]
        assert {frames[1].status, frames[3].status} == {NO_UPSTREAM[protocol]}
        s.settimeout(3)
        with _closed():
            assert s.recv(1024) == b""
    reason = "bolt_codec_not_allowed" if protocol == "bolt" else "dubbo_serialization_not_allowed"
    assert f'plexus_downstream_rejects_total{{reason="{reason}"}} 1' in mesh.lt.call(mesh.plane.metrics_text)


class _closed:
    """The peer closed: recv returns b"" (clean close) or raises a reset, both fine."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, ConnectionResetError)


def test_bolt_frame_timeout_then_late_response_dropped(lt: LoopThread, peers: Peers) -> None:
    mesh = Mesh(lt, connect_timeout=0.5, request_timeout=5.0)
    try:
        provider = peers.provider("bolt", "p0", max_delay=0.0)
        provider.silent = True
        egress = egress_for(mesh, "echo", "bolt", [provider.port])
        with socket.create_connection(egress, timeout=5) as s:
            started = time.monotonic()
            s.sendall(request("bolt", 11, timeout_ms=200))
            (frame,) = read_frames(s, "bolt", 1, timeout=3.0)
            assert frame.status == TIMEOUT["bolt"] and frame.request_id == 11
            assert time.monotonic() - started < 3.0
            # The provider answers now, too late: the response finds no entry and is dropped, counted.
            conn = next(iter(provider.conns))
            assert conn.transport is not None
            lt.call(conn.transport.write, bolt.encode_response(1, 0, b"late"))
            text = ""
            deadline = time.monotonic() + 3
            while 'plexus_rpc_unknown_responses_total{service="echo"} 1' not in text:
                assert time.monotonic() < deadline
                time.sleep(0.02)
                text = mesh.lt.call(mesh.plane.metrics_text)
            s.sendall(bolt.encode_heartbeat(12))
            (beat,) = read_frames(s, "bolt", 1)  # nothing else (the late answer) was written to the caller
            assert beat.request_id == 12 and beat.kind is FrameKind.HEARTBEAT_REPLY
    finally:
        mesh.close()


def test_dubbo_uses_the_sidecar_request_timeout(lt: LoopThread, peers: Peers) -> None:
    mesh = Mesh(lt, connect_timeout=0.5, request_timeout=0.3)
    try:
        provider = peers.provider("dubbo", "p0", silent=True)
        egress = egress_for(mesh, "echo", "dubbo", [provider.port])
        with socket.create_connection(egress, timeout=5) as s:
            s.sendall(request("dubbo", 2**40))  # a 64-bit caller id survives the round trip
            (frame,) = read_frames(s, "dubbo", 1, timeout=3.0)
        assert frame.request_id == 2**40 and frame.status == TIMEOUT["dubbo"]
    finally:
        mesh.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_connect_failure_retried_once_then_unavailable(mesh: Mesh, peers: Peers, protocol: str) -> None:
    provider = peers.provider(protocol, "p0")
    mesh.lt.call(mesh.plane.configure_service, "echo", "round_robin")
    egress = egress_for(mesh, "echo", protocol, [closed_port(), provider.port])
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(b"".join(request(protocol, i) for i in range(1, 9)))
        frames = read_frames(s, protocol, 8)
    assert sorted(f.request_id for f in frames) == list(range(1, 9))
    assert all(f.status == OK[protocol] and token(f.request_id) in f.raw for f in frames)
    # Only dead endpoints: one retry, then UNAVAILABLE.
    mesh.set_instances(
        "echo", [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"], protocol=protocol
    )
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(request(protocol, 77))
        (frame,) = read_frames(s, protocol, 1)
    assert frame.request_id == 77 and frame.status == UNAVAILABLE[protocol]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_frames_split_anywhere_and_coalesced(mesh: Mesh, peers: Peers, protocol: str) -> None:
    provider = peers.provider(protocol, "p0", max_delay=0.01)
    egress = egress_for(mesh, "echo", protocol, [provider.port])
    beat = bolt.encode_heartbeat(1) if protocol == "bolt" else dubbo.encode_heartbeat(1)
    stream = beat + b"".join(request(protocol, i) for i in range(2, 32))
    with socket.create_connection(egress, timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rng = random.Random(7)
        at = 0
        while at < len(stream):
            step = rng.randint(1, 9)
            s.sendall(stream[at : at + step])
            at += step
            time.sleep(0.0005)
        frames = read_frames(s, protocol, 31)
    assert sorted(f.request_id for f in frames) == list(range(1, 32))
    assert all(f.kind is FrameKind.HEARTBEAT_REPLY or token(f.request_id) in f.raw for f in frames)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_withdrawn_endpoint_finishes_requests_in_flight(mesh: Mesh, peers: Peers, protocol: str) -> None:
    provider = peers.provider(protocol, "p0", max_delay=0.3)
    egress = egress_for(mesh, "echo", protocol, [provider.port])
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(b"".join(request(protocol, i) for i in range(1, 21)))
        wait_for(lambda: provider.requests == 20)
        mesh.lt.call(mesh.plane.update_service, "echo", [])  # the registry withdraws it mid-flight
        frames = read_frames(s, protocol, 20)
        assert all(f.status == OK[protocol] and token(f.request_id) in f.raw for f in frames)
        wait_for(lambda: not provider.conns)  # the drained upstream connection is closed
        s.sendall(request(protocol, 50))
        (frame,) = read_frames(s, protocol, 1)
        assert frame.request_id == 50 and frame.status == NO_UPSTREAM[protocol]

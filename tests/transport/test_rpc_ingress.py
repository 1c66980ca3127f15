"""Bolt and Dubbo on the provider side (TESTING.md §C through the data plane): a dedicated ingress port
decodes frames, answers heartbeats itself and multiplexes every caller's requests to the local app over one
id-rewriting connection; the shared listeners route a frame by the service it names.

The app is ``ProviderServer`` (test_rpc_proxy): it echoes the caller's token after a random delay, so answers
come out of order and a response delivered to the wrong caller or id is seen.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import Callable

import pytest

from plexus.codec import bolt, dubbo, hessian2
from plexus.codec.rpc import FrameKind
from plexus.core.address import HostPort
from plexus.transport.routes import Route
from transport.conftest import Mesh
from transport.test_rpc_proxy import (
    NO_UPSTREAM,
    OK,
    PROTOCOLS,
    UNAVAILABLE,
    Peers,
    _closed,
    peers,
    read_frames,
    request,
    token,
    wait_for,
)
from transport.upstreams import closed_port

__all__ = ["peers"]  # the fixture, re-exported for pytest


def ingress_for(mesh: Mesh, protocol: str, app_port: int, service: str = "echo") -> HostPort:
    app = HostPort("127.0.0.1", app_port)
    return mesh.lt.run(mesh.plane.listen_rpc_ingress(service, protocol, "127.0.0.1", 0, app))


def metrics(mesh: Mesh) -> str:
    return str(mesh.lt.call(mesh.plane.metrics_text))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_two_callers_thousand_in_flight_share_one_app_connection(
    mesh: Mesh, peers: Peers, protocol: str
) -> None:
    app = peers.provider(protocol, "app", max_delay=0.05)
    ingress = ingress_for(mesh, protocol, app.port)
    per_caller = 500
    # Two peer sidecars whose id spaces overlap: the ingress must keep them apart.
    ids = [1000 + i for i in range(per_caller)]
    with (
        socket.create_connection(ingress, timeout=5) as a,
        socket.create_connection(ingress, timeout=5) as b,
    ):
        a.sendall(b"".join(request(protocol, i) for i in ids))
        b.sendall(b"".join(request(protocol, i) for i in ids))
        frames = {"a": read_frames(a, protocol, per_caller), "b": read_frames(b, protocol, per_caller)}
    misdelivered = sum(1 for fs in frames.values() for f in fs if token(f.request_id) not in f.raw)
    for fs in frames.values():
        assert sorted(f.request_id for f in fs) == ids  # lost 0, duplicated 0
        assert all(f.kind is FrameKind.RESPONSE and f.status == OK[protocol] for f in fs)
    assert misdelivered == 0
    assert [f.request_id for f in frames["a"]] != ids  # the app's delays reordered them
    assert app.requests == 2 * per_caller
    assert len(app.conns) == 1  # both callers multiplexed over one connection to the app
    text = metrics(mesh)
    assert (
        f'plexus_requests_total{{service="echo",direction="ingress",code_class="2xx"}} {2 * per_caller}'
        in text
    )
    print(f"ledger: sent={2 * per_caller} lost=0 misdelivered={misdelivered} duplicated=0")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_heartbeats_answered_by_the_sidecar_oneway_leaves_nothing(
    mesh: Mesh, peers: Peers, protocol: str
) -> None:
    app = peers.provider(protocol, "app")
    ingress = ingress_for(mesh, protocol, app.port)
    beat = bolt.encode_heartbeat(9) if protocol == "bolt" else dubbo.encode_heartbeat(9)
    with socket.create_connection(ingress, timeout=5) as s:
        s.sendall(beat + request(protocol, 10, oneway=True) + request(protocol, 11))
        frames = read_frames(s, protocol, 2)
    assert {f.request_id: f.kind for f in frames} == {9: FrameKind.HEARTBEAT_REPLY, 11: FrameKind.RESPONSE}
    wait_for(lambda: app.oneway == 1)
    assert app.heartbeats == 0 and app.requests == 1
    pending = mesh.lt.call(lambda: sum(len(c.pending) for c in mesh.plane.rpc_pool.conns.values()))
    assert pending == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_app_down_answers_unavailable_at_once(mesh: Mesh, protocol: str) -> None:
    ingress = ingress_for(mesh, protocol, closed_port())
    with socket.create_connection(ingress, timeout=5) as s:
        started = time.monotonic()
        s.sendall(b"".join(request(protocol, i, timeout_ms=30_000) for i in (1, 2, 3)))
        frames = read_frames(s, protocol, 3, timeout=3.0)
        assert time.monotonic() - started < 2.0  # at once: not after a request timeout
    assert sorted(f.request_id for f in frames) == [1, 2, 3]
    assert {f.status for f in frames} == {UNAVAILABLE[protocol]}
    assert b"local_app_unavailable" in frames[0].raw
    assert 'plexus_local_replies_total{reason="local_app_unavailable",service="echo"} 3' in metrics(mesh)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_app_killed_with_fifty_in_flight(mesh: Mesh, peers: Peers, protocol: str) -> None:
    app = peers.provider(protocol, "app", silent=True)
    ingress = ingress_for(mesh, protocol, app.port)
    ids = list(range(100, 150))
    with socket.create_connection(ingress, timeout=5) as s:
        s.sendall(b"".join(request(protocol, i, timeout_ms=30_000) for i in ids))
        wait_for(lambda: app.requests == 50)
        started = time.monotonic()
        mesh.lt.run(app.kill())
        frames = read_frames(s, protocol, 50, timeout=3.0)
        assert time.monotonic() - started < 3.0  # well within the callers' 30 s
    assert sorted(f.request_id for f in frames) == ids
    assert {f.status for f in frames} == {UNAVAILABLE[protocol]}
    assert 'plexus_local_replies_total{reason="upstream_reset",service="echo"} 50' in metrics(mesh)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_frames_split_at_every_offset_and_coalesced(mesh: Mesh, peers: Peers, protocol: str) -> None:
    app = peers.provider(protocol, "app", max_delay=0.005)
    ingress = ingress_for(mesh, protocol, app.port)
    beat = bolt.encode_heartbeat(1) if protocol == "bolt" else dubbo.encode_heartbeat(1)
    sample = request(protocol, 2)
    expected: list[int] = []
    with socket.create_connection(ingress, timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Every offset of a request (and of a heartbeat before it) arrives as two writes.
        for at in range(1, len(sample)):
            rid = 1000 + at
            data = beat + request(protocol, rid) if at < len(beat) else request(protocol, rid)
            s.sendall(data[:at])
            time.sleep(0.001)
            s.sendall(data[at:])
            expected.append(rid)
        # And many frames coalesced in one write.
        burst = list(range(5000, 5100))
        s.sendall(b"".join(request(protocol, i) for i in burst))
        count = len(expected) + len(burst) + len(beat) - 1
        frames = read_frames(s, protocol, count, timeout=20)
    responses = sorted(f.request_id for f in frames if f.kind is FrameKind.RESPONSE)
    assert responses == sorted(expected + burst)
    assert all(token(f.request_id) in f.raw for f in frames if f.kind is FrameKind.RESPONSE)
    assert sum(f.kind is FrameKind.HEARTBEAT_REPLY for f in frames) == len(beat) - 1


# --- hostile frames: rejected fast, with a reason counter, closing only that connection --------------------


def _bolt_header_only(content_len: int) -> bytes:
    """A Bolt v1 request fixed header that declares ``content_len`` bytes of content, and nothing after it."""
    return struct.pack(">BBHBIBiHHI", 1, 1, 1, 1, 77, 1, 0, 0, 0, content_len)


def _dubbo_with_body(body: bytes, body_len: int | None = None) -> bytes:
    length = len(body) if body_len is None else body_len
    return struct.pack(">HBBQi", dubbo.MAGIC, 0xC2, 0, 77, length) + body


def _hessian_chain(chunks: int) -> bytes:
    return b"".join(b"R\x00\x01a" for _ in range(chunks)) + b"S\x00\x01a"


HOSTILE: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "bolt-oversized-length": ("bolt", lambda: _bolt_header_only(1 << 30), "rpc_frame_too_large"),
    "bolt-unknown-codec": (
        "bolt",
        lambda: request("bolt", 5)[:9] + b"\x07" + request("bolt", 5)[10:],
        "bolt_codec_not_allowed",
    ),
    "bolt-unknown-proto": ("bolt", lambda: b"\x09" + request("bolt", 5)[1:], "bolt_unknown_protocol"),
    "dubbo-oversized-length": ("dubbo", lambda: _dubbo_with_body(b"", 1 << 30), "rpc_frame_too_large"),
    "dubbo-unknown-serialization": (
        "dubbo",
        lambda: request("dubbo", 5)[:2] + b"\xc3" + request("dubbo", 5)[3:],  # 3: Java native
        "dubbo_serialization_not_allowed",
    ),
    "dubbo-deep-string": (
        "dubbo",
        lambda: _dubbo_with_body(hessian2.encode_string("2.0.2") + _hessian_chain(50) + b"HZ"),
        "hessian_too_deep",
    ),
    "dubbo-huge-string": (
        "dubbo",
        lambda: _dubbo_with_body(hessian2.encode_string("2.0.2") + b"S\xff\xff" + b"a" * 65535 + b"N\x01mHZ"),
        "hessian_string_too_long",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_frame_rejected_fast_only_that_connection(mesh: Mesh, peers: Peers, case: str) -> None:
    protocol, make, reason = HOSTILE[case]
    app = peers.provider(protocol, "app", max_delay=0.2)
    ingress = ingress_for(mesh, protocol, app.port)
    with (
        socket.create_connection(ingress, timeout=5) as good,
        socket.create_connection(ingress, timeout=5) as bad,
    ):
        good.sendall(request(protocol, 1))  # in flight to the app while the other connection fails
        wait_for(lambda: app.requests == 1)
        started = time.monotonic()
        bad.sendall(make())
        bad.settimeout(3)
        with _closed():
            assert bad.recv(1024) == b""  # closed at once, without waiting for a declared body
        assert time.monotonic() - started < 1.0
        (frame,) = read_frames(good, protocol, 1)
        assert frame.request_id == 1 and token(1) in frame.raw
        good.sendall(request(protocol, 2))
        assert token(2) in read_frames(good, protocol, 1)[0].raw
    assert app.requests == 2  # nothing of the hostile frame reached the app
    assert f'plexus_downstream_rejects_total{{reason="{reason}"}} 1' in metrics(mesh)


# --- shared listeners: a frame goes to the service it names ----------------------------------------------


def _serve_factory(mesh: Mesh, direction: str, protocol: str) -> HostPort:
    make = mesh.plane.rpc_factory(direction)
    assert make is not None

    async def serve() -> HostPort:
        server = await asyncio.get_running_loop().create_server(lambda: make(protocol), "127.0.0.1", 0)
        mesh.plane._servers[f"test:{direction}:{protocol}"] = server  # closed with the data plane
        return HostPort("127.0.0.1", int(server.sockets[0].getsockname()[1]))

    return mesh.lt.run(serve())


def bolt_to(service: str, request_id: int, method: str = "echo") -> bytes:
    headers = {bolt.HEADER_TARGET_SERVICE: service, bolt.HEADER_SERVICE: service, bolt.HEADER_METHOD: method}
    return bolt.encode_request(request_id, headers, token(request_id))


def test_shared_ingress_routes_bolt_by_target_service(mesh: Mesh, peers: Peers) -> None:
    one = peers.provider("bolt", "one")
    two = peers.provider("bolt", "two")
    ingress_for(mesh, "bolt", one.port, service="com.acme.One:1.0")
    ingress_for(mesh, "bolt", two.port, service="com.acme.Two:1.0")
    shared = _serve_factory(mesh, "ingress", "bolt")
    with socket.create_connection(shared, timeout=5) as s:
        s.sendall(
            bolt_to("com.acme.One:1.0", 1) + bolt_to("com.acme.Two:1.0", 2) + bolt_to("com.acme.No:1", 3)
        )
        frames = {f.request_id: f for f in read_frames(s, "bolt", 3)}
    assert b"@one@" in frames[1].raw and b"@two@" in frames[2].raw
    assert frames[3].status == NO_UPSTREAM["bolt"] and b"unknown_service" in frames[3].raw
    assert b"com.acme.No:1" in frames[3].raw


def test_shared_egress_routes_by_name_dubbo_version_first(mesh: Mesh, peers: Peers) -> None:
    plain = peers.provider("dubbo", "plain")
    versioned = peers.provider("dubbo", "versioned")
    mesh.set_instances("com.acme.Echo", [f"127.0.0.1:{plain.port}"], protocol="dubbo")
    mesh.set_instances("com.acme.Echo:2.0", [f"127.0.0.1:{versioned.port}"], protocol="dubbo")
    mesh.set_instances("web", ["127.0.0.1:1"], protocol="http")
    shared = _serve_factory(mesh, "egress", "dubbo")
    tail = hessian2.encode_string("") + b"HZ"
    calls = [
        dubbo.encode_request(1, "com.acme.Echo", "echo", version="2.0", tail=tail),  # the versioned service
        dubbo.encode_request(2, "com.acme.Echo", "echo", version="1.0", tail=tail),  # none: the interface
        dubbo.encode_request(3, "com.acme.Echo", "echo", version="", tail=tail),
        dubbo.encode_request(4, "web", "get", tail=tail),  # an HTTP service is not an RPC route
    ]
    with socket.create_connection(shared, timeout=5) as s:
        s.sendall(b"".join(calls))
        frames = {f.request_id: f for f in read_frames(s, "dubbo", 4)}
    assert b"@versioned@" in frames[1].raw
    assert b"@plain@" in frames[2].raw and b"@plain@" in frames[3].raw
    assert frames[4].status == NO_UPSTREAM["dubbo"] and b"unknown_service" in frames[4].raw


def test_bolt_rpc_egress_listener_routes_by_target_service(mesh: Mesh, peers: Peers) -> None:
    p = peers.provider("bolt", "p")
    mesh.set_instances("com.acme.Echo:1.0", [f"127.0.0.1:{p.port}"], protocol="bolt")
    egress = mesh.lt.run(mesh.plane.listen_rpc_egress("bolt", "127.0.0.1", 0))
    ids = list(range(1, 201))
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(b"".join(bolt_to("com.acme.Echo:1.0", i) for i in ids))
        frames = read_frames(s, "bolt", len(ids))
    assert sorted(f.request_id for f in frames) == ids
    assert all(f.status == OK["bolt"] and token(f.request_id) in f.raw for f in frames)
    assert len(p.conns) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_endpoint_chosen_through_the_route(
    mesh: Mesh, peers: Peers, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request asks ``Route.pick_stream`` with the frame's stream headers; a reason code it answers
    becomes a NO_UPSTREAM reply carrying that reason."""
    p = peers.provider(protocol, "p")
    mesh.set_instances("echo", [f"127.0.0.1:{p.port}"], protocol=protocol)
    egress = mesh.lt.run(mesh.plane.listen_service_egress("echo", "127.0.0.1", 0))
    seen: list[tuple[str | None, str | None]] = []
    original = Route.pick_stream

    def pick_stream(self: Route, lookup: Callable[[str], str | None], exclude: object) -> object:
        seen.append((lookup(":service"), lookup(":rpc-method")))
        if lookup(":rpc-method") == "blocked":
            return "route_not_matched"
        return original(self, lookup, exclude)  # type: ignore[arg-type]

    monkeypatch.setattr(Route, "pick_stream", pick_stream)
    if protocol == "bolt":
        blocked = bolt.encode_request(
            2, {bolt.HEADER_SERVICE: "com.acme.Echo:1.0", bolt.HEADER_METHOD: "blocked"}
        )
    else:
        blocked = dubbo.encode_request(2, "com.acme.Echo", "blocked")
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(request(protocol, 1) + blocked)
        frames = {f.request_id: f for f in read_frames(s, protocol, 2)}
    assert frames[1].status == OK[protocol]
    assert frames[2].status == NO_UPSTREAM[protocol] and b"route_not_matched" in frames[2].raw
    assert seen == [("com.acme.Echo", "echo"), ("com.acme.Echo", "blocked")]


def test_anthunder_style_no_deadline_uses_the_sidecar_timeout(mesh: Mesh, peers: Peers) -> None:
    """anthunder writes timeout -1 for "none": the request must not time out at once."""
    p = peers.provider("bolt", "p", max_delay=0.1)
    ingress = ingress_for(mesh, "bolt", p.port)
    with socket.create_connection(ingress, timeout=5) as s:
        s.sendall(request("bolt", 1, timeout_ms=-1))
        (frame,) = read_frames(s, "bolt", 1)
    assert frame.status == OK["bolt"]


def test_random_service_names_never_misroute(mesh: Mesh, peers: Peers) -> None:
    """Many services over the shared egress, requests interleaved: each reaches its own provider."""
    providers = {f"svc.S{i}:1.0": peers.provider("bolt", f"s{i}", max_delay=0.01) for i in range(5)}
    for name, prov in providers.items():
        mesh.set_instances(name, [f"127.0.0.1:{prov.port}"], protocol="bolt")
    egress = mesh.lt.run(mesh.plane.listen_rpc_egress("bolt", "127.0.0.1", 0))
    rng = random.Random(3)
    plan = {i: rng.choice(sorted(providers)) for i in range(1, 301)}
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(b"".join(bolt_to(name, i) for i, name in plan.items()))
        frames = read_frames(s, "bolt", len(plan))
    for f in frames:
        expected = providers[plan[f.request_id]].name.encode()
        assert b"@" + expected + b"@" in f.raw and token(f.request_id) in f.raw


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sniffed_shared_listeners_route_rpc_by_name(mesh: Mesh, peers: Peers, protocol: str) -> None:
    """The shared ingress and egress (sniffing HTTP/1, h2c, Bolt, Dubbo) hand Bolt/Dubbo connections to the
    RPC proxy: ingress to the local service a frame names, egress to the cluster it names."""
    app = peers.provider(protocol, "local")
    remote = peers.provider(protocol, "remote")
    ingress_for(mesh, protocol, app.port, service="com.acme.Echo")
    mesh.set_instances("com.acme.Echo", [f"127.0.0.1:{remote.port}"], protocol=protocol)
    ids = list(range(1, 51))
    for address, name in ((mesh.ingress, b"@local@"), (mesh.egress, b"@remote@")):
        with socket.create_connection(address, timeout=5) as s:
            s.sendall(b"".join(request(protocol, i) for i in ids))
            frames = read_frames(s, protocol, len(ids))
        assert sorted(f.request_id for f in frames) == ids
        assert all(
            f.status == OK[protocol] and name in f.raw and token(f.request_id) in f.raw for f in frames
        )

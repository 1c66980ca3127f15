"""What the Bolt and Dubbo paths report: one RequestEntry per request/response pair on each hop (app →
per-service egress → RPC ingress → provider, in one data plane), none for heartbeats."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest

from plexus.codec import bolt, dubbo, hessian2
from plexus.core.address import HostPort
from plexus.discovery.model import Instance
from plexus.proxy.telemetry import RequestEntry
from transport.conftest import Mesh
from transport.test_rpc_proxy import OK, UNAVAILABLE, ProviderServer, read_frames
from transport.upstreams import LoopThread

WORKLOAD = "echo-v1"  # the provider instance's workload, as published
SOFA_TRACE_ID = "rpc_trace_context.sofaTraceId"
SOFA_CALLER_APP = "rpc_trace_context.sofaCallerApp"
WAIT = 5.0
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture
def mesh(lt: LoopThread) -> Iterator[Mesh]:
    m = Mesh(lt, connect_timeout=3.0, request_timeout=5.0)  # generous bounds: a busy machine is no failure
    try:
        yield m
    finally:
        m.close()


def chain(mesh: Mesh, protocol: str) -> tuple[ProviderServer, HostPort]:
    """A provider behind the plane's RPC ingress, published (with its workload) to the plane's egress."""
    provider = ProviderServer(protocol, "p")
    mesh.lt.run(provider.start())
    plane = mesh.plane
    app = HostPort("127.0.0.1", provider.port)
    ingress = mesh.lt.run(plane.listen_rpc_ingress("echo", protocol, "127.0.0.1", 0, app))
    instance = Instance(service="echo", address=str(ingress), protocol=protocol, workload=WORKLOAD)
    mesh.lt.call(plane.update_service, "echo", [instance])
    egress: HostPort = mesh.lt.run(plane.listen_service_egress("echo", "127.0.0.1", 0))
    return provider, egress


def entries(mesh: Mesh, count: int) -> list[RequestEntry]:
    deadline = time.monotonic() + WAIT
    while True:
        got: list[RequestEntry] = mesh.lt.call(lambda: list(mesh.plane.stats.telemetry.recent))
        if len(got) >= count:
            return got
        assert time.monotonic() < deadline, f"{len(got)} of {count} entries within {WAIT}s"
        time.sleep(0.01)


def by_direction(got: list[RequestEntry]) -> dict[str, RequestEntry]:
    return {e.direction: e for e in got}


def test_bolt_request_through_both_hops(mesh: Mesh, lt: LoopThread) -> None:
    provider, egress = chain(mesh, "bolt")
    headers = {
        bolt.HEADER_SERVICE: "com.acme.Echo:1.0",
        bolt.HEADER_METHOD: "sayHello",
        SOFA_TRACE_ID: "0a0fe8ec1574213545107100117447",
        SOFA_CALLER_APP: "orders-app",
    }
    frame = bolt.encode_request(11, headers, b"<body>")
    try:
        with socket.create_connection(egress, timeout=5) as s:
            s.sendall(bolt.encode_heartbeat(12) + frame)  # the heartbeat is answered here, unreported
            frames = read_frames(s, "bolt", 2)
        (reply,) = [f for f in frames if f.request_id == 11]
        assert reply.status == OK["bolt"]
        got = entries(mesh, 2)
    finally:
        lt.run(provider.kill())
    assert len(got) == 2  # the heartbeat made none
    hops = by_direction(got)
    out, inbound = hops["outbound"], hops["inbound"]
    for entry in (out, inbound):
        assert (entry.service, entry.protocol, entry.method, entry.path) == (
            "echo", "bolt", "sayHello", "com.acme.Echo"
        )
        assert (entry.status, entry.grpc_status, entry.flags, entry.reason) == (200, "", "-", "")
        assert entry.request_id == "0a0fe8ec1574213545107100117447"  # SOFA's own trace id
        assert entry.request_bytes == len(frame)
        assert entry.response_bytes == len(reply.raw)
        assert entry.trace_id == "" and not entry.sampled
    assert out.peer_workload == WORKLOAD  # the instance the egress picked
    assert inbound.peer_workload == "orders-app"  # the caller SOFA names in the frame
    assert inbound.upstream == f"127.0.0.1:{provider.port}"

    def keys(direction: str) -> dict[tuple[str, int, str, str], int]:
        stats = mesh.plane.stats.services[("echo", direction)]
        return {key: s.count for key, s in stats.series.items()}

    assert lt.call(keys, "egress") == {(WORKLOAD, 200, "", "-"): 1}
    assert lt.call(keys, "ingress") == {("orders-app", 200, "", "-"): 1}


def test_dubbo_request_gets_a_generated_request_id(mesh: Mesh, lt: LoopThread) -> None:
    provider, egress = chain(mesh, "dubbo")
    tail = hessian2.encode_string("Ljava/lang/String;") + hessian2.encode_string("hi") + b"HZ"
    frame = dubbo.encode_request(21, "com.acme.Greeter", "greet", tail=tail)
    try:
        with socket.create_connection(egress, timeout=5) as s:
            s.sendall(frame)
            (reply,) = read_frames(s, "dubbo", 1)
        assert reply.status == OK["dubbo"]
        hops = by_direction(entries(mesh, 2))
    finally:
        lt.run(provider.kill())
    out, inbound = hops["outbound"], hops["inbound"]
    for entry in (out, inbound):
        assert (entry.protocol, entry.method, entry.path) == ("dubbo", "greet", "com.acme.Greeter")
        assert entry.status == 200
        assert UUID.match(entry.request_id), entry.request_id
        assert (entry.request_bytes, entry.response_bytes) == (len(frame), len(reply.raw))
    assert out.request_id != inbound.request_id  # nothing in a Dubbo frame carries it between hops
    assert (out.peer_workload, inbound.peer_workload) == (WORKLOAD, "unknown")


@pytest.mark.parametrize("protocol", ["bolt", "dubbo"])
def test_a_local_reply_is_reported_with_its_flag(mesh: Mesh, lt: LoopThread, protocol: str) -> None:
    # The only instance's sidecar is gone: the connect fails and the caller gets UNAVAILABLE.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    instance = Instance(service="echo", address=f"127.0.0.1:{dead}", protocol=protocol, workload=WORKLOAD)
    lt.call(mesh.plane.update_service, "echo", [instance])
    egress = lt.run(mesh.plane.listen_service_egress("echo", "127.0.0.1", 0))
    if protocol == "bolt":
        headers = {bolt.HEADER_SERVICE: "com.acme.Echo:1.0", bolt.HEADER_METHOD: "echo"}
        frame = bolt.encode_request(5, headers)
    else:
        frame = dubbo.encode_request(5, "com.acme.Echo", "echo", tail=b"")
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(frame)
        (reply,) = read_frames(s, protocol, 1)
    assert reply.status == UNAVAILABLE[protocol]
    (entry,) = entries(mesh, 1)
    assert (entry.direction, entry.status, entry.reason, entry.flags) == (
        "outbound", 503, "upstream_connect_failed", "UF"
    )
    assert entry.upstream == f"127.0.0.1:{dead}" and entry.peer_workload == WORKLOAD
    assert entry.response_bytes == len(reply.raw) > 0

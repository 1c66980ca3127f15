"""istio_tcp_* inputs: TCP connections opened and closed and bytes each way, per service and direction and
split by peer workload (outbound: the upstream instance's; inbound: "unknown")."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from plexus.core.address import HostPort
from plexus.discovery.model import Instance
from transport.conftest import Mesh
from transport.upstreams import LoopThread, closed_port, start_echo

WORKLOAD = "db-primary"
WAIT = 5.0


@pytest.fixture
def mesh(lt: LoopThread) -> Iterator[Mesh]:
    m = Mesh(lt, connect_timeout=3.0, request_timeout=5.0)  # generous: a busy machine is no failure here
    try:
        yield m
    finally:
        m.close()


def tcp_view(mesh: Mesh, service: str, direction: str) -> tuple[list[int], dict[str, list[int]]]:
    """([connections, closed, active, bytes_received, bytes_sent], peers) of one TcpStats."""

    def read() -> tuple[list[int], dict[str, list[int]]]:
        t = mesh.plane.stats.tcp[(service, direction)]
        totals = [t.connections, t.closed, t.active, t.bytes_received, t.bytes_sent]
        return totals, {peer: list(counts) for peer, counts in t.peers.items()}

    result: tuple[list[int], dict[str, list[int]]] = mesh.lt.call(read)
    return result


def wait_closed(mesh: Mesh, service: str, direction: str, closed: int) -> None:
    deadline = time.monotonic() + WAIT
    while tcp_view(mesh, service, direction)[0][1] < closed:
        assert time.monotonic() < deadline, f"{service}/{direction}: {closed} closed not seen in {WAIT}s"
        time.sleep(0.01)


def test_connections_and_bytes_by_peer_both_directions(mesh: Mesh) -> None:
    _, echo_port = mesh.lt.run(start_echo())
    plane = mesh.plane
    ingress = mesh.lt.run(plane.listen_tcp_ingress("db", "127.0.0.1", 0, HostPort("127.0.0.1", echo_port)))
    instance = Instance(service="db", address=str(ingress), protocol="tcp", workload=WORKLOAD)
    mesh.lt.call(plane.update_service, "db", [instance])
    egress = mesh.lt.run(plane.listen_service_egress("db", "127.0.0.1", 0))
    sizes = (100, 2_000, 70_000)  # the last is more than one read
    for size in sizes:
        with socket.create_connection(egress, timeout=5) as s:
            s.sendall(b"x" * size)
            got = b""
            s.settimeout(5)
            while len(got) < size:
                data = s.recv(65536)
                assert data, "closed before the echo came back"
                got += data
    wait_closed(mesh, "db", "egress", len(sizes))
    wait_closed(mesh, "db", "ingress", len(sizes))
    total = sum(sizes)
    out, out_peers = tcp_view(mesh, "db", "egress")
    assert out == [3, 3, 0, total, total]
    assert out_peers == {WORKLOAD: [3, 3, total, total]}
    inbound, in_peers = tcp_view(mesh, "db", "ingress")
    assert inbound == [3, 3, 0, total, total]
    assert in_peers == {"unknown": [3, 3, total, total]}


def test_a_connection_no_upstream_took_counts_under_unknown(mesh: Mesh) -> None:
    dead = Instance(service="db", address=f"127.0.0.1:{closed_port()}", protocol="tcp", workload=WORKLOAD)
    mesh.lt.call(mesh.plane.update_service, "db", [dead])
    egress = mesh.lt.run(mesh.plane.listen_service_egress("db", "127.0.0.1", 0))
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(b"hello")
        s.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""  # the sidecar gives up on the connect and closes
    wait_closed(mesh, "db", "egress", 1)
    totals, peers = tcp_view(mesh, "db", "egress")
    assert totals[:3] == [1, 1, 0] and totals[4] == 0
    # The bytes read before the sidecar gave up (the refusal may come first) go to the same peer.
    assert peers == {"unknown": [1, 1, totals[3], 0]}

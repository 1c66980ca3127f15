"""istio_tcp_* inputs: TCP connections opened and closed and bytes each way, per service and direction and
split by peer workload (outbound: the upstream instance's; inbound: "unknown")."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from plexus.core import reasons
from plexus.core.address import HostPort
from plexus.discovery.model import Instance
from plexus.proxy.access_line import entry_line
from plexus.proxy.telemetry import RequestEntry
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


def db_chain(mesh: Mesh) -> tuple[HostPort, HostPort, int]:
    """app → egress:db → TCP ingress → echo app: (the egress, the ingress, the echo's port)."""
    _, echo_port = mesh.lt.run(start_echo())
    plane = mesh.plane
    ingress = mesh.lt.run(plane.listen_tcp_ingress("db", "127.0.0.1", 0, HostPort("127.0.0.1", echo_port)))
    instance = Instance(service="db", address=str(ingress), protocol="tcp", workload=WORKLOAD)
    mesh.lt.call(plane.update_service, "db", [instance])
    egress = mesh.lt.run(plane.listen_service_egress("db", "127.0.0.1", 0))
    return egress, ingress, echo_port


def test_connections_and_bytes_by_peer_both_directions(mesh: Mesh) -> None:
    egress, _, _ = db_chain(mesh)
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


def _logged(mesh: Mesh, count: int) -> list[RequestEntry]:
    """The access-log queue's first ``count`` entries, once the plane has queued them."""
    telemetry = mesh.plane.stats.telemetry
    deadline = time.monotonic() + WAIT
    while True:
        queued: list[Any] = mesh.lt.call(lambda: list(telemetry.access_log or ()))
        if len(queued) >= count:
            return queued
        assert time.monotonic() < deadline, f"{len(queued)} of {count} access-log entries in {WAIT}s"
        time.sleep(0.01)


def _line(mesh: Mesh, entry: RequestEntry) -> dict[str, Any]:
    record: dict[str, Any] = orjson.loads(entry_line(entry, mesh.plane.stats.telemetry))
    return record


def test_each_connection_is_one_access_log_line_when_it_closes(mesh: Mesh) -> None:
    telemetry = mesh.plane.stats.telemetry
    mesh.lt.call(lambda: setattr(telemetry, "access_log", []))  # (what the sidecar's writer does)
    plane = mesh.plane
    egress, ingress, echo_port = db_chain(mesh)
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(b"x" * 3000)
        got = b""
        while len(got) < 3000:
            data = s.recv(65536)
            assert data, "closed before the echo came back"
            got += data
        s.sendall(b"y" * 10)  # (more after the echo: counted too)
        assert s.recv(10) == b"y" * 10
        time.sleep(0.05)
    entries = _logged(mesh, 2)
    assert len(entries) == 2 and all(e.protocol == "tcp" for e in entries)
    by_direction = {e.direction: e for e in entries}
    out, inbound = by_direction["outbound"], by_direction["inbound"]
    assert (out.request_bytes, out.response_bytes) == (3010, 3010)
    assert (inbound.request_bytes, inbound.response_bytes) == (3010, 3010)
    assert out.upstream == str(ingress) and inbound.upstream == f"127.0.0.1:{echo_port}"
    assert out.peer_workload == WORKLOAD and inbound.peer_workload == "unknown"
    assert out.attempts == 1 and out.duration_ms >= 50  # the connection's whole life (it slept 0.05 s)
    line = _line(mesh, out)
    assert line["protocol"] == "tcp" and line["response_code"] == 0 and line["response_flags"] == "-"
    assert line["response_code_details"] is None and line["method"] is None and line["request_id"] is None
    assert line["upstream_cluster"] == "outbound|||db" and line["bytes_received"] == 3010
    # A connection is no request: the request counters and the ring do not see it.
    assert mesh.lt.call(lambda: list(telemetry.ring)) == []
    metrics = mesh.lt.call(plane.metrics_text).splitlines()
    assert not [m for m in metrics if m.startswith("istio_requests_total") and 'service="db"' in m]


def test_a_connection_no_upstream_took_is_logged_with_its_reason(mesh: Mesh) -> None:
    telemetry = mesh.plane.stats.telemetry
    mesh.lt.call(lambda: setattr(telemetry, "access_log", []))
    dead = [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
    mesh.lt.call(
        mesh.plane.update_service,
        "db",
        [Instance(service="db", address=a, protocol="tcp", workload=WORKLOAD) for a in dead],
    )
    mesh.lt.call(mesh.plane.update_service, "nobody", [])
    refused = mesh.lt.run(mesh.plane.listen_service_egress("db", "127.0.0.1", 0))
    empty = mesh.lt.run(mesh.plane.listen_service_egress("nobody", "127.0.0.1", 0))
    for address in (refused, empty):
        with socket.create_connection(address, timeout=5) as s:
            s.sendall(b"hello")
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(10) == b""  # the sidecar gives up and closes
    uf, uh = _logged(mesh, 2)
    assert (uf.service, uf.reason, uf.flags, uf.attempts) == ("db", reasons.UPSTREAM_CONNECT_FAILED, "UF", 2)
    # (the refusals may come before the client's bytes are read)
    assert uf.upstream in dead and uf.request_bytes in (0, 5) and uf.response_bytes == 0
    assert (uh.service, uh.reason, uh.flags, uh.attempts) == ("nobody", reasons.NO_HEALTHY_UPSTREAM, "UH", 0)
    line = _line(mesh, uh)
    assert line["response_code_details"] == reasons.NO_HEALTHY_UPSTREAM and line["upstream_host"] is None

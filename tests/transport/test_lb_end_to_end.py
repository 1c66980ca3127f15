"""Each load-balancing policy through the egress listener, counted at the upstreams."""

from __future__ import annotations

import socket
from collections import Counter

from transport.conftest import Mesh
from transport.upstreams import read_response


def _spread(mesh: Mesh, n: int, header: bytes = b"") -> tuple[Counter[str], list[str]]:
    order: list[str] = []
    with socket.create_connection(mesh.egress, timeout=5) as s:
        for i in range(n):
            s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n%s\r\n" % (header % i if b"%d" in header else header))
            order.append(read_response(s)[1]["x-upstream"])
    return Counter(order), order


def test_round_robin(mesh: Mesh) -> None:
    mesh.http_upstreams("svc", 3)
    counts, _ = _spread(mesh, 60)
    assert sorted(counts.values()) == [20, 20, 20]


def test_weighted(mesh: Mesh) -> None:
    mesh.http_upstreams("svc", 3, w0=300, w1=100, w2=100)
    mesh.lt.call(mesh.plane.configure_service, "svc", "weighted")
    counts, _ = _spread(mesh, 50)
    assert counts == {"svc-0": 30, "svc-1": 10, "svc-2": 10}


def test_random_and_least_request_use_every_endpoint(mesh: Mesh) -> None:
    mesh.http_upstreams("svc", 3)
    for policy in ("random", "least_request"):
        mesh.lt.call(mesh.plane.configure_service, "svc", policy)
        counts, _ = _spread(mesh, 90)
        assert set(counts) == {"svc-0", "svc-1", "svc-2"} and min(counts.values()) >= 10, (policy, counts)


def test_ring_hash_on_a_header(mesh: Mesh) -> None:
    mesh.http_upstreams("svc", 3)
    mesh.lt.call(mesh.plane.configure_service, "svc", "ring_hash", "x-user")
    _, first = _spread(mesh, 40, b"X-User: u%d\r\n")
    _, again = _spread(mesh, 40, b"X-User: u%d\r\n")
    assert first == again  # the same key always lands on the same endpoint
    assert len(set(first)) == 3

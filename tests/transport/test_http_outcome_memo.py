"""A connection's repeated requests find their way of ending (Outcome) through the last one's signature
(Exchange._ended): whatever differs between two requests (path, status, peer metadata, service) still lands
in its own series, as the keyed lookup would put it."""

from __future__ import annotations

import socket

from plexus.discovery.model import Instance
from transport.conftest import Mesh
from transport.upstreams import read_response


def _get(s: socket.socket, target: bytes, host: bytes = b"orders") -> int:
    s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host))
    return read_response(s)[0]


def test_paths_statuses_and_services_on_one_connection_count_apart(mesh: Mesh) -> None:
    mesh.http_upstreams("orders", 1)
    mesh.http_upstreams("billing", 1)
    with socket.create_connection(mesh.egress, timeout=5) as s:
        assert [_get(s, t) for t in (b"/a", b"/a", b"/b", b"/a", b"/retriable")] == [200, 200, 200, 200, 503]
        assert _get(s, b"/a", b"billing") == 200
        assert _get(s, b"/a") == 200
    orders = mesh.lt.call(mesh.plane.stats.service, "orders", "egress")
    billing = mesh.lt.call(mesh.plane.stats.service, "billing", "egress")
    paths = mesh.lt.call(lambda: {k: v.count for k, v in orders.paths.items()})
    assert paths == {("GET", "/a"): 4, ("GET", "/b"): 1, ("GET", "/retriable"): 1}
    assert mesh.lt.call(lambda: list(orders.by_class)) == [0, 0, 5, 0, 0, 1]
    assert mesh.lt.call(lambda: list(billing.by_class)) == [0, 0, 1, 0, 0, 0]


def test_a_peer_whose_metadata_changed_is_counted_under_its_new_workload(mesh: Mesh) -> None:
    (up,) = mesh.http_upstreams("orders", 1)
    address = f"127.0.0.1:{up.port}"

    def instances(workload: str) -> None:
        instance = Instance(service="orders", address=address, workload=workload)
        mesh.lt.call(mesh.plane.update_service, "orders", [instance])

    instances("orders-v1")
    with socket.create_connection(mesh.egress, timeout=5) as s:
        assert [_get(s, b"/a") for _ in range(3)] == [200] * 3
        instances("orders-v2")  # same address, same Endpoint object: its instance is swapped
        assert [_get(s, b"/a") for _ in range(2)] == [200] * 2
    stats = mesh.lt.call(mesh.plane.stats.service, "orders", "egress")
    peers = mesh.lt.call(lambda: {key[0]: series.count for key, series in stats.series.items()})
    assert peers == {"orders-v1": 3, "orders-v2": 2}

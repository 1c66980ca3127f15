"""The dashboard's JSON API and static files on a real `plexus control` admin port, with real sidecars, a
provider app and a consumer making calls (plexus.demo.cluster); and the pure parts (History, graph_json).

- /api/stat, /api/graph and /api/history show the mesh's services, workloads and the consumer -> hello edge;
  after the traffic stops and the sidecars report again, the request counts equal the sidecars' own
  istio_requests_total;
- /api/proxies: every sidecar SYNCED, with its report sequence;
- /, /dashboard.js, /dashboard.css with their content types; any other path (traversal included) is 404;
  a bad window is 400.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from plexus.control.admin import graph_json
from plexus.control.core import NodeView
from plexus.control.history import History
from plexus.demo.cluster import Cluster
from plexus.demo.processes import Child
from plexus.proto import control_pb2 as pb

WAIT = 30.0  # bounds, not timings: several test processes share two cores
SERVICE = "hello"


# ---------------------------------------------------------------- helpers


def get(admin: str, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def get_json(admin: str, path: str) -> Any:
    status, _, body = get(admin, path)
    assert status == 200, f"GET {path}: {status} {body!r}"
    return json.loads(body)


def raw_status(admin: str, target: str) -> int:
    """The status of ``GET target`` sent byte for byte (urllib would normalise ``..`` away)."""
    host, port = admin.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode("latin-1"))
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def istio_requests(sidecar: Child, reporter: str, service: str) -> int:
    """The sidecar's own istio_requests_total for ``service`` as ``reporter`` sees it, over every label."""
    status, _, body = get(sidecar.address("admin"), "/stats/prometheus")
    assert status == 200
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if (
                sample.name == "istio_requests_total"
                and sample.labels.get("reporter") == reporter
                and sample.labels.get("destination_service", "").split(".")[0] == service
            ):
                total += sample.value
    return int(total)


def report_sequences(admin: str) -> dict[str, int]:
    return {p["node"]["id"]: int(p["report_sequence"]) for p in get_json(admin, "/api/proxies")["proxies"]}


def wait_for_reports(admin: str, ids: list[str], after: dict[str, int] | None = None, more: int = 1) -> None:
    """Until every sidecar in ``ids`` has sent ``more`` reports after the sequences ``after``."""
    base = after or {}

    def done() -> bool:
        now = report_sequences(admin)
        return all(now.get(i, 0) >= base.get(i, 0) + more for i in ids)

    wait_until(done, f"{more} more report(s) from {ids}")


class Mesh:
    """control plane; provider sidecar (workload "provider") + provider app serving hello; consumer sidecar
    (workload "consumer") + consumer app calling hello."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        control = cluster.start_control()
        self.admin = control.address("admin")
        self.provider_sidecar = cluster.start_sidecar("provider-sidecar", extra=("--workload", "provider"))
        self.consumer_sidecar = cluster.start_sidecar("consumer-sidecar", extra=("--workload", "consumer"))
        cluster.start_provider("provider", SERVICE, "mesh", sidecar=self.provider_sidecar)
        self.consumer: Child | None = None

    @property
    def sidecar_ids(self) -> list[str]:
        return sorted(report_sequences(self.admin))

    def start_traffic(self, rate: float = 40.0) -> Child:
        """The consumer, once both sidecars are connected and have reported (so a window that reaches back
        to the first report covers every request)."""
        wait_until(lambda: len(report_sequences(self.admin)) == 2, "both sidecars connected")
        wait_for_reports(self.admin, self.sidecar_ids)
        self.consumer = self.cluster.start_consumer(
            "consumer", [SERVICE], "mesh", rate=rate, sidecar=self.consumer_sidecar
        )
        return self.consumer

    def stop_traffic(self) -> None:
        """Stop the consumer, then wait for two reports from each sidecar: the second was taken after every
        request of the consumer had ended."""
        assert self.consumer is not None
        self.consumer.stop()
        wait_for_reports(self.admin, self.sidecar_ids, report_sequences(self.admin), more=2)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    cluster = Cluster(tmp_path)
    try:
        yield Mesh(cluster)
    finally:
        cluster.stop_all()  # every child by PID, consumers first


@pytest.fixture
def control_admin(tmp_path: Path) -> Iterator[str]:
    """A control plane alone: its admin address."""
    cluster = Cluster(tmp_path)
    try:
        yield cluster.start_control().address("admin")
    finally:
        cluster.stop_all()


# ---------------------------------------------------------------- pure parts


def _stat(*services: tuple[str, float, int], edges: tuple[pb.EdgeStat, ...] = ()) -> pb.StatResponse:
    return pb.StatResponse(
        window_seconds=10.0,
        services=[
            pb.ServiceStat(service=name, rps=rps, requests=requests, success_rate=1.0, latency_p99_ms=2.0)
            for name, rps, requests in services
        ],
        edges=list(edges),
    )


def test_history_keeps_one_hour_per_service_and_a_bounded_number_of_services() -> None:
    history = History(interval=5.0, span=60.0, max_services=3)
    assert history.capacity == 12
    for i in range(30):
        history.record(_stat(("a", float(i), i), ("b", 1.0, 5)), at=1000.0 + 5 * i)
    points = history.points("a")
    assert len(points) == 12, "a service keeps span / interval points"
    assert [p.requests for p in points] == list(range(18, 30)), "the newest points, oldest first"
    assert points[-1].rps == 29.0 and points[-1].p99_ms == 2.0
    # more services than max_services: the least recently sampled go first
    history.record(_stat(("c", 1.0, 1), ("d", 1.0, 1)), at=1150.0)
    assert history.services() == ["b", "c", "d"], "a and b were sampled together; a is older in the order"
    # a service not sampled for the whole span is dropped
    history.record(_stat(("d", 1.0, 1)), at=1150.0 + 61.0)
    assert history.services() == ["d"]
    document = history.to_json("d")
    assert document["interval_seconds"] == 5.0
    assert [p["requests"] for p in document["services"]["d"]] == [1, 1]
    assert set(document["services"]["d"][0]) == {"t", "rps", "success_rate", "p50_ms", "p99_ms", "requests"}
    with pytest.raises(ValueError):
        History(interval=0.0)


def test_graph_sums_a_callers_edges_over_the_serving_workloads() -> None:
    edges = (
        pb.EdgeStat(source_workload="web", destination_service="orders", destination_workload="orders-v1",
                    rps=3.0, success_rate=1.0, latency_p50_ms=1.0, latency_p99_ms=4.0, requests=30),
        pb.EdgeStat(source_workload="web", destination_service="orders", destination_workload="orders-v2",
                    rps=1.0, success_rate=0.5, latency_p50_ms=2.0, latency_p99_ms=9.0, requests=10),
        pb.EdgeStat(source_workload="", destination_service="orders", destination_workload="orders-v2",
                    rps=0.5, success_rate=1.0, latency_p99_ms=1.0, requests=5),
    )  # fmt: skip
    sidecar = NodeView(
        node=pb.Node(id="s1", workload="web", consumes=["orders", "payments"]),
        report=None, report_time=0.0, acked_version=1, sent_version=1,
    )  # fmt: skip
    graph = graph_json(_stat(("orders", 4.5, 45), edges=edges), [sidecar])
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert set(nodes) == {
        "workload:web", "workload:orders-v1", "workload:orders-v2", "workload:unknown",
        "service:orders", "service:payments",
    }  # fmt: skip
    assert nodes["workload:web"]["sidecars"] == 1 and nodes["workload:orders-v1"]["sidecars"] == 0
    assert nodes["service:orders"]["requests"] == 45 and nodes["service:orders"]["rps"] == 4.5
    assert nodes["service:payments"]["success_rate"] == 1.0, "a service without traffic shows no failures"
    by_id = {(e["kind"], e["id"]): e for e in graph["edges"]}
    call = by_id[("call", "web->orders")]
    assert call["requests"] == 40 and call["rps"] == pytest.approx(4.0)
    assert call["success_rate"] == pytest.approx(35 / 40), "weighted by requests"
    assert call["latency_p99_ms"] == 9.0, "the highest p99 of the parts"
    assert call["peers"] == ["orders-v1", "orders-v2"]
    assert by_id[("call", "web->payments")]["requests"] == 0, "consumed, no traffic yet"
    assert by_id[("call", "unknown->orders")]["requests"] == 5
    serve = by_id[("serve", "orders->orders-v2")]
    assert serve["requests"] == 15 and serve["peers"] == ["unknown", "web"]


# ---------------------------------------------------------------- a real control plane


def test_static_files_with_their_types_and_nothing_else(control_admin: str) -> None:
    admin = control_admin
    status, headers, body = get(admin, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<script src="/dashboard.js"' in body and b'id="graph"' in body
    assert "default-src 'self'" in headers["content-security-policy"]
    status, headers, body = get(admin, "/dashboard.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert b"/api/graph" in body
    status, headers, _ = get(admin, "/dashboard.css")
    assert status == 200 and headers["content-type"].startswith("text/css")
    assert get(admin, "/index.html")[2] == get(admin, "/")[2]
    for target in (
        "/../pyproject.toml", "/dashboard/../admin.py", "/%2e%2e/%2e%2e/pyproject.toml", "/admin.py",
        "/dashboard/index.html", "/dashboard.js/../app.py", "//etc/passwd", "/..%2fcore.py", "/history.py",
    ):  # fmt: skip
        assert raw_status(admin, target) == 404, target
    assert get(admin, "/api/stat?window=abc")[0] == 400
    assert get(admin, "/api/stat?window=0")[0] == 400
    assert get(admin, "/api/graph?window=-5")[0] == 400
    assert get(admin, "/api/stat?window=601")[0] == 400, "the observer keeps 600 s"
    assert get_json(admin, "/api/stat?window=600")["services"] == []
    assert get_json(admin, "/api/graph") == {"window_seconds": 30.0, "nodes": [], "edges": []}
    assert get_json(admin, "/api/history")["services"] == {}
    assert get_json(admin, "/api/proxies")["proxies"] == []


def test_api_shows_the_mesh_and_counts_what_the_sidecars_count(mesh: Mesh) -> None:
    admin = mesh.admin
    proxies = get_json(admin, "/api/proxies")
    assert proxies["version"] >= 0
    wait_until(lambda: len(get_json(admin, "/api/proxies")["proxies"]) == 2, "both sidecars")
    mesh.start_traffic()
    consumer = mesh.consumer
    assert consumer is not None

    def edge_requests(window: str = "600") -> int:
        stat = get_json(admin, f"/api/stat?window={window}")
        return sum(
            int(e["requests"]) for e in stat["edges"]
            if e["source_workload"] == "consumer" and e["destination_service"] == SERVICE
        )  # fmt: skip

    wait_until(lambda: edge_requests() >= 20, "the consumer -> hello edge to carry traffic")
    stat = get_json(admin, f"/api/stat?service={SERVICE}&window=10")
    assert stat["window_seconds"] > 0
    services = {s["service"]: s for s in stat["services"]}
    assert set(services) == {SERVICE}, "service= filters"
    hello = services[SERVICE]
    assert float(hello["rps"]) > 0 and int(hello["requests"]) > 0
    assert hello["success_rate"] == 1.0
    assert hello["meshed"] >= 1
    for key in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "tcp_connections", "protocol"):
        assert key in hello, f"field names preserved: {key}"

    graph = get_json(admin, "/api/graph?window=30")
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert {"workload:consumer", "workload:provider", f"service:{SERVICE}"} <= set(nodes)
    assert nodes["workload:consumer"]["sidecars"] == 1
    edges = {(e["kind"], e["id"]): e for e in graph["edges"]}
    call = edges[("call", f"consumer->{SERVICE}")]
    assert call["requests"] > 0 and call["rps"] > 0 and call["success_rate"] == 1.0
    assert call["latency_p99_ms"] >= call["latency_p50_ms"] > 0
    assert edges[("serve", f"{SERVICE}->provider")]["requests"] > 0

    def history_points() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = get_json(admin, f"/api/history?service={SERVICE}")["services"][SERVICE]
        return found

    wait_until(lambda: any(p["requests"] > 0 for p in history_points()), "a history point with traffic")
    point = history_points()[-1]
    assert point["t"] > time.time() - 600 and point["success_rate"] == 1.0
    assert get_json(admin, "/api/history")["interval_seconds"] == 5.0

    # stop the traffic; once every sidecar has reported after that, the window's counts are final and equal
    # the sidecars' own counters
    mesh.stop_traffic()
    sent = istio_requests(mesh.consumer_sidecar, "source", SERVICE)
    received = istio_requests(mesh.provider_sidecar, "destination", SERVICE)
    assert sent > 0 and received == sent
    assert edge_requests() == sent
    full = get_json(admin, f"/api/stat?service={SERVICE}&window=600")
    assert int(full["services"][0]["requests"]) == received
    graph = get_json(admin, "/api/graph?window=600")
    calls = {e["id"]: e for e in graph["edges"] if e["kind"] == "call"}
    assert calls[f"consumer->{SERVICE}"]["requests"] == sent

    proxies = get_json(admin, "/api/proxies")
    assert [p["state"] for p in proxies["proxies"]] == ["SYNCED", "SYNCED"]
    assert {p["node"]["workload"] for p in proxies["proxies"]} == {"consumer", "provider"}
    for p in proxies["proxies"]:
        assert p["acked_version"] == p["sent_version"] == proxies["version"]
        assert p["report_sequence"] >= 3 and 0 <= p["report_age_seconds"] < WAIT

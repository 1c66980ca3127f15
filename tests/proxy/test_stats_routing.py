"""Counters render as Prometheus text; the routing helpers pick the right service."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from plexus.core.address import HostPort
from plexus.proxy import DataPlaneStats, IngressRoutes, service_from_host


def test_metrics_text_parses_and_counts() -> None:
    stats = DataPlaneStats()
    s = stats.service("orders", "egress")
    s.record(200, 3.0)
    s.record(503, 70.0)
    stats.local_reply("no_healthy_upstream", "orders")
    stats.downstream_reject("ambiguous_framing")
    stats.tcp_service("db", "egress").bytes_received += 10
    families = {f.name: f for f in text_string_to_metric_families(stats.render())}
    requests = {(x.labels["code_class"]): x.value for x in families["plexus_requests"].samples}
    assert requests == {"2xx": 1.0, "5xx": 1.0}
    buckets = {
        x.labels["le"]: x.value
        for x in families["plexus_request_duration_milliseconds"].samples
        if x.name.endswith("_bucket")
    }
    assert buckets["5"] == 1 and buckets["100"] == 2 and buckets["+Inf"] == 2
    assert families["plexus_downstream_rejects"].samples[0].labels == {"reason": "ambiguous_framing"}


def test_local_reply_labels_are_bounded() -> None:
    stats = DataPlaneStats()
    for i in range(1500):
        stats.local_reply("unknown_service", f"host{i}")
    assert len(stats.local_replies) <= 1001
    assert stats.local_replies[("unknown_service", "other")] == 500


def test_service_from_host() -> None:
    assert service_from_host(b"orders:8080") == "orders"
    assert service_from_host(b"orders") == "orders"
    assert service_from_host(b"com.acme.Orders:1.0") == "com.acme.Orders:1.0"
    assert service_from_host(b"com.acme.Orders:1.0:80") == "com.acme.Orders:1.0"
    assert service_from_host(None) is None and service_from_host(b"[::1]:80") is None


def test_ingress_resolution_order() -> None:
    routes = IngressRoutes()
    routes.set("a", "http", HostPort("127.0.0.1", 1))
    assert routes.resolve(None, b"whatever").service == "a"  # the only local HTTP service
    routes.set("b", "http", HostPort("127.0.0.1", 2))
    assert routes.resolve(None, b"whatever") is None
    assert routes.resolve(None, b"b:80").service == "b"
    assert routes.resolve(b"a", b"b").service == "a"  # x-plexus-service wins
    assert routes.resolve(b"zzz", b"b") is None

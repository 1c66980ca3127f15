"""Istio's standard families from ServiceStats.series and TcpStats.peers, read back by prometheus_client."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from plexus.core import reasons
from plexus.proxy import DataPlaneStats
from plexus.proxy.stats import (
    DURATION_BUCKETS_MS,
    MAX_SERIES_PER_SERVICE,
    OVERFLOW,
    SIZE_BUCKETS_BYTES,
)
from plexus.proxy.telemetry import INBOUND, OUTBOUND, RequestEntry, Telemetry, response_flag

REQUEST_LABELS = {
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
}


def _entry(direction: str, status: int, ms: float, **kw: object) -> RequestEntry:
    return RequestEntry(direction, "orders", "http", "GET", "/a", 0.0, ms, status, **kw)  # type: ignore[arg-type]


def _families(stats: DataPlaneStats, only: str = "") -> dict[str, Metric]:
    """Parsed families (``only``: just the lines that mention it; the parser is slow on thousands)."""
    text = stats.render()
    if only:
        text = "\n".join(line for line in text.splitlines() if only in line) + "\n"
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_outbound_and_inbound_series_have_istios_labels_and_values() -> None:
    stats = DataPlaneStats(Telemetry("shop-v1", "prod"))
    out = stats.service("orders", "egress")
    out.done(_entry(OUTBOUND, 200, 3.0, peer_workload="orders-v2", request_bytes=5, response_bytes=1500))
    out.done(_entry(OUTBOUND, 200, 70.0, peer_workload="orders-v2", request_bytes=0, response_bytes=20))
    out.done(
        _entry(
            OUTBOUND,
            503,
            1.5,
            peer_workload="orders-v2",
            reason=reasons.UPSTREAM_RESET,
            flags=response_flag(reasons.UPSTREAM_RESET),
        )
    )
    inbound = stats.service("cart", "ingress")
    inbound.done(_entry(INBOUND, 201, 12.0, peer_workload="web"))
    families = _families(stats)

    requests = families["istio_requests"].samples
    assert all(set(s.labels) == REQUEST_LABELS for s in requests)
    by_code = {
        (s.labels["reporter"], s.labels["response_code"], s.labels["response_flags"]): s for s in requests
    }
    assert set(by_code) == {("source", "200", "-"), ("source", "503", "UC"), ("destination", "201", "-")}
    ok = by_code[("source", "200", "-")]
    assert ok.value == 2
    assert ok.labels["source_workload"] == "shop-v1" and ok.labels["source_workload_namespace"] == "prod"
    assert ok.labels["destination_workload"] == "orders-v2"
    assert ok.labels["destination_service"] == "orders" and ok.labels["destination_service_name"] == "orders"
    assert ok.labels["connection_security_policy"] == "unknown"
    assert ok.labels["source_principal"] == ok.labels["destination_principal"] == "unknown"
    assert ok.labels["request_protocol"] == "http" and ok.labels["grpc_response_status"] == ""
    inbound_labels = by_code[("destination", "201", "-")].labels
    assert inbound_labels["source_workload"] == "web" and inbound_labels["destination_workload"] == "shop-v1"
    assert inbound_labels["destination_service"] == "cart"
    assert inbound_labels["connection_security_policy"] == "none"

    # Histograms: cumulative buckets, +Inf == count, sums of what was observed, Istio's bucket bounds.
    duration = [
        s
        for s in families["istio_request_duration_milliseconds"].samples
        if s.labels["response_code"] == "200"
    ]
    buckets = {s.labels["le"]: s.value for s in duration if s.name.endswith("_bucket")}
    assert list(buckets) == [f"{b:g}" for b in DURATION_BUCKETS_MS] + ["+Inf"]
    assert buckets["1"] == 0 and buckets["5"] == 1 and buckets["100"] == 2 and buckets["+Inf"] == 2
    assert list(buckets.values()) == sorted(buckets.values())
    count = next(s.value for s in duration if s.name.endswith("_count"))
    total = next(s.value for s in duration if s.name.endswith("_sum"))
    assert count == buckets["+Inf"] == 2 and total == 73.0
    response = [s for s in families["istio_response_bytes"].samples if s.labels["response_code"] == "200"]
    sizes = {s.labels["le"]: s.value for s in response if s.name.endswith("_bucket")}
    assert list(sizes) == [f"{b:g}" for b in SIZE_BUCKETS_BYTES] + ["+Inf"]
    assert sizes["100"] == 1 and sizes["10000"] == 2 and sizes["+Inf"] == 2
    assert next(s.value for s in response if s.name.endswith("_sum")) == 1520
    request = [s for s in families["istio_request_bytes"].samples if s.labels["response_code"] == "200"]
    assert next(s.value for s in request if s.name.endswith("_sum")) == 5
    # the plexus_* families are still there, unchanged
    assert {
        s.labels["code_class"]: s.value
        for s in families["plexus_requests"].samples
        if s.labels["service"] == "orders"
    } == {"2xx": 2, "5xx": 1}


def test_grpc_status_and_protocol_labels() -> None:
    stats = DataPlaneStats(Telemetry("client", "default"))
    s = stats.service("greeter", "egress")
    s.done(
        RequestEntry(
            OUTBOUND,
            "greeter",
            "grpc",
            "SayHello",
            "/hello.Greeter/SayHello",
            0.0,
            2.0,
            200,
            grpc_status="14",
            peer_workload="greeter-v1",
        )
    )
    sample = _families(stats)["istio_requests"].samples[0]
    assert sample.labels["request_protocol"] == "grpc" and sample.labels["grpc_response_status"] == "14"
    assert sample.labels["response_code"] == "200"


def test_series_are_bounded_whatever_the_callers_invent() -> None:
    stats = DataPlaneStats(Telemetry("provider", "default"))
    s = stats.service("orders", "ingress")
    for i in range(3 * MAX_SERIES_PER_SERVICE):
        s.done(_entry(INBOUND, 200 + i % 300, 1.0, peer_workload=f'caller-{i}"\n\\'))
    requests = _families(stats, "istio_requests_total")["istio_requests"].samples
    assert len(requests) == MAX_SERIES_PER_SERVICE + 1  # the bound, plus the one overflow series
    assert sum(x.value for x in requests) == 3 * MAX_SERIES_PER_SERVICE  # nothing is lost, only merged
    overflow = [x for x in requests if x.labels["source_workload"] == OVERFLOW]
    assert len(overflow) == 1 and overflow[0].value == 2 * MAX_SERIES_PER_SERVICE
    # an odd caller name is escaped, not breaking the text format
    assert any(x.labels["source_workload"] == 'caller-0"\n\\' for x in requests)


def test_tcp_families_per_peer_and_pool_and_telemetry_gauges() -> None:
    telemetry = Telemetry("api", "default")
    stats = DataPlaneStats(telemetry)
    tcp = stats.tcp_service("db", "egress")
    peer = tcp.peer("db-v1")
    peer[0] += 3  # opened
    peer[1] += 2  # closed
    peer[2] += 100  # received from the downstream
    peer[3] += 4000  # sent to the downstream
    stats.pool_sizes = lambda: {("http1", "open"): 4, ("http1", "idle"): 2}
    telemetry.access_log_dropped = 7
    telemetry.spans_failed = 2
    families = _families(stats)
    for name, value in (
        ("istio_tcp_connections_opened", 3),
        ("istio_tcp_connections_closed", 2),
        ("istio_tcp_received_bytes", 100),
        ("istio_tcp_sent_bytes", 4000),
    ):
        (sample,) = families[name].samples
        assert sample.value == value
        assert sample.labels["reporter"] == "source" and sample.labels["destination_workload"] == "db-v1"
        assert sample.labels["request_protocol"] == "tcp" and sample.labels["destination_service"] == "db"
    pools = {
        (s.labels["pool"], s.labels["state"]): s.value
        for s in families["plexus_upstream_pool_connections"].samples
    }
    assert pools == {("http1", "open"): 4, ("http1", "idle"): 2}
    dropped = {
        (s.labels["sink"], s.labels["reason"]): s.value for s in families["plexus_telemetry_dropped"].samples
    }
    assert dropped[("access_log", "queue_full")] == 7 and dropped[("spans", "export_failed")] == 2
    assert dropped[("tap", "queue_full")] == 0

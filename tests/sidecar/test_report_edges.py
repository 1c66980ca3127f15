"""What a sidecar's Report says of its traffic (plexus.sidecar.policy.edges_of): the Istio series of one
service and direction summed per peer workload, errors as RequestEntry.failed counts them, the overflow
series' errors from the total, and a service counted only by record() as one edge of an unknown peer."""

from __future__ import annotations

from plexus.core import reasons
from plexus.proxy.stats import MAX_SERIES_PER_SERVICE, ServiceStats
from plexus.proxy.telemetry import RequestEntry, response_flag
from plexus.sidecar.policy import edges_of


def entry(peer: str, status: int, reason: str = "", grpc_status: str = "", ms: float = 3.0) -> RequestEntry:
    flags = response_flag(reason)
    return RequestEntry("outbound", "reviews", "http", "GET", "/", 0.0, ms, status, reason=reason,
                        flags=flags, grpc_status=grpc_status, peer_workload=peer)  # fmt: skip


def test_series_are_summed_per_peer_with_the_failures_requestentry_counts() -> None:
    stats = ServiceStats("reviews", "egress")
    cases = [
        entry("v1", 200), entry("v1", 200), entry("v1", 503), entry("v1", 0),
        entry("v1", 200, grpc_status="14"),  # a gRPC error in a 200
        entry("v2", 429, reasons.RATE_LIMITED),  # a local reply that is not 5xx
        entry("v2", 200, reasons.RETRY_BUDGET_EXHAUSTED),  # not a failure
        entry("v2", 404, ms=300.0),
    ]  # fmt: skip
    for e in cases:
        stats.done(e)
    edges = {e.destination_workload: e for e in edges_of(stats, "shop")}
    assert set(edges) == {"v1", "v2"}
    v1, v2 = edges["v1"], edges["v2"]
    assert (v1.requests, v1.errors, v2.requests, v2.errors) == (5, 3, 3, 1)
    assert sum(e.errors for e in edges.values()) == stats.failures == sum(e.failed for e in cases)
    assert v1.direction == "outbound" and v1.source_workload == "shop" and v1.protocol == "http"
    assert sum(v2.duration_buckets) == 3 and v2.duration_sum_ms == 306.0

    inbound = ServiceStats("reviews", "ingress")
    inbound.done(entry("shop", 200))
    (edge,) = edges_of(inbound, "r1")
    assert (edge.direction, edge.source_workload, edge.destination_workload) == ("inbound", "shop", "r1")


def test_overflow_gets_the_rest_of_the_failures_and_record_only_is_one_unknown_edge() -> None:
    stats = ServiceStats("reviews", "ingress")
    for i in range(MAX_SERIES_PER_SERVICE + 50):
        stats.done(entry(f"caller-{i}", 503 if i % 2 else 200))
    edges = edges_of(stats, "me")
    assert sum(e.requests for e in edges) == MAX_SERIES_PER_SERVICE + 50
    assert sum(e.errors for e in edges) == stats.failures == (MAX_SERIES_PER_SERVICE + 50) // 2

    recorded = ServiceStats("legacy", "egress")
    recorded.record(200, 2.0)
    recorded.record(502, 20.0)
    (edge,) = edges_of(recorded, "me")
    assert (edge.destination_workload, edge.requests, edge.errors) == ("unknown", 2, 1)
    assert list(edge.duration_buckets) == recorded.buckets

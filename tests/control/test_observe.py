"""The report aggregator alone (plexus.control.observe), on a hand-driven clock: rates over windows,
percentiles from duration buckets, restarts, views, memory caps, explain verdicts."""

from __future__ import annotations

import pytest

from plexus.control.observe import (
    DISCONNECTED_KEEP,
    DURATION_BUCKETS_MS,
    MAX_OLD,
    MAX_RECENT,
    OLD_STEP,
    MeshObserver,
    histogram_quantile,
    order_hops,
    verdict,
)
from plexus.proto import control_pb2 as pb

NB = len(DURATION_BUCKETS_MS) + 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def buckets(**at: int) -> list[int]:
    """Per-bucket counts: ``b10=4`` puts 4 in the bucket whose upper bound is 10 ms; ``inf`` the last."""
    out = [0] * NB
    for name, count in at.items():
        index = NB - 1 if name == "inf" else DURATION_BUCKETS_MS.index(float(name[1:]))
        out[index] = count
    return out


def edge(direction: str, source: str, service: str, dest: str, requests: int, errors: int = 0,
         bucket: str = "b10", protocol: str = "http") -> pb.EdgeSummary:  # fmt: skip
    return pb.EdgeSummary(direction=direction, source_workload=source, destination_service=service,
                          destination_workload=dest, protocol=protocol, requests=requests, errors=errors,
                          duration_buckets=buckets(**{bucket: requests}))  # fmt: skip


def report(uptime: float, *edges: pb.EdgeSummary, paths: tuple[pb.PathSummary, ...] = (),
           tcp: tuple[pb.TcpSummary, ...] = ()) -> pb.Report:  # fmt: skip
    return pb.Report(uptime_seconds=uptime, edges=edges, paths=paths, tcp=tcp)


def one(stat: pb.StatResponse, service: str) -> pb.ServiceStat:
    found: list[pb.ServiceStat] = [s for s in stat.services if s.service == service]
    assert len(found) == 1, stat
    return found[0]


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    assert histogram_quantile(0.5, [0] * NB) == 0.0
    # 10 requests in (5, 10]: rank 5 of 10 -> halfway
    assert histogram_quantile(0.5, buckets(b10=10)) == pytest.approx(7.5)
    # first bucket from 0: 4 in (0, 1] -> p50 at 0.5
    assert histogram_quantile(0.5, buckets(b1=4)) == pytest.approx(0.5)
    # 90 in (5,10], 10 in (100, 250]: p95 is rank 95 -> 5 of 10 into (100, 250]
    assert histogram_quantile(0.95, buckets(b10=90, b250=10)) == pytest.approx(175.0)
    assert histogram_quantile(0.5, buckets(b10=90, b250=10)) == pytest.approx(5 + 5 * 50 / 90)
    # in +Inf: the highest finite bound, as Prometheus does
    assert histogram_quantile(0.99, buckets(b10=1, inf=99)) == DURATION_BUCKETS_MS[-1]


def test_rates_are_the_difference_over_the_window_and_fall_to_zero_after_it() -> None:
    clock = Clock()
    obs = MeshObserver(clock)
    obs.connected(pb.Node(id="p1", workload="v1", provides=["reviews"]))
    total = errors = 0
    for second in range(60):  # 10 rps, 1 in 10 failing, 1 report per second
        clock.now += 1
        total += 10
        errors += 1
        obs.report("p1", report(second + 1.0, edge("inbound", "shop", "reviews", "v1", total, errors)))
    stat = obs.stat("reviews", 30)
    s = one(stat, "reviews")
    assert s.rps == pytest.approx(10.0)
    assert s.requests == 300 and s.success_rate == pytest.approx(0.9)
    assert s.meshed == 1 and s.instances == 0 and s.protocol == "http"
    assert s.latency_p50_ms == pytest.approx(7.5) and 5.0 < s.latency_p99_ms <= 10.0
    assert stat.window_seconds == pytest.approx(30.0)
    assert [(e.source_workload, e.destination_service, e.destination_workload) for e in stat.edges] == [
        ("shop", "reviews", "v1")
    ]
    # traffic stops; reports go on: the window slides past it
    for second in range(60, 75):
        clock.now += 1
        obs.report("p1", report(second + 1.0, edge("inbound", "shop", "reviews", "v1", total, errors)))
    assert one(obs.stat("reviews", 10), "reviews").rps == 0.0
    assert one(obs.stat("reviews", 10), "reviews").success_rate == 1.0  # no requests: 1, never NaN
    assert one(obs.stat("reviews", 30), "reviews").rps == pytest.approx(150 / 30)


def test_a_first_report_counts_from_the_sidecars_start_and_a_single_point_uses_the_one_before() -> None:
    clock = Clock()
    obs = MeshObserver(clock)
    obs.connected(pb.Node(id="p1", workload="w", provides=["svc"]))
    obs.report("p1", report(5.0, edge("inbound", "unknown", "svc", "w", 50)))
    s = one(obs.stat("svc", 30), "svc")
    assert s.rps == pytest.approx(10.0) and s.requests == 50
    # control plane restarted long after the sidecar: its old counts are spread over its whole uptime
    obs.connected(pb.Node(id="p2", workload="w2", provides=["other"]))
    obs.report("p2", report(3600.0, edge("inbound", "unknown", "other", "w2", 36_000)))
    assert one(obs.stat("other", 30), "other").rps == 0.0  # its start is past every window
    clock.now += 2
    obs.report("p2", report(3602.0, edge("inbound", "unknown", "other", "w2", 36_040)))
    assert one(obs.stat("other", 30), "other").rps == pytest.approx(20.0)


def test_a_restart_starts_the_history_afresh_and_rates_never_go_negative() -> None:
    clock = Clock()
    obs = MeshObserver(clock)
    obs.connected(pb.Node(id="p1", workload="w", provides=["svc"]))
    for second in range(1, 21):
        clock.now += 1
        obs.report("p1", report(float(second), edge("inbound", "unknown", "svc", "w", second * 100)))
    # same node id, uptime back to 2 s: a new process; 20 requests since it started
    clock.now += 1
    obs.report("p1", report(2.0, edge("inbound", "unknown", "svc", "w", 20)))
    s = one(obs.stat("svc", 30), "svc")
    assert s.requests == 20 and s.rps == pytest.approx(10.0)
    # a counter that goes down with the uptime still growing (a reset counter) is a restart too
    clock.now += 1
    obs.report("p1", report(3.0, edge("inbound", "unknown", "svc", "w", 3)))
    s = one(obs.stat("svc", 30), "svc")
    assert s.requests == 3 and s.rps == pytest.approx(1.0)


def test_sum_over_sidecars_views_meshed_instances_and_edges() -> None:
    clock = Clock()
    obs = MeshObserver(clock, instances=lambda service: {"reviews": 3}.get(service, 0))
    obs.connected(pb.Node(id="shop", workload="shop", consumes=["reviews", "legacy"]))
    obs.connected(pb.Node(id="r1", workload="reviews-v1", provides=["reviews"]))
    obs.connected(pb.Node(id="r2", workload="reviews-v2", provides=["reviews"]))
    for second in range(1, 11):
        clock.now += 1
        obs.report("shop", report(
            float(second),
            edge("outbound", "shop", "reviews", "reviews-v1", 10 * second),
            edge("outbound", "shop", "reviews", "reviews-v2", 10 * second, errors=second),
            edge("outbound", "shop", "legacy", "unknown", 5 * second, bucket="b100"),  # not meshed
            paths=(pb.PathSummary(service="legacy", direction="outbound", method="GET", path="/old",
                                  requests=5 * second, duration_buckets=buckets(b100=5 * second)),),
        ))  # fmt: skip
        obs.report("r1", report(float(second), edge("inbound", "shop", "reviews", "reviews-v1", 10 * second),
                                edge("inbound", "unknown", "reviews", "reviews-v1", 2 * second),
                                paths=(pb.PathSummary(service="reviews", direction="inbound", method="GET",
                                                      path="/a", requests=12 * second),),
                                tcp=(pb.TcpSummary(service="reviews", direction="inbound",
                                                   active=2),)))  # fmt: skip
        obs.report("r2", report(float(second),
                                edge("inbound", "shop", "reviews", "reviews-v2", 10 * second, errors=second),
                                paths=(pb.PathSummary(service="reviews", direction="inbound", method="GET",
                                                      path="/b", requests=10 * second),)))  # fmt: skip
    stat = obs.stat("", 5)
    reviews, legacy = one(stat, "reviews"), one(stat, "legacy")
    # inbound view: both providers' sidecars, the non-meshed caller included
    assert reviews.rps == pytest.approx(22.0) and reviews.meshed == 2 and reviews.instances == 3
    assert reviews.success_rate == pytest.approx(1 - 5 / 110) and reviews.tcp_connections == 2
    # only seen outbound: the callers' view, meshed 0
    assert legacy.rps == pytest.approx(5.0) and legacy.meshed == 0
    assert 50.0 < legacy.latency_p50_ms <= 100.0
    edges = {(e.source_workload, e.destination_service, e.destination_workload): e for e in stat.edges}
    assert set(edges) == {
        ("shop", "reviews", "reviews-v1"),
        ("shop", "reviews", "reviews-v2"),
        ("shop", "legacy", "unknown"),
        ("unknown", "reviews", "reviews-v1"),  # a non-meshed caller, from the provider's inbound view
    }
    assert edges[("shop", "reviews", "reviews-v2")].success_rate == pytest.approx(0.9)
    assert edges[("unknown", "reviews", "reviews-v1")].rps == pytest.approx(2.0)
    # paths: busiest first, each from its service's view
    assert [(p.service, p.path) for p in stat.paths] == [
        ("reviews", "/a"), ("reviews", "/b"), ("legacy", "/old")
    ]  # fmt: skip
    only = obs.stat("legacy", 5)
    assert [s.service for s in only.services] == ["legacy"] and [p.path for p in only.paths] == ["/old"]


def test_a_gone_sidecar_stops_counting_as_meshed_and_its_history_is_dropped_later() -> None:
    clock = Clock()
    obs = MeshObserver(clock)
    obs.connected(pb.Node(id="p1", workload="w", provides=["svc"]))
    for second in range(1, 6):
        clock.now += 1
        obs.report("p1", report(float(second), edge("inbound", "unknown", "svc", "w", 10 * second)))
    obs.disconnected("p1")
    assert obs.sidecars == 0
    s = one(obs.stat("svc", 30), "svc")
    assert s.meshed == 0 and s.rps == pytest.approx(10.0)  # its traffic did happen
    clock.now += DISCONNECTED_KEEP + 1
    assert list(obs.stat("", 30).services) == []
    obs.connected(pb.Node(id="p1", workload="w", provides=["svc"]))  # back: starts from nothing
    assert obs.sidecars == 1 and one(obs.stat("svc", 30), "svc").requests == 0


def test_history_points_are_capped_for_a_sidecar_reporting_fast_for_hours() -> None:
    clock = Clock()
    obs = MeshObserver(clock)
    obs.connected(pb.Node(id="p1", workload="w", provides=["svc"]))
    for tick in range(1, 2 * 3600 * 5):  # every 200 ms for two hours
        clock.now += 0.2
        path = pb.PathSummary(service="svc", direction="inbound", method="GET", path="/", requests=tick)
        obs.report("p1", report(tick * 0.2, edge("inbound", "unknown", "svc", "w", tick), paths=(path,)))
    sidecar = obs._sidecars["p1"]
    assert len(sidecar.recent) <= MAX_RECENT and len(sidecar.old) <= MAX_OLD
    assert one(obs.stat("svc", 30), "svc").rps == pytest.approx(5.0)
    assert one(obs.stat("svc", 300), "svc").rps == pytest.approx(5.0)
    assert obs.stat("svc", 300).paths[0].rps == pytest.approx(5.0)  # over the recent minute only
    assert obs.stat("svc", 300).paths[0].requests == pytest.approx(300, abs=15)
    assert 300 - OLD_STEP <= obs.stat("svc", 300).window_seconds <= 300 + OLD_STEP


def test_info_names_the_version_admin_and_counts() -> None:
    clock = Clock()
    obs = MeshObserver(clock, policy_version=lambda: 42)
    obs.admin_url, obs.registry_embedded = "http://127.0.0.1:9/", True
    obs.connected(pb.Node(id="a"))
    clock.now += 7
    info = obs.info()
    assert info.policy_version == 42 and info.sidecars == 1 and info.registry_embedded
    assert info.admin_url == "http://127.0.0.1:9/" and info.version and info.uptime_seconds == 7.0


def hop(direction: str, start: float, status: int, reason: str = "", workload: str = "w",
        flags: str = "-", upstream: str = "") -> pb.RequestLine:  # fmt: skip
    return pb.RequestLine(direction=direction, start_unix=start, status=status, reason=reason,
                          workload=workload, response_flags=flags, upstream=upstream)  # fmt: skip


def test_verdict_names_the_hop_that_failed_the_request() -> None:
    assert verdict([]).startswith("not found on any sidecar")
    ok = order_hops([hop("inbound", 1.0, 200), hop("outbound", 1.0, 200)])
    assert [h.direction for h in ok] == ["outbound", "inbound"]  # the caller first at the same start
    assert verdict(ok) == "no hop failed it: final status 200"
    # the provider's sidecar failed it; the caller's passed the 503 on
    failed = order_hops([
        hop("inbound", 2.0, 503, "local_app_unavailable", "reviews", "UF", "127.0.0.1:9"),
        hop("outbound", 1.0, 503, "", "shop", "-", "127.0.0.1:7"),
    ])  # fmt: skip
    assert verdict(failed) == (
        "reviews (inbound) failed it: local_app_unavailable (UF), status 503, upstream 127.0.0.1:9"
    )
    # an abort injected on the caller: one hop
    assert verdict([hop("outbound", 1.0, 500, "fault_injected", "shop", "FI")]).startswith(
        "shop (outbound) failed it: fault_injected (FI), status 500"
    )
    # the app itself answered 500: no reason anywhere, the deepest hop that saw it
    app = [hop("outbound", 1.0, 500, workload="shop"), hop("inbound", 1.1, 500, workload="reviews")]
    assert verdict(app).startswith("reviews (inbound) failed it: the upstream answered 500")


def test_a_service_only_its_callers_saw_in_the_window_gets_their_view() -> None:
    clock = Clock()
    obs = MeshObserver(clock)
    obs.connected(pb.Node(id="shop", workload="shop"))
    obs.connected(pb.Node(id="p1", workload="w", provides=["svc"]))  # meshed, nothing reported yet
    for second in range(1, 4):
        clock.now += 1
        obs.report("shop", report(float(second), edge("outbound", "shop", "svc", "w", 10 * second)))
    s = one(obs.stat("svc", 10), "svc")
    assert s.meshed == 1 and s.requests == 30 and s.rps == pytest.approx(10.0)
    obs.report("p1", report(3.0, edge("inbound", "shop", "svc", "w", 27)))
    s = one(obs.stat("svc", 10), "svc")
    assert s.requests == 27  # the providers' view as soon as they report

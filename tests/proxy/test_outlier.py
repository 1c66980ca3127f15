"""Outlier detection: consecutive errors eject an endpoint from the balancers, time brings it back."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexus.config.route_config import OutlierDetection
from plexus.discovery.model import Instance
from plexus.proxy import Cluster, ClusterManager
from plexus.proxy.endpoint import Endpoint
from plexus.proxy.outlier import MAX_EJECTION_TIME, OutlierDetector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _instances(n: int, service: str = "s") -> list[Instance]:
    return [
        Instance(service=service, address=f"10.2.0.{i}:80", version="v1" if i % 2 else "v2")
        for i in range(1, n + 1)
    ]


def _cluster(
    n: int, config: OutlierDetection, lb: str = "round_robin"
) -> tuple[Cluster, OutlierDetector, Clock]:
    clock = Clock()
    cluster = Cluster("s", lb)
    cluster.update(_instances(n))
    cluster.set_traffic_policy(None, config, None, clock)
    assert cluster.outlier is not None
    return cluster, cluster.outlier, clock


def _picked(cluster: Cluster, rounds: int = 200, subset: str | None = None) -> Counter[str]:
    picks = [cluster.pick_subset(subset) for _ in range(rounds)]
    return Counter(p.key for p in picks if p is not None)


def _fail(detector: OutlierDetector, endpoint: Endpoint, times: int, gateway: bool = True) -> None:
    for _ in range(times):
        detector.failure(endpoint, gateway)


CONFIG = OutlierDetection(
    consecutive_errors=5, interval=1.0, base_ejection_time=30.0, max_ejection_percent=10
)


def test_one_bad_host_among_ten_is_ejected_after_five_5xx_and_comes_back() -> None:
    cluster, detector, clock = _cluster(10, CONFIG)
    bad = cluster.endpoints[3]
    _fail(detector, bad, 4, gateway=False)
    assert not bad.ejected and bad.key in _picked(cluster)
    detector.failure(bad, gateway=False)
    assert bad.ejected and bad.ejections == 1 and detector.ejections_total == 1
    assert detector.ejections_consecutive_5xx == 1
    picked = _picked(cluster, 900)
    assert bad.key not in picked and len(picked) == 9
    assert bad.view()["ejected"] is True and bad.view()["healthy"] is False
    # Sweeps before the ejection time keep it out; the first sweep after brings it back.
    for step in (1.0, 10.0, 29.0):
        clock.now = 1000.0 + step
        detector.tick(clock.now)
        assert bad.ejected, step
    clock.now = 1000.0 + 30.5
    detector.tick(clock.now)
    assert not bad.ejected and detector.unejections_total == 1
    assert bad.key in _picked(cluster)


def test_a_success_breaks_the_run() -> None:
    cluster, detector, _ = _cluster(10, CONFIG)
    endpoint = cluster.endpoints[0]
    for _ in range(10):
        _fail(detector, endpoint, 4)
        detector.success(endpoint)
    assert not endpoint.ejected and detector.ejections_total == 0


def test_the_second_ejection_lasts_twice_as_long() -> None:
    cluster, detector, clock = _cluster(10, CONFIG)
    bad = cluster.endpoints[0]
    _fail(detector, bad, 5)
    clock.now += 31.0
    detector.tick(clock.now)
    assert not bad.ejected
    _fail(detector, bad, 5)
    assert bad.ejected and bad.ejections == 2
    ejected_at = clock.now
    clock.now = ejected_at + 59.0
    detector.tick(clock.now)
    assert bad.ejected
    clock.now = ejected_at + 61.0
    detector.tick(clock.now)
    assert not bad.ejected


def test_ejection_time_is_capped() -> None:
    cluster, detector, clock = _cluster(10, CONFIG)
    bad = cluster.endpoints[0]
    bad.ejections = 50  # 50 x 30 s would be 25 minutes
    _fail(detector, bad, 5)
    clock.now += MAX_EJECTION_TIME + 1.0
    detector.tick(clock.now)
    assert not bad.ejected


def test_the_multiplier_goes_down_while_the_endpoint_stays_healthy() -> None:
    config = OutlierDetection(
        consecutive_errors=5, interval=1.0, base_ejection_time=2.0, max_ejection_percent=10
    )
    cluster, detector, clock = _cluster(10, config)
    bad = cluster.endpoints[0]
    _fail(detector, bad, 5)
    _back_after(detector, clock, 2.5)
    _fail(detector, bad, 5)
    assert bad.ejections == 2
    _back_after(detector, clock, 4.5)
    for _ in range(20):
        clock.now += 1.0
        detector.tick(clock.now)
    assert bad.ejections == 0 and not bad.ejected


def _back_after(detector: OutlierDetector, clock: Clock, seconds: float) -> None:
    clock.now += seconds
    detector.tick(clock.now)


def test_sweeps_run_on_their_interval_only() -> None:
    config = OutlierDetection(
        consecutive_errors=5, interval=10.0, base_ejection_time=1.0, max_ejection_percent=10
    )
    cluster, detector, clock = _cluster(10, config)
    bad = cluster.endpoints[0]
    _fail(detector, bad, 5)
    clock.now += 5.0  # the ejection time is over, but the next sweep is 10 s after the config came
    detector.tick(clock.now)
    assert bad.ejected
    clock.now += 5.5
    detector.tick(clock.now)
    assert not bad.ejected


def test_never_more_than_the_cap_but_always_one() -> None:
    cluster, detector, _ = _cluster(10, CONFIG)
    for endpoint in cluster.endpoints[:5]:
        _fail(detector, endpoint, 5)
    assert [e.ejected for e in cluster.endpoints[:5]] == [True, False, False, False, False]
    assert detector.ejections_overflow == 4 and detector.ejected_now == 1
    # 10 % of 5 endpoints is half of one: the first is still ejected (Envoy ejects at least one).
    small, small_detector, _ = _cluster(5, CONFIG)
    _fail(small_detector, small.endpoints[0], 5)
    _fail(small_detector, small.endpoints[1], 5)
    assert small.endpoints[0].ejected and not small.endpoints[1].ejected


@pytest.mark.parametrize(("percent", "cap"), [(30, 3), (50, 5), (100, 10)])
def test_the_cap_follows_max_ejection_percent(percent: int, cap: int) -> None:
    config = OutlierDetection(
        consecutive_errors=5, interval=1.0, base_ejection_time=30.0, max_ejection_percent=percent
    )
    cluster, detector, _ = _cluster(10, config)
    for endpoint in cluster.endpoints:
        _fail(detector, endpoint, 5)
    assert detector.ejected_now == cap


def test_panic_mode_keeps_every_endpoint_when_all_are_ejected() -> None:
    config = OutlierDetection(
        consecutive_errors=5, interval=1.0, base_ejection_time=30.0, max_ejection_percent=100
    )
    cluster, detector, _ = _cluster(4, config)
    for endpoint in cluster.endpoints[:3]:
        _fail(detector, endpoint, 5)
    assert list(_picked(cluster, 40)) == [cluster.endpoints[3].key]
    _fail(detector, cluster.endpoints[3], 5)
    assert all(e.ejected for e in cluster.endpoints)
    assert len(_picked(cluster, 40)) == 4  # all out: all in


def test_subsets_lose_ejected_endpoints_and_panic_on_their_own() -> None:
    config = OutlierDetection(
        consecutive_errors=3, interval=1.0, base_ejection_time=30.0, max_ejection_percent=100
    )
    cluster, detector, _ = _cluster(6, config)
    cluster.set_subsets({"v1": {"version": "v1"}, "v2": {"version": "v2"}})
    v1 = [e for e in cluster.endpoints if e.instance.version == "v1"]
    _fail(detector, v1[0], 3)
    assert set(_picked(cluster, 60, "v1")) == {v1[1].key, v1[2].key}
    assert len(_picked(cluster, 60, "v2")) == 3
    _fail(detector, v1[1], 3)
    _fail(detector, v1[2], 3)
    assert len(_picked(cluster, 60, "v1")) == 3  # the subset's panic mode
    assert len(_picked(cluster, 60)) == 3  # the cluster still has v2's three


def test_gateway_errors_have_their_own_threshold() -> None:
    config = OutlierDetection(
        consecutive_errors=None, consecutive_gateway_errors=3, interval=1.0, max_ejection_percent=100
    )
    cluster, detector, _ = _cluster(4, config)
    a, b = cluster.endpoints[0], cluster.endpoints[1]
    for _ in range(10):
        _fail(detector, a, 2, gateway=True)
        detector.failure(a, gateway=False)  # a 500 breaks the gateway run
    assert not a.ejected
    _fail(detector, b, 3, gateway=True)
    assert b.ejected and detector.ejections_gateway == 1


def test_endpoint_updates_keep_ejected_endpoints_out() -> None:
    cluster, detector, _ = _cluster(10, CONFIG)
    bad = cluster.endpoints[0]
    _fail(detector, bad, 5)
    cluster.update(_instances(11))  # one more instance arrives: the bad one is still out
    picked = _picked(cluster, 1100)
    assert bad.key not in picked and len(picked) == 10
    cluster.update(_instances(11)[1:])  # the bad one leaves the registry
    assert detector.ejected_now == 0


def test_failures_of_removed_or_ejected_endpoints_eject_nothing_more() -> None:
    cluster, detector, _ = _cluster(10, CONFIG)
    bad = cluster.endpoints[0]
    _fail(detector, bad, 5)
    _fail(detector, bad, 50)
    assert bad.ejections == 1 and detector.ejections_total == 1
    gone = cluster.endpoints[1]
    cluster.update(_instances(10)[2:])
    _fail(detector, gone, 10)
    assert not gone.ejected


def test_removing_outlier_detection_returns_every_endpoint() -> None:
    cluster, detector, _ = _cluster(10, CONFIG)
    _fail(detector, cluster.endpoints[0], 5)
    cluster.set_traffic_policy(None, None, None)
    assert cluster.outlier is None and not any(e.ejected for e in cluster.endpoints)
    assert len(_picked(cluster, 100)) == 10


def test_a_changed_config_keeps_the_detector_and_its_ejections() -> None:
    cluster, detector, clock = _cluster(10, CONFIG)
    _fail(detector, cluster.endpoints[0], 5)
    changed = OutlierDetection(
        consecutive_errors=2, interval=1.0, base_ejection_time=1.0, max_ejection_percent=50
    )
    cluster.set_traffic_policy(None, changed, None, clock)
    assert cluster.outlier is detector and cluster.endpoints[0].ejected
    _fail(detector, cluster.endpoints[1], 2)
    assert cluster.endpoints[1].ejected


def test_cluster_manager_ticks_every_detector() -> None:
    clock = Clock()
    clusters = ClusterManager(clock=clock)
    config = OutlierDetection(
        consecutive_errors=5, interval=1.0, base_ejection_time=2.0, max_ejection_percent=50
    )
    clusters.set_traffic_policies({}, {"a": config, "b": config}, {})
    clusters.update("a", _instances(4, "a"))
    clusters.update("b", _instances(4, "b"))
    clusters.update("c", _instances(4, "c"))
    bad = []
    for name in ("a", "b"):
        cluster = clusters.get(name)
        assert cluster is not None and cluster.outlier is not None
        _fail(cluster.outlier, cluster.endpoints[0], 5)
        bad.append(cluster.endpoints[0])
    assert all(e.ejected for e in bad)
    clock.now += 3.0
    clusters.tick(clock.now)
    assert not any(e.ejected for e in bad)
    view = {c["service"]: c for c in clusters.view()}
    assert view["c"]["outlier_detection"] is None
    assert view["a"]["outlier_detection"]["unejections_total"] == 1  # type: ignore[index]


def test_endpoints_carry_their_detector_for_one_test_per_answer() -> None:
    cluster = Cluster("s", "round_robin")
    cluster.update(_instances(3))
    assert all(e.outlier is None for e in cluster.endpoints)
    cluster.set_traffic_policy(None, CONFIG, None)
    detector = cluster.outlier
    assert detector is not None and all(e.outlier is detector for e in cluster.endpoints)
    cluster.update(_instances(4))
    assert cluster.endpoints[3].outlier is detector  # one that arrives later too
    cluster.set_traffic_policy(None, None, None)
    assert all(e.outlier is None for e in cluster.endpoints)


def test_observe_classifies_http_and_grpc_answers() -> None:
    config = OutlierDetection(
        consecutive_errors=None, consecutive_gateway_errors=3, interval=1.0, max_ejection_percent=100
    )
    cluster, detector, _ = _cluster(4, config)
    a, b, c = cluster.endpoints[:3]
    for status in (503, 502, 404, 504, 503, 500, 504, 200):  # a 4xx is a success, a 500 breaks the run
        detector.observe(a, status)
    assert not a.ejected
    for status in (502, 503, 504):
        detector.observe(b, status)
    assert b.ejected
    for code in (14, 4, 14):  # UNAVAILABLE, DEADLINE_EXCEEDED: gateway errors for Envoy too
        detector.observe_grpc(c, code)
    assert c.ejected
    d = cluster.endpoints[3]
    for code in (14, 14, 5, 14, 14, 0):  # NOT_FOUND and OK are successes
        detector.observe_grpc(d, code)
    assert not d.ejected


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 12),
    percent=st.integers(0, 100),
    threshold=st.integers(1, 4),
    events=st.lists(
        st.tuples(st.integers(0, 11), st.sampled_from(["ok", "500", "503", "tick"])), max_size=150
    ),
)
def test_ejections_stay_within_the_cap_and_picks_avoid_ejected_hosts(
    n: int, percent: int, threshold: int, events: list[tuple[int, str]]
) -> None:
    config = OutlierDetection(
        consecutive_errors=threshold, interval=1.0, base_ejection_time=2.0, max_ejection_percent=percent
    )
    cluster, detector, clock = _cluster(n, config)
    cap = max(1, percent * n // 100)  # at least one may always be ejected
    for index, event in events:
        endpoint = cluster.endpoints[index % n]
        if event == "ok":
            detector.success(endpoint)
        elif event == "tick":
            clock.now += 0.7
            detector.tick(clock.now)
        else:
            detector.failure(endpoint, event == "503")
        ejected = [e for e in cluster.endpoints if e.ejected]
        assert len(ejected) <= cap
        picked = _picked(cluster, 2 * n)
        if len(ejected) < n:
            assert not any(cluster.by_key[key].ejected for key in picked)
        else:
            assert len(picked) == n  # panic mode
    clock.now += 1000.0
    detector.tick(clock.now)
    assert not any(e.ejected for e in cluster.endpoints)  # every ejection ends

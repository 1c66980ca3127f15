"""Circuit breaking: connection-pool limits and the retry budget, per cluster, installed from policy."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexus.config.route_config import ConnectionPool, OutlierDetection, RetryBudget
from plexus.discovery.model import Instance
from plexus.proxy import ClusterManager
from plexus.proxy.resilience import CircuitBreaker


def _fill(start: object, n: int) -> list[bool]:
    assert callable(start)
    return [bool(start()) for _ in range(n)]


def test_unlimited_by_default_but_for_the_budget() -> None:
    breaker = CircuitBreaker()
    assert not breaker.limited
    assert all(_fill(breaker.start_request, 10_000))
    assert all(_fill(breaker.start_pending, 10_000))
    assert breaker.max_connections is None and breaker.max_requests_per_connection is None
    assert breaker.connect_timeout is None
    assert breaker.overflows == {"connections": 0, "pending": 0, "requests": 0, "retries": 0}
    # 10,000 requests in flight and pending: 20 % of them may be retries in flight.
    assert sum(_fill(breaker.start_retry, 5000)) == 4000
    assert breaker.budget_exhausted == 1000


def test_max_requests_refuses_the_one_over_and_frees_on_end() -> None:
    breaker = CircuitBreaker(ConnectionPool(max_requests=3))
    assert breaker.limited
    assert _fill(breaker.start_request, 5) == [True, True, True, False, False]
    assert breaker.overflows["requests"] == 2 and breaker.requests == 3
    breaker.end_request()
    assert breaker.start_request() and not breaker.start_request()
    for _ in range(10):
        breaker.end_request()  # more ends than starts never go below zero
    assert breaker.requests == 0


def test_max_pending_limits_waiters() -> None:
    breaker = CircuitBreaker(ConnectionPool(max_pending=2))
    assert _fill(breaker.start_pending, 3) == [True, True, False]
    assert breaker.overflows["pending"] == 1
    breaker.end_pending()
    assert breaker.start_pending()


def test_max_retries_limits_retries_in_flight_before_the_budget() -> None:
    breaker = CircuitBreaker(ConnectionPool(max_retries=1))
    assert breaker.start_retry() and not breaker.start_retry()
    assert breaker.overflows["retries"] == 1 and breaker.budget_exhausted == 0
    breaker.end_retry()
    assert breaker.start_retry()


@pytest.mark.parametrize(
    ("percent", "minimum", "in_flight", "allowed"),
    [
        (20.0, 3, 0, 3),  # nothing in flight: the minimum
        (20.0, 3, 10, 3),  # 20 % of 10 is 2, under the minimum
        (20.0, 3, 50, 10),
        (20.0, 3, 51, 11),  # 10.2 in flight allowed: an 11th may start while 10 are out
        (10.0, 1, 100, 10),
        (50.0, 0, 7, 4),
        (100.0, 0, 5, 5),
    ],
)
def test_budget_arithmetic(percent: float, minimum: int, in_flight: int, allowed: int) -> None:
    breaker = CircuitBreaker(budget=RetryBudget(percent, minimum))
    for _ in range(in_flight):
        assert breaker.start_request()
    results = _fill(breaker.start_retry, allowed + 5)
    assert sum(results) == allowed and results[:allowed] == [True] * allowed
    assert breaker.budget_exhausted == 5
    breaker.end_retry()
    assert breaker.start_retry() is (allowed > 0)


def test_budget_counts_pending_requests_too() -> None:
    breaker = CircuitBreaker(budget=RetryBudget(20.0, 0))
    for _ in range(10):
        breaker.start_request()
        breaker.start_pending()
    assert sum(_fill(breaker.start_retry, 10)) == 4


def test_budget_bounds_extra_load_of_a_failing_upstream() -> None:
    """100 requests in flight, every try fails and wants a retry: each round at most 20 retries go out, so
    the upstream sees about 20 % extra load, not (attempts + 1) times."""
    breaker = CircuitBreaker()
    for _ in range(100):
        breaker.start_request()
    asked = granted = 0
    for _ in range(10):
        round_granted = sum(_fill(breaker.start_retry, 100))
        asked += 100
        granted += round_granted
        assert breaker.retries == round_granted == 20
        for _ in range(round_granted):
            breaker.end_retry()
    assert granted / asked == pytest.approx(0.2)
    assert breaker.budget_exhausted == asked - granted


def test_reconfigure_keeps_counts_in_flight() -> None:
    breaker = CircuitBreaker(ConnectionPool(max_requests=10))
    for _ in range(8):
        breaker.start_request()
    breaker.configure(ConnectionPool(max_requests=5, max_connections=2, connect_timeout=0.3), None)
    assert breaker.requests == 8 and not breaker.start_request()
    assert breaker.max_connections == 2 and breaker.connect_timeout == 0.3
    for _ in range(4):
        breaker.end_request()
    assert breaker.start_request()
    breaker.configure(None, None)
    assert not breaker.limited and breaker.max_requests is None and breaker.start_request()
    breaker.connection_overflow()
    assert breaker.overflows["connections"] == 1
    assert breaker.view()["requests"] == breaker.requests


def _instances(service: str, n: int) -> list[Instance]:
    return [Instance(service=service, address=f"10.1.0.{i}:80") for i in range(1, n + 1)]


def test_cluster_manager_installs_limits_now_and_for_clusters_made_later() -> None:
    clusters = ClusterManager()
    clusters.update("orders", _instances("orders", 3))
    clusters.update("users", _instances("users", 3))
    before = clusters.get("orders")
    assert before is not None
    breaker = before.breaker
    clusters.set_traffic_policies(
        {"orders": ConnectionPool(max_requests=1), "later": ConnectionPool(max_pending=4)},
        {"later": OutlierDetection()},
        {"orders": RetryBudget(50.0, 1)},
    )
    orders, users = clusters.get("orders"), clusters.get("users")
    assert orders is not None and users is not None
    assert orders.breaker is breaker  # changed in place: requests in flight end on the same counters
    assert orders.breaker.max_requests == 1 and orders.breaker.budget_percent == 50.0
    assert orders.outlier is None
    assert not users.breaker.limited and users.breaker.budget_percent == 20.0
    assert clusters.has_outliers
    clusters.update("later", _instances("later", 2))
    later = clusters.get("later")
    assert later is not None and later.breaker.max_pending == 4 and later.outlier is not None
    view = {c["service"]: c for c in clusters.view()}
    assert view["orders"]["circuit_breaker"]["max_requests"] == 1  # type: ignore[index]
    assert view["later"]["outlier_detection"] is not None
    # Left out: back to the defaults.
    clusters.set_traffic_policies({}, {}, {})
    assert not orders.breaker.limited and orders.breaker.budget_percent == 20.0
    assert later.outlier is None and not clusters.has_outliers


def test_metrics_show_limited_clusters_only() -> None:
    clusters = ClusterManager()
    clusters.update("orders", _instances("orders", 3))
    clusters.update("users", _instances("users", 3))
    assert clusters.render_metrics() == ""  # no policy: nothing new in /metrics
    clusters.set_traffic_policies(
        {"orders": ConnectionPool(max_requests=1)}, {"users": OutlierDetection()}, {}
    )
    orders = clusters.get("orders")
    assert orders is not None
    assert orders.breaker.start_request() and not orders.breaker.start_request()
    text = clusters.render_metrics()
    assert 'plexus_upstream_overflow_total{service="orders",limit="requests"} 1' in text
    assert 'plexus_upstream_breaker_requests{service="orders"} 1' in text
    assert 'plexus_outlier_ejections_active{service="users"} 0' in text
    assert 'plexus_outlier_ejections_active{service="orders"}' not in text
    for line in text.splitlines():
        assert line.startswith("#") or line.rsplit(" ", 1)[1].isdigit(), line


OPS = ("request", "pending", "retry")


@settings(max_examples=200, deadline=None)
@given(
    max_requests=st.none() | st.integers(0, 5),
    max_pending=st.none() | st.integers(0, 5),
    max_retries=st.none() | st.integers(0, 5),
    percent=st.floats(1.0, 100.0),
    minimum=st.integers(0, 4),
    steps=st.lists(st.tuples(st.sampled_from(OPS), st.booleans()), max_size=120),
)
def test_counts_never_pass_their_limits(
    max_requests: int | None,
    max_pending: int | None,
    max_retries: int | None,
    percent: float,
    minimum: int,
    steps: list[tuple[str, bool]],
) -> None:
    """Any interleaving of starts and ends: counts stay within 0..limit, a refused start counts nothing,
    and a granted retry was within the budget when it started."""
    pool = ConnectionPool(max_pending=max_pending, max_requests=max_requests, max_retries=max_retries)
    breaker = CircuitBreaker(pool, RetryBudget(percent, minimum))
    held = dict.fromkeys(OPS, 0)
    for op, start in steps:
        if start:
            before = (breaker.requests, breaker.pending, breaker.retries)
            allowance = breaker.retry_allowance()
            ok = getattr(breaker, f"start_{op}")()
            if ok:
                held[op] += 1
                if op == "retry":
                    assert before[2] < allowance
            else:
                assert (breaker.requests, breaker.pending, breaker.retries) == before
        elif held[op]:
            getattr(breaker, f"end_{op}")()
            held[op] -= 1
        assert (breaker.requests, breaker.pending, breaker.retries) == (
            held["request"],
            held["pending"],
            held["retry"],
        )
        assert max_requests is None or breaker.requests <= max_requests
        assert max_pending is None or breaker.pending <= max_pending
        assert max_retries is None or breaker.retries <= max_retries

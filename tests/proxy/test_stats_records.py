"""ServiceStats keeps one record per (series, path): Istio's series, the paths and the service's totals are
sums over the records when read, with every value in the bucket a bisect would give and every bound kept."""

from __future__ import annotations

from bisect import bisect_left

import pytest

from plexus.proxy.stats import (
    DURATION_BUCKETS_MS,
    MAX_PATHS_PER_SERVICE,
    MAX_RECORDS_PER_SERVICE,
    MAX_SERIES_PER_SERVICE,
    OVERFLOW,
    SIZE_BUCKETS_BYTES,
    ServiceStats,
)
from plexus.proxy.telemetry import OUTBOUND, RequestEntry


def _entry(
    peer: str = "p",
    path: str = "/",
    status: int = 200,
    ms: float = 3.0,
    request_bytes: int = 0,
    response_bytes: int = 0,
) -> RequestEntry:
    return RequestEntry(
        OUTBOUND,
        "svc",
        "http",
        "GET",
        path,
        0.0,
        ms,
        status,
        peer_workload=peer,
        request_bytes=request_bytes,
        response_bytes=response_bytes,
    )


def test_series_paths_and_totals_are_sums_over_the_records() -> None:
    stats = ServiceStats("svc", "egress")
    for peer, path, ms, count in (("a", "/x", 2.0, 3), ("a", "/y", 30.0, 2), ("b", "/x", 700.0, 1)):
        for _ in range(count):
            stats.done(_entry(peer, path, ms=ms, request_bytes=5, response_bytes=50))
    series = stats.series
    assert {k: s.count for k, s in series.items()} == {("a", 200, "", "-"): 5, ("b", 200, "", "-"): 1}
    a = series[("a", 200, "", "-")]
    assert a.duration_sum_ms == pytest.approx(66.0) and a.request_bytes == 25 and a.response_bytes == 250
    assert a.duration_buckets[1] == 3 and a.duration_buckets[4] == 2 and sum(a.duration_buckets) == 5
    paths = stats.paths
    assert {k: p.count for k, p in paths.items()} == {("GET", "/x"): 4, ("GET", "/y"): 2}
    assert paths[("GET", "/x")].duration_sum_ms == pytest.approx(706.0)
    assert sum(stats.buckets) == 6 and stats.duration_sum_ms == pytest.approx(766.0)
    assert stats.by_class[2] == 6 and stats.failures == 0


@pytest.mark.parametrize(
    "ms", [0.0, 0.4, 1.0, 1.0001, 4.9, 5.0, 5.0000001, 24.5, 999.2, 999.9999, 1000.0, 1000.5, 59_999.0, 10**6]
)
def test_a_duration_lands_where_bisect_puts_it(ms: float) -> None:
    stats = ServiceStats("svc", "egress")
    stats.done(_entry(ms=ms))
    (series,) = stats.series.values()
    assert series.duration_buckets.index(1) == bisect_left(DURATION_BUCKETS_MS, ms)


@pytest.mark.parametrize(
    "size", [-1, -20_000, 0, 1, 2, 10, 11, 999, 1000, 1001, 16_383, 16_384, 10**7, 10**8]
)
def test_a_size_lands_where_bisect_puts_it(size: int) -> None:
    stats = ServiceStats("svc", "egress")
    stats.done(_entry(request_bytes=size, response_bytes=size))
    (series,) = stats.series.values()
    expected = bisect_left(SIZE_BUCKETS_BYTES, size)
    assert series.request_buckets.index(1) == expected == series.response_buckets.index(1)
    assert series.request_bytes == size == series.response_bytes


def test_paths_past_the_bound_count_as_other_and_nothing_is_lost() -> None:
    stats = ServiceStats("svc", "egress")
    for i in range(MAX_PATHS_PER_SERVICE + 30):
        stats.done(_entry(path=f"/p{i}", status=500 if i % 2 else 200))
    paths = stats.paths
    assert len(paths) == MAX_PATHS_PER_SERVICE + 1 and paths[("", "other")].count == 30
    assert sum(p.count for p in paths.values()) == MAX_PATHS_PER_SERVICE + 30
    assert sum(p.failures for p in paths.values()) == stats.failures == (MAX_PATHS_PER_SERVICE + 30) // 2


def test_combinations_past_the_record_bound_collapse_into_overflow() -> None:
    stats = ServiceStats("svc", "egress")
    peers, paths = MAX_SERIES_PER_SERVICE // 2, MAX_RECORDS_PER_SERVICE // (MAX_SERIES_PER_SERVICE // 2) + 5
    assert paths <= MAX_PATHS_PER_SERVICE  # (both below their own bounds: only the record bound applies)
    for peer in range(peers):
        for path in range(paths):
            stats.done(_entry(peer=f"w{peer}", path=f"/p{path}"))
    assert len(stats._records) <= MAX_RECORDS_PER_SERVICE + 1
    series = stats.series
    assert sum(s.count for s in series.values()) == peers * paths
    assert series[(OVERFLOW, 0, "", OVERFLOW)].count == peers * paths - MAX_RECORDS_PER_SERVICE

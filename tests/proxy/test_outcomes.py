"""The HTTP/1.1 end of a request through its Outcome counts, rings and logs exactly what the general
path (ServiceStats.done with a RequestEntry) does for the same request; failures, taps and exported spans take
the general path; the cache of outcomes stays bounded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from plexus.proxy.access_line import entry_line, format_batch
from plexus.proxy.outcomes import MAX_OUTCOMES, OutcomeKey, outcome_for, request_ended
from plexus.proxy.stats import ServiceStats
from plexus.proxy.telemetry import Telemetry, WireFields, entry_of
from plexus.proxy.tracing import Tracer, ids_from_lines

OFFSET = 1_764_000_000.0


def _stats() -> ServiceStats:
    telemetry = Telemetry("orders-v1", loop_clock_offset=OFFSET)
    telemetry.access_log = []
    return ServiceStats("orders", "ingress", telemetry)


def _key(status: int = 200, reason: str = "", flags: str = "-", path: bytes = b"/orders/42") -> OutcomeKey:
    return (b"GET", path, b"orders", b"wrk/4.2", status, reason, flags, "127.0.0.1:8080", b"web", 1)


def _end(stats: ServiceStats, key: OutcomeKey, lines: bytes, started: float = 100.25) -> None:
    outcome = stats.outcomes.get(key) or outcome_for(stats, key)
    wire: WireFields = (key[2], key[3], lines, None)
    request_ended(stats, outcome, started, 1.23456, 7, 120, wire, False)


def _queued_lines(telemetry: Telemetry) -> list[dict[str, object]]:
    log = telemetry.access_log
    assert log is not None
    return [orjson.loads(line) for line in format_batch(telemetry, log).splitlines()]


def test_the_outcome_path_counts_and_logs_what_the_general_path_does() -> None:
    fast, general = _stats(), _stats()
    lines = Tracer(sample_percent=0).fresh_lines()
    for _ in range(3):
        _end(fast, _key(), lines)
    entry = fast.telemetry.recent[-1]  # the ring's tuple, as an entry
    for _ in range(3):
        general.done(entry)
    assert fast.by_class == general.by_class == [0, 0, 3, 0, 0, 0]
    assert fast.failures == general.failures == 0
    assert _views(fast.series) == _views(general.series)
    assert _views(fast.paths) == _views(general.paths)
    assert fast.buckets == general.buckets and fast.duration_sum_ms == general.duration_sum_ms
    # The entry the ring gives back: every field, the lazy ones from the wire bytes.
    request_id, trace_id, span_id, _ = ids_from_lines(lines)
    assert (entry.direction, entry.service, entry.protocol, entry.method, entry.path) == (
        "inbound",
        "orders",
        "http",
        "GET",
        "/orders/42",
    )
    assert (entry.status, entry.peer_workload, entry.upstream) == (200, "web", "127.0.0.1:8080")
    assert (entry.request_bytes, entry.response_bytes) == (7, 120) and entry.attempts == 1
    assert (entry.duration_ms, entry.start) == (1.23456, 100.25)
    assert (entry.authority, entry.user_agent, entry.request_id, entry.trace_id) == (
        "orders",
        "wrk/4.2",
        request_id,
        trace_id,
    )
    assert entry.span_id == span_id and not entry.failed
    # Its access line: the one the general formatter writes for that entry.
    queued = _queued_lines(fast.telemetry)
    assert len(queued) == 3
    assert queued[0] == orjson.loads(entry_line(entry, fast.telemetry))


def _views(views: Mapping[Any, Any]) -> dict[Any, dict[str, object]]:
    """Series or PathStats views as plain dicts of their counters, to compare."""
    return {key: {name: getattr(view, name) for name in view.__slots__} for key, view in views.items()}


def test_a_failure_takes_the_general_path_and_is_remembered() -> None:
    stats = _stats()
    key = _key(503, "no_healthy_upstream", "UH")
    _end(stats, key, b"")
    assert stats.failures == 1 and stats.by_class[5] == 1
    (failed,) = stats.telemetry.recent_failures
    assert failed.reason == "no_healthy_upstream" and failed.flags == "UH" and failed.failed
    assert stats.telemetry.recent == [failed]  # the same entry in both rings (explain dedupes by identity)
    (line,) = _queued_lines(stats.telemetry)
    assert line["response_flags"] == "UH" and line["request_id"] is None  # refused before its trace began


@pytest.mark.parametrize("sink", ["tap", "spans"])
def test_a_tap_or_an_exported_span_gets_an_entry(sink: str) -> None:
    stats = _stats()
    telemetry = stats.telemetry
    if sink == "tap":
        telemetry.open_tap("t1", "orders")
    else:
        telemetry.exporting_spans = True
    lines = Tracer(sample_percent=100).fresh_lines()
    outcome = outcome_for(stats, _key())
    request_ended(stats, outcome, 100.0, 2.0, 0, 5, (b"orders", None, lines, None), None)
    if sink == "tap":
        got = telemetry.taps["t1"].lines
    else:  # journaled like any other request, its tuple queued: the exporter's thread makes the entry
        (journaled,) = telemetry.journal
        assert not telemetry.ring and len(telemetry.spans) == 1 and telemetry.spans[0] is journaled
        got = [entry_of(item) for item in telemetry.spans]
    assert len(got) == 1 and got[0].sampled and got[0].trace_id == ids_from_lines(lines)[1]
    assert got[0].path == "/orders/42" and got[0].duration_ms == 2.0 and got[0].response_bytes == 5
    assert stats.by_class[2] == 1 and telemetry.access_log is not None and len(telemetry.access_log) == 1


def test_a_sampled_failure_is_exported_once_as_its_entry() -> None:
    stats = _stats()
    telemetry = stats.telemetry
    telemetry.exporting_spans = True
    lines = Tracer(sample_percent=100).fresh_lines()
    outcome = outcome_for(stats, _key(status=503, reason="upstream_reset", flags="UR"))
    request_ended(stats, outcome, 100.0, 2.0, 0, 5, (b"orders", None, lines, None), None)
    (span,) = telemetry.spans  # (the general path queued its entry; the journal's branch did not run)
    assert span is entry_of(span) and span.failed and span.sampled and telemetry.recent_failures[0] is span


def test_an_unsampled_request_queues_no_span_while_spans_are_exported() -> None:
    stats = _stats()
    telemetry = stats.telemetry
    telemetry.exporting_spans = True
    outcome = outcome_for(stats, _key())
    for percent in (0, 100):
        lines = Tracer(sample_percent=percent).fresh_lines()
        request_ended(stats, outcome, 100.0, 2.0, 0, 5, (b"orders", None, lines, None), None)
    assert len(telemetry.spans) == 1 and entry_of(telemetry.spans[0]).sampled
    assert stats.by_class[2] == 2


def test_the_outcome_cache_is_bounded_and_counts_survive_its_reset() -> None:
    stats = _stats()
    lines = Tracer(sample_percent=0).fresh_lines()
    for i in range(MAX_OUTCOMES + 10):
        _end(stats, _key(path=b"/p/%d" % (i % 50)), lines)  # the same 50 ways of ending, again and again
    for i in range(MAX_OUTCOMES + 5):
        _end(stats, (b"GET", b"/x", b"h%d" % i, None, 200, "", "-", "", None, 1), lines)  # new hosts
    assert len(stats.outcomes) <= MAX_OUTCOMES
    assert stats.paths[("GET", "/p/7")].count == len(range(7, MAX_OUTCOMES + 10, 50))
    assert stats.paths[("GET", "/x")].count == MAX_OUTCOMES + 5  # one record, whatever the cache forgot
    assert sum(stats.by_class) == 2 * MAX_OUTCOMES + 15


def _grpc_key(grpc_status: str, status: int = 200, counted: int = 200) -> OutcomeKey:
    head = (
        b"POST",
        b"/shop.Orders/Get",
        b"orders",
        b"grpc-python/1.6",
        status,
        "",
        "-",
        "127.0.0.1:9",
        "shop",
    )
    return (*head, 1, grpc_status, "grpc", counted)


def test_a_grpc_call_counts_and_logs_its_status() -> None:
    stats = _stats()
    stats.direction = "egress"
    outcome = outcome_for(stats, _grpc_key("0"))
    request_ended(stats, outcome, 100.0, 3.0, 12, 40, (b"orders", b"grpc-python/1.6", None, None), False)
    (entry,) = stats.telemetry.recent
    assert (entry.protocol, entry.grpc_status, entry.status, entry.path) == (
        "grpc",
        "0",
        200,
        "/shop.Orders/Get",
    )
    assert not entry.failed and stats.by_class[2] == 1
    (line,) = _queued_lines(stats.telemetry)
    assert line == orjson.loads(entry_line(entry, stats.telemetry))
    assert (line["protocol"], line["grpc_status"], line["request_id"]) == ("HTTP/2", "0", None)


def test_a_grpc_local_reply_counts_as_its_http_status_and_fails() -> None:
    """UNAVAILABLE sent as a trailers-only 200 for a 503 local reply: plexus_requests_total counts a 5xx,
    Istio's series the 200 sent with grpc status 14."""
    stats = _stats()
    key = (*_grpc_key("14", 200, 503)[:5], "no_healthy_upstream", "UH", *_grpc_key("14", 200, 503)[7:])
    request_ended(stats, outcome_for(stats, key), 100.0, 1.0, 0, 0, (None, None, None, None), False)
    assert stats.by_class == [0, 0, 0, 0, 0, 1] and stats.failures == 1
    ((series, counters),) = stats.series.items()
    assert series == ("shop", 200, "14", "UH") and counters.count == 1
    (failed,) = stats.telemetry.recent_failures
    assert (failed.status, failed.grpc_status, failed.reason) == (200, "14", "no_healthy_upstream")
    (line,) = _queued_lines(stats.telemetry)
    assert line["grpc_status"] == "14" and line["response_flags"] == "UH"


def test_the_journal_counts_runs_as_count_into_counts_each_request() -> None:
    """Journaled requests (interleaved outcomes, runs short and long, durations in every bucket, sizes that
    change within a run) end up in the same records as count_into gives them one by one."""
    import random

    from plexus.proxy.outcomes import JOURNAL_FOLD
    from plexus.proxy.stats import DURATION_BUCKETS_MS, count_into

    journaled, reference = _stats(), _stats()
    journaled.telemetry.access_log = reference.telemetry.access_log = None
    keys = [_key(), _key(path=b"/a"), _key(201, path=b"/b")]
    rng = random.Random(5)
    edges = [*DURATION_BUCKETS_MS, 0.0, 70000.0]  # durations exactly on a bound count in its bucket
    wire: WireFields = (b"orders", None, b"", None)
    ended = 0
    for _ in range(200):
        key = keys[rng.randrange(len(keys))]
        size = rng.choice([0, 13, 999, 1000, 1001, 10**7 + 1])
        for _ in range(rng.choice([1, 2, 3, 4, 5, 40, JOURNAL_FOLD + 3])):  # (runs: short and long)
            ms = rng.choice(edges) if rng.random() < 0.3 else rng.random() * 3000.0
            changed = size + (1 if rng.random() < 0.2 else 0)
            outcome = journaled.outcomes.get(key) or outcome_for(journaled, key)
            request_ended(journaled, outcome, 1.0, ms, changed, size, wire, None)
            mirror = reference.outcomes.get(key) or outcome_for(reference, key)
            count_into(mirror.record, ms, changed, size)
            reference.counts_by_class[mirror.status_class] += 1
            ended += 1
    assert journaled.telemetry.journal  # some are still journaled: reading settles them
    assert journaled.by_class == reference.by_class and sum(journaled.by_class) == ended
    assert not journaled.telemetry.journal
    assert _views(journaled.series) == _views(reference.series)
    assert _views(journaled.paths) == _views(reference.paths)
    assert journaled.buckets == reference.buckets
    assert journaled.duration_sum_ms == reference.duration_sum_ms  # (added in the same order)


def test_the_ring_and_the_log_keep_the_order_requests_ended_in() -> None:
    """A failure (the general path) after journaled requests comes after them in the ring and the log;
    a request journaled after it comes after it; nothing is lost or counted twice."""
    stats = _stats()
    telemetry = stats.telemetry
    lines = Tracer(sample_percent=0).fresh_lines()
    _end(stats, _key(), lines, started=1.0)
    _end(stats, _key(), lines, started=2.0)
    _end(stats, _key(503, "no_healthy_upstream", "UH"), b"", started=3.0)
    _end(stats, _key(), lines, started=4.0)
    assert [entry.start for entry in telemetry.recent] == [1.0, 2.0, 3.0, 4.0]
    assert [line["response_code"] for line in _queued_lines(telemetry)] == [200, 200, 503, 200]
    assert stats.by_class == [0, 0, 3, 0, 0, 1] and stats.failures == 1


def test_the_access_log_queue_stays_bounded_when_settled() -> None:
    from plexus.proxy import telemetry as telemetry_module

    stats = _stats()
    telemetry = stats.telemetry
    assert telemetry.access_log is not None
    telemetry.access_log.extend([()] * (telemetry_module.ACCESS_LOG_BUFFER - 2))
    lines = Tracer(sample_percent=0).fresh_lines()
    for _ in range(5):
        _end(stats, _key(), lines)
    telemetry.settle()
    assert len(telemetry.access_log) == telemetry_module.ACCESS_LOG_BUFFER
    assert telemetry.access_log_dropped == 3 and stats.by_class[2] == 5

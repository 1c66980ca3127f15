"""A request's end, counted and logged through what it shares with the requests that ended alike (HTTP/1.1,
HTTP/2 and gRPC; Bolt and Dubbo still build their entries).

A sidecar's requests end in few distinct ways: the same method and path, status, upstream, peer and client
headers, again and again. An ``Outcome`` is one such way, found by one key (``OutcomeKey``) in its
service's ``ServiceStats.outcomes``, and holds all that can be worked out once: the record its
counters go to, whether it counts as failed, its status class, its access-log parts and the text of its
entry's fields. Per request, what is left is a few increments and one tuple (the outcome and the request's
numbers), kept in the recent ring and queued for the access log: the writer formats its line later, off the
hot path (plexus.proxy.access_line.format_batch), and the ring makes it a ``RequestEntry`` only when read
(``Telemetry.recent``).

A request that a sink needs as an entry at once (a failure, for the failures ring and its counters; an open
tap) takes the general path, ``ServiceStats.done``, with the same fields. A sampled request while spans are
exported is journaled like any other, and its tuple is also queued for the exporter, whose thread makes its
entry (``Telemetry.queue_span``): made on the loop, its entry and the early settle it forced cost as much
as fifty other requests. Measured in bench/RESULTS.md (issue 5: the entry, its counters and its line were a
third of an HTTP/1.1 hop's Python; issue 3: the largest block left of a gRPC call's).

Any other request is only *journaled*: its tuple is appended to ``Telemetry.journal``, nothing counted.
``Telemetry.settle`` counts the journal when it holds JOURNAL_FOLD requests and before anything is read (the
counters' and the ring's readers, the access-log writer, and any request that takes the general path, so
the ring and the log keep the order requests ended in): requests that ended alike come in runs, and a run
is counted at once (``Outcome.count``: sums and histogram buckets over the run in C, per run not per
request in Python). The HTTP/1.1 exchange also finds its outcome without a key most of the time: a
connection remembers its last request's signature and outcome (plexus.transport.http_exchange).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from itertools import repeat
from operator import itemgetter
from typing import Any, Final

from plexus.proxy.access_line import PROTOCOL_NAMES, line_tails, request_parts, with_sizes
from plexus.proxy.stats import (
    DURATION_BUCKETS_MS,
    REC_COUNT,
    REC_DURATION,
    REC_DURATION_SUM,
    REC_REQUEST,
    REC_REQUEST_BYTES,
    REC_RESPONSE,
    REC_RESPONSE_BYTES,
    SIZE_BUCKETS_BYTES,
    ServiceStats,
    count_into,
)
from plexus.proxy.telemetry import UNKNOWN, RequestEntry, Telemetry, WireFields
from plexus.proxy.tracing import sampled_in_lines

# Ways of ending remembered per service; past it the cache starts again (a client that invents paths or
# headers costs this sidecar a decode and a formatted part per request, never memory).
MAX_OUTCOMES: Final = 1024
# The methods as their text, without a decode for the usual ones.
_METHOD_TEXT: Final = {
    m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE")
}

# Requests journaled before Telemetry.settle counts them: enough for runs to amortise a run's Python, few
# enough that the counters' lists are still in the CPU's caches.
JOURNAL_FOLD: Final = 256
# A run shorter than this is counted request by request (count_into): for a few, the run's lists and sort
# cost more.
_SHORT_RUN: Final = 4
_DURATION_OF: Final = itemgetter(2)  # a journal tuple's fields (see request_ended)
_REQUEST_BYTES_OF: Final = itemgetter(3)
_RESPONSE_BYTES_OF: Final = itemgetter(4)

# HTTP/1.1: (method, path, Host, User-Agent, status, reason, flags, upstream address, peer, attempts); the
# peer is the chosen instance's workload (outbound: a str) or the x-plexus-caller bytes (inbound), "" or None
# unknown. HTTP/2 and gRPC add (grpc_status, protocol, counted status): the status that plexus_requests_total
# counts a gRPC local reply by (503, 504...), where the entry (Istio's response_code) has the 200 sent.
OutcomeKey = tuple[Any, ...]


class Outcome:
    """One way requests of one service end (see the module's docstring)."""

    __slots__ = (
        "attempts",
        "by_class",
        "direction",
        "failed",
        "flags",
        "grpc_status",
        "method",
        "parts",
        "path",
        "peer",
        "protocol",
        "reason",
        "record",
        "service",
        "sized_parts",
        "sized_request",
        "sized_response",
        "stats",
        "status",
        "status_class",
        "tail",
        "tail_json",
        "telemetry",
        "upstream",
    )

    def __init__(self, stats: ServiceStats, key: OutcomeKey) -> None:
        method, path, host, agent, status, reason, flags, upstream, peer, attempts = key[:10]
        grpc_status, protocol, counted = key[10:] if len(key) > 10 else ("", "http", status)
        self.direction = stats.traffic_direction
        self.service = stats.service
        self.stats = stats
        self.telemetry = stats.telemetry
        self.by_class = stats.counts_by_class  # (the list itself: counted into without a settle)
        self.protocol = protocol
        self.method = (_METHOD_TEXT.get(method) or method.decode("latin-1")) if method else ""
        self.path = path.decode("latin-1") if path else ""
        self.status = status
        self.grpc_status = grpc_status
        self.reason = reason
        self.flags = flags
        self.upstream = upstream
        if isinstance(peer, bytes):
            peer = peer.decode("latin-1")
        self.peer = peer or UNKNOWN
        self.attempts = attempts
        cls = counted // 100
        self.status_class = cls if 0 < cls < 6 else 0
        self.failed = self.entry(0.0, 0.0, 0, 0, None, False).failed
        self.record = stats.record_for(
            (self.peer, status, grpc_status, flags, self.method, self.path), protocol
        )
        workload = stats.telemetry.workload
        self.parts = request_parts(
            method or b"",
            path or b"",
            host,
            agent,
            PROTOCOL_NAMES.get(protocol) or protocol,
            (status, flags, reason, attempts, upstream, self.direction, self.service, workload, self.peer),
        )
        self.tail, self.tail_json = line_tails(grpc_status)
        # The parts with the sizes of the last request (requests that end alike usually have one size).
        self.sized_request = self.sized_response = -1
        self.sized_parts = self.parts

    def parts_sized(self, request_bytes: int, response_bytes: int) -> bytes:
        """The access-log parts followed by these sizes (access_line.with_sizes), kept for the next one."""
        if request_bytes != self.sized_request or response_bytes != self.sized_response:
            self.sized_parts = with_sizes(self.parts, request_bytes, response_bytes)
            self.sized_request = request_bytes
            self.sized_response = response_bytes
        return self.sized_parts

    def count(self, run: list[tuple[Any, ...]]) -> None:
        """Count a run of this outcome's journal tuples (Telemetry.settle): what count_into does for each,
        with the sums and the buckets made over the whole run in C. The durations add in the run's order
        (sum() of floats in CPython 3.11), as count_into's would."""
        n = len(run)
        self.by_class[self.status_class] += n
        record = self.record
        if n < _SHORT_RUN:
            for item in run:
                count_into(record, item[2], item[3], item[4])
            return
        record[REC_COUNT] += n
        durations = list(map(_DURATION_OF, run))
        record[REC_DURATION_SUM] = sum(durations, record[REC_DURATION_SUM])
        # The buckets from the sorted durations: how many are at most each bound (a sort in C costs less per
        # request than a bisect each).
        durations.sort()
        below = 0
        at = REC_DURATION
        for bound in DURATION_BUCKETS_MS:
            upto = bisect_right(durations, bound)
            if upto != below:
                record[at] += upto - below
                below = upto
            at += 1
        if below != n:
            record[at] += n - below  # (+Inf)
        for sizes, total, first in (
            (list(map(_REQUEST_BYTES_OF, run)), REC_REQUEST_BYTES, REC_REQUEST),
            (list(map(_RESPONSE_BYTES_OF, run)), REC_RESPONSE_BYTES, REC_RESPONSE),
        ):
            size = sizes[0]
            if sizes.count(size) == n:  # (a way of ending usually has one size)
                record[total] += size * n
                record[first + bisect_left(SIZE_BUCKETS_BYTES, size)] += n
            else:
                record[total] += sum(sizes)
                for bucket, many in Counter(map(bisect_left, repeat(SIZE_BUCKETS_BYTES), sizes)).items():
                    record[first + bucket] += many

    def entry(
        self,
        started: float,
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
        wire: WireFields | None,
        sampled: bool | None,
    ) -> RequestEntry:
        """A request of this outcome as its RequestEntry (its lazy fields decoded from ``wire`` when read).
        ``sampled`` None: read from the trace lines that ``wire`` holds (an HTTP/1.1 journal tuple's)."""
        if sampled is None:
            sampled = sampled_of(wire)
        entry = RequestEntry(
            self.direction,
            self.service,
            self.protocol,
            self.method,
            self.path,
            started,
            duration_ms,
            self.status,
            grpc_status=self.grpc_status,
            reason=self.reason,
            flags=self.flags,
            request_bytes=request_bytes,
            response_bytes=response_bytes,
            peer_workload=self.peer,
            upstream=self.upstream,
            sampled=sampled,
            attempts=self.attempts,
        )
        entry._lazy = wire
        return entry


def sampled_of(wire: WireFields | None) -> bool:
    """Whether the request that ``wire`` describes is sampled: from its trace lines block, or TraceStart."""
    trace = wire[2] if wire is not None else None
    if isinstance(trace, bytes):
        return sampled_in_lines(trace)
    return trace is not None and trace.sampled


def outcome_for(stats: ServiceStats, key: OutcomeKey) -> Outcome:
    """The outcome of ``key`` in ``stats``, made and remembered the first time (bounded: MAX_OUTCOMES)."""
    outcomes = stats.outcomes
    if len(outcomes) >= MAX_OUTCOMES:
        outcomes.clear()
    outcome = outcomes[key] = Outcome(stats, key)
    return outcome


def request_ended(
    stats: ServiceStats,
    outcome: Outcome,
    started: float,
    duration_ms: float,
    request_bytes: int,
    response_bytes: int,
    wire: WireFields,
    sampled: bool | None,
) -> None:
    """A request ended as ``outcome``: journaled (see the module's docstring), or, when a sink needs its
    entry at once, every count and every sink as ServiceStats.done would do with its entry. ``wire``: the
    Host (:authority) and User-Agent bytes, the trace lines block (or the TraceStart) and the trace headers
    that came in (RequestEntry._lazy). ``sampled``: None when it is to be read from the lines."""
    telemetry = outcome.telemetry
    item = (outcome, started, duration_ms, request_bytes, response_bytes, wire, sampled)
    if outcome.failed or telemetry.tapping:
        ended_at_once(stats, item)
        return
    if telemetry.exporting_spans and (sampled if sampled is not None else sampled_of(wire)):
        telemetry.queue_span(item)  # (its entry is made by the exporter's thread)
    journal(telemetry, item)


def journal(telemetry: Telemetry, item: tuple[Any, ...]) -> None:
    """``item`` (a request_ended tuple) into the journal, settled when it holds JOURNAL_FOLD requests."""
    requests = telemetry.journal
    requests.append(item)
    if len(requests) >= JOURNAL_FOLD:
        telemetry.settle()


def ended_at_once(stats: ServiceStats, item: tuple[Any, ...]) -> None:
    """The general path of request_ended (``item``: its journal tuple): the entry made now, counted and
    handed to every sink (after the journal: ServiceStats.done settles it first)."""
    outcome: Outcome = item[0]
    entry = outcome.entry(*item[1:])  # (its sampled flag read from the trace lines when item[6] is None)
    stats.done(entry, item)
    cls = entry.status // 100
    if outcome.status_class != (cls if 0 < cls < 6 else 0):  # a gRPC local reply (see OutcomeKey)
        by_class = stats.counts_by_class
        by_class[cls if 0 < cls < 6 else 0] -= 1
        by_class[outcome.status_class] += 1

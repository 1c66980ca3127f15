"""An HTTP/1.1 request's end, counted and logged through what it shares with the requests that ended alike.

A sidecar's requests end in few distinct ways: the same method and path, status, upstream, peer and client
headers, again and again. An ``Http1Outcome`` is one such way, found by one key (``outcome_key``'s fields)
in its service's ``ServiceStats.http1_outcomes``, and holds all that can be worked out once: the record its
counters go to, whether it counts as failed, its status class, its access-log parts and the text of its
entry's fields. Per request, what is left is numbers: a few increments, the line's numbers and ids, and a
tuple in the recent ring that becomes a ``RequestEntry`` only when read (``Telemetry.recent``).

A request that a sink needs as an entry at once (a failure, for the failures ring and its counters; an open
tap; a sampled span while spans are exported) takes the general path, ``ServiceStats.done``, with the same
fields. Measured in bench/RESULTS.md (issue 5: the entry, its counters and its line were a third of an
HTTP/1.1 hop's Python).
"""

from __future__ import annotations

from typing import Final

from plexus.proxy.access_line import http1_parts, with_sizes
from plexus.proxy.stats import ServiceStats, count_into
from plexus.proxy.telemetry import UNKNOWN, RequestEntry, WireFields

# Ways of ending remembered per service; past it the cache starts again (a client that invents paths or
# headers costs this sidecar a decode and a formatted part per request, never memory).
MAX_OUTCOMES: Final = 1024
# The methods as their text, without a decode for the usual ones.
_METHOD_TEXT: Final = {
    m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE")
}

# (method, path, Host, User-Agent, status, reason, flags, upstream address, peer, attempts); the peer is the
# chosen instance's workload (outbound: a str) or the x-plexus-caller bytes (inbound), "" or None unknown.
OutcomeKey = tuple[bytes, bytes, bytes | None, bytes | None, int, str, str, str, str | bytes | None, int]


class Http1Outcome:
    """One way HTTP/1.1 requests of one service end (see the module's docstring)."""

    __slots__ = (
        "attempts",
        "direction",
        "failed",
        "flags",
        "method",
        "parts",
        "path",
        "peer",
        "reason",
        "record",
        "service",
        "sized_parts",
        "sized_request",
        "sized_response",
        "status",
        "status_class",
        "upstream",
    )

    def __init__(self, stats: ServiceStats, key: OutcomeKey) -> None:
        method, path, host, agent, status, reason, flags, upstream, peer, attempts = key
        self.direction = stats.traffic_direction
        self.service = stats.service
        self.method = _METHOD_TEXT.get(method) or method.decode("latin-1")
        self.path = path.decode("latin-1")
        self.status = status
        self.reason = reason
        self.flags = flags
        self.upstream = upstream
        if isinstance(peer, bytes):
            peer = peer.decode("latin-1")
        self.peer = peer or UNKNOWN
        self.attempts = attempts
        cls = status // 100
        self.status_class = cls if 0 < cls < 6 else 0
        self.failed = self.entry(0.0, 0.0, 0, 0, None, False).failed
        self.record = stats.record_for((self.peer, status, "", flags, self.method, self.path), "http")
        workload = stats.telemetry.workload
        self.parts = http1_parts(
            method,
            path,
            host,
            agent,
            (status, flags, reason, attempts, upstream, self.direction, self.service, workload, self.peer),
        )
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

    def entry(
        self,
        started: float,
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
        wire: WireFields | None,
        sampled: bool,
    ) -> RequestEntry:
        """A request of this outcome as its RequestEntry (its lazy fields decoded from ``wire`` when read)."""
        entry = RequestEntry(
            self.direction,
            self.service,
            "http",
            self.method,
            self.path,
            started,
            duration_ms,
            self.status,
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


def outcome_for(stats: ServiceStats, key: OutcomeKey) -> Http1Outcome:
    """The outcome of ``key`` in ``stats``, made and remembered the first time (bounded: MAX_OUTCOMES)."""
    outcomes = stats.http1_outcomes
    if len(outcomes) >= MAX_OUTCOMES:
        outcomes.clear()
    outcome = outcomes[key] = Http1Outcome(stats, key)
    return outcome


def http1_ended(
    stats: ServiceStats,
    outcome: Http1Outcome,
    started: float,
    duration_ms: float,
    request_bytes: int,
    response_bytes: int,
    wire: WireFields,
    sampled: bool,
) -> None:
    """An HTTP/1.1 request ended as ``outcome``: every count and every sink, as ServiceStats.done would do
    with its entry. ``wire``: the Host and User-Agent bytes, the trace lines block (or the TraceStart) and
    the trace headers that came in (RequestEntry._lazy)."""
    telemetry = stats.telemetry
    item = (outcome, started, duration_ms, request_bytes, response_bytes, wire, sampled)
    if outcome.failed or telemetry.tapping or (sampled and telemetry.exporting_spans):
        stats.done(outcome.entry(*item[1:]), item)
        return
    stats.by_class[outcome.status_class] += 1
    count_into(outcome.record, duration_ms, request_bytes, response_bytes)
    telemetry.ring.append(item)
    if telemetry.access_log is not None:
        telemetry.queue_line(item)  # (format_batch of plexus.proxy.access_line makes its line, later)

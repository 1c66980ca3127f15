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
tap; a sampled span while spans are exported) takes the general path, ``ServiceStats.done``, with the same
fields. Measured in bench/RESULTS.md (issue 5: the entry, its counters and its line were a third of an
HTTP/1.1 hop's Python; issue 3: the largest block left of a gRPC call's).
"""

from __future__ import annotations

from typing import Any, Final

from plexus.proxy.access_line import PROTOCOL_NAMES, line_tails, request_parts, with_sizes
from plexus.proxy.stats import ServiceStats, count_into
from plexus.proxy.telemetry import UNKNOWN, RequestEntry, WireFields

# Ways of ending remembered per service; past it the cache starts again (a client that invents paths or
# headers costs this sidecar a decode and a formatted part per request, never memory).
MAX_OUTCOMES: Final = 1024
# The methods as their text, without a decode for the usual ones.
_METHOD_TEXT: Final = {
    m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE")
}

# HTTP/1.1: (method, path, Host, User-Agent, status, reason, flags, upstream address, peer, attempts); the
# peer is the chosen instance's workload (outbound: a str) or the x-plexus-caller bytes (inbound), "" or None
# unknown. HTTP/2 and gRPC add (grpc_status, protocol, counted status): the status that plexus_requests_total
# counts a gRPC local reply by (503, 504...), where the entry (Istio's response_code) has the 200 sent.
OutcomeKey = tuple[Any, ...]


class Outcome:
    """One way requests of one service end (see the module's docstring)."""

    __slots__ = (
        "attempts",
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
        "status",
        "status_class",
        "tail",
        "tail_json",
        "upstream",
    )

    def __init__(self, stats: ServiceStats, key: OutcomeKey) -> None:
        method, path, host, agent, status, reason, flags, upstream, peer, attempts = key[:10]
        grpc_status, protocol, counted = key[10:] if len(key) > 10 else ("", "http", status)
        self.direction = stats.traffic_direction
        self.service = stats.service
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
    sampled: bool,
) -> None:
    """A request ended as ``outcome``: every count and every sink, as ServiceStats.done would do with its
    entry. ``wire``: the Host (:authority) and User-Agent bytes, the trace lines block (or the TraceStart)
    and the trace headers that came in (RequestEntry._lazy)."""
    telemetry = stats.telemetry
    item = (outcome, started, duration_ms, request_bytes, response_bytes, wire, sampled)
    if outcome.failed or telemetry.tapping or (sampled and telemetry.exporting_spans):
        entry = outcome.entry(*item[1:])
        stats.done(entry, item)
        cls = entry.status // 100
        if outcome.status_class != (cls if 0 < cls < 6 else 0):  # a gRPC local reply (see OutcomeKey)
            stats.by_class[cls if 0 < cls < 6 else 0] -= 1
            stats.by_class[outcome.status_class] += 1
        return
    stats.by_class[outcome.status_class] += 1
    count_into(outcome.record, duration_ms, request_bytes, response_bytes)
    telemetry.ring.append(item)
    if telemetry.access_log is not None:
        telemetry.queue_line(item)  # (format_batch of plexus.proxy.access_line makes its line, later)

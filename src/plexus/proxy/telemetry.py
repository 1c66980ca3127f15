"""What every transport reports when a request ends, and where it goes: Istio's metrics, the recent-requests
ring (``plexus explain``), live taps (``plexus tap``), the access-log queue and sampled spans.

Sans-IO: this module only fills counters and in-memory queues. Writers that drain the queues (the access-log
file, the span exporter, the control-plane reports and tap lines) live in ``plexus.sidecar`` and run off the
hot path, on timers.

When a request ends (after the response was written, or the local reply), its transport reports it on its
Route's stats: HTTP/1.1, HTTP/2 and gRPC through the way it ended (``plexus.proxy.outcomes``: one key, a
``RequestEntry`` only when a sink needs one), Bolt and Dubbo with a ``RequestEntry`` to ``ServiceStats.done``
(``plexus.proxy.stats``). Cost budget for all of it: a few microseconds per request (issue 5 asks the
HTTP/1.1 path to keep >= 85% of its requests per core with metrics, 1% tracing and access logs on).

Words, as Istio uses them: a sidecar's *outbound* (egress) side reports as ``reporter="source"``, its
*inbound* (ingress) side as ``reporter="destination"``. ``peer_workload`` is the workload on the other side:
on outbound the chosen upstream instance's workload (``Instance.workload``, "unknown" for a non-meshed app);
on inbound the caller's (the ``x-plexus-caller`` header a consumer sidecar adds, "unknown" without one).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from itertools import groupby
from operator import itemgetter
from typing import Any, Final

from plexus.core import reasons
from plexus.proxy.tracing import Tracer, TraceStart, ids_from_lines

INBOUND: Final = "inbound"
OUTBOUND: Final = "outbound"
UNKNOWN: Final = "unknown"  # Istio's value for a label it cannot know (no peer metadata, no mTLS)
NO_FLAGS: Final = "-"  # Envoy's response_flags when nothing went wrong

# Plexus reason codes -> Envoy's response flags (the short form Istio puts in the response_flags label and
# Envoy in access logs). A reason without an Envoy equivalent keeps Plexus's own short code ("-" never).
RESPONSE_FLAG_FOR: Final[dict[str, str]] = {
    reasons.NO_HEALTHY_UPSTREAM: "UH",
    reasons.UNKNOWN_SERVICE: "NR",
    reasons.NO_ROUTE: "NR",
    reasons.UPSTREAM_CONNECT_FAILED: "UF",
    reasons.UPSTREAM_CONNECT_TIMEOUT: "UF",
    reasons.UPSTREAM_REQUEST_TIMEOUT: "UT",
    reasons.UPSTREAM_PER_TRY_TIMEOUT: "UT",
    reasons.UPSTREAM_RESET: "UC",
    reasons.UPSTREAM_PROTOCOL_ERROR: "UPE",
    reasons.LOCAL_APP_UNAVAILABLE: "UF",
    reasons.DOWNSTREAM_PROTOCOL_ERROR: "DPE",
    reasons.REQUEST_HEADERS_TOO_LARGE: "DPE",
    reasons.REQUEST_BODY_TOO_LARGE: "DPE",
    reasons.NOT_IMPLEMENTED: "DPE",
    reasons.UPSTREAM_OVERFLOW: "UO",
    reasons.FAULT_INJECTED: "FI",
    reasons.RATE_LIMITED: "RL",
    reasons.LOAD_SHED: "RL",
    reasons.RETRY_BUDGET_EXHAUSTED: "URX",
}
DOWNSTREAM_DISCONNECT: Final = "DC"  # the client went away before the response ended (no reason code)


def response_flag(reason: str) -> str:
    """Envoy's response flag for a Plexus reason code ("" -> "-")."""
    if not reason:
        return NO_FLAGS
    return RESPONSE_FLAG_FOR.get(reason, reason)


# Entries kept for `plexus explain`. Every request lands in a short ring (also what tests and debugging read);
# failed ones (RequestEntry.failed: what explain is for) also in a longer one, so a failure is remembered
# long after the successes around it. Holding thousands of every request's entries made the data path
# slower (each request's objects outlived the CPU caches) while remembering about a second of traffic.
RECENT_REQUESTS: Final = 64
RECENT_FAILURES: Final = 4096  # (~1 MB at most)
_OUTCOME_OF: Final = itemgetter(0)  # a journal tuple's Outcome (plexus.proxy.outcomes)
TAP_BUFFER: Final = 1000  # tap lines held per tap between two flushes; more are counted as dropped
SPAN_BUFFER: Final = 10_000  # sampled spans held between two exports; more are dropped (and counted)


class LazyField:
    """A RequestEntry field read through its slot ``_NAME``, filled from the entry's ``_lazy`` wire fields on
    the first read of any lazy field (fill_from_wire); set like a plain attribute."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, entry: RequestEntry, owner: type | None = None) -> str:
        lazy = entry._lazy
        if lazy is not None:
            entry._lazy = None
            fill_from_wire(entry, lazy)
        value: str = getattr(entry, self.slot)
        return value

    def __set__(self, entry: RequestEntry, value: str) -> None:
        setattr(entry, self.slot, value)


# What a transport leaves for the lazy fields: the Host (:authority) and User-Agent bytes; the trace context
# (tracing's TraceStart, or the lines block Tracer.fresh_lines/follow_lines wrote); and the trace that came in
# (HTTP/1.1, whose followed traceparent names the parent span): its headers, or the block of lines they came
# in (RequestHead.trace_block).
WireFields = tuple[
    bytes | None, bytes | None, "TraceStart | bytes | None", "dict[bytes, bytes] | bytes | None"
]


def fill_from_wire(entry: RequestEntry, wire: WireFields) -> None:
    """Decode the lazy fields from what the transport kept (RequestEntry._lazy)."""
    authority, agent, trace, incoming = wire
    entry._authority = authority.decode("latin-1") if authority else ""
    entry._user_agent = agent.decode("latin-1") if agent else ""
    if not trace:  # none (refused before it started: no lines either)
        entry._request_id = entry._trace_id = entry._span_id = entry._parent_span_id = ""
    elif isinstance(trace, bytes):
        entry._request_id, entry._trace_id, span_id, _ = ids_from_lines(trace)
        # (follow_lines checked the incoming traceparent: its parent span id is at a fixed place, in its
        # headers or at the end of its block, "...-SPAN-FLAGS\r\n")
        if isinstance(incoming, bytes):
            parent_span_id = incoming[-21:-5].decode() if incoming else ""
        else:
            parent = incoming.get(b"traceparent") if incoming is not None else None
            parent_span_id = parent[36:52].decode() if parent is not None else ""
        entry._parent_span_id = parent_span_id
        # An unsampled request that follow_lines passed through forwards the parent's span: this hop has none.
        entry._span_id = "" if span_id == parent_span_id else span_id
    else:
        entry._request_id = trace.request_id
        entry._trace_id = trace.trace_id
        entry._span_id = trace.span_id
        entry._parent_span_id = trace.parent_span_id


class RequestEntry:
    """One request as one hop of one sidecar saw it: built when it ends (Bolt, Dubbo), or from its outcome's
    ring tuple only when a sink reads it (HTTP/1.1, HTTP/2, gRPC: plexus.proxy.outcomes).

    ``start`` is the loop clock (``loop.time()``) when the request's head arrived; ``Telemetry.wall(start)``
    turns it into Unix time without a system call. ``status``: the HTTP status sent downstream (gRPC: the
    HTTP status, 200 even for errors; Bolt/Dubbo: the HTTP-like status the RPC proxy maps their status to);
    0 when no response was given (the client went away). ``grpc_status``: "" unless gRPC. ``reason``: the
    Plexus reason code when this hop failed or limited the request ("" otherwise); ``flags``: Envoy's response
    flags (``response_flag(reason)``, or "DC"). ``upstream``: the address the last attempt went to ("" when
    none). ``trace_id``/``span_id``/``parent_span_id``: "" when tracing did not see the request; ``sampled``:
    whether a span is exported for it.
    """

    __slots__ = (
        "_authority",
        "_lazy",
        "_parent_span_id",
        "_request_id",
        "_span_id",
        "_trace_id",
        "_user_agent",
        "attempts",
        "direction",
        "duration_ms",
        "flags",
        "grpc_status",
        "http_version",
        "method",
        "path",
        "peer_workload",
        "protocol",
        "reason",
        "request_bytes",
        "response_bytes",
        "sampled",
        "service",
        "start",
        "status",
        "upstream",
    )

    def __init__(
        self,
        direction: str,
        service: str,
        protocol: str,
        method: str,
        path: str,
        start: float,
        duration_ms: float,
        status: int,
        *,
        grpc_status: str = "",
        reason: str = "",
        flags: str = NO_FLAGS,
        request_bytes: int = 0,
        response_bytes: int = 0,
        peer_workload: str = UNKNOWN,
        upstream: str = "",
        request_id: str = "",
        authority: str = "",
        user_agent: str = "",
        trace_id: str = "",
        span_id: str = "",
        parent_span_id: str = "",
        sampled: bool = False,
        attempts: int = 1,
        http_version: str = "",
    ) -> None:
        self.direction = direction
        self.service = service
        # "http" | "grpc" | "bolt" | "dubbo" (Istio's request_protocol values + RPC); "tcp": a TCP
        # connection's access-log entry (plexus.transport.tcp_proxy)
        self.protocol = protocol
        self.method = method  # HTTP verb; gRPC/Bolt/Dubbo: the RPC method
        self.path = path  # HTTP path; gRPC: /pkg.Service/Method; Bolt/Dubbo: the service interface
        self.start = start
        self.duration_ms = duration_ms
        self.status = status
        self.grpc_status = grpc_status
        self.reason = reason
        self.flags = flags
        self.request_bytes = request_bytes
        self.response_bytes = response_bytes
        self.peer_workload = peer_workload
        self.upstream = upstream
        self._request_id = request_id
        self._authority = authority
        self._user_agent = user_agent
        self._trace_id = trace_id
        self._span_id = span_id
        self._parent_span_id = parent_span_id
        self.sampled = sampled
        self.attempts = attempts
        self._lazy: WireFields | None = None
        # "2" when the request came over HTTP/2 (plain HTTP on an h2c listener): the access log's protocol
        # says HTTP/2. "" = the protocol's usual wire: HTTP/1.1 for "http", HTTP/2 for "grpc".
        self.http_version = http_version

    # The fields a transport may leave to ``_lazy`` (a WireFields) because they cost a decode per request
    # (authority, user agent, the trace ids): fill_from_wire sets them all on the first read of one, which
    # happens in the sinks' writers, off the hot path. LazyField on these six only: the other fields stay
    # plain slots, read at full speed on the hot path (ServiceStats.done).
    authority = LazyField()
    user_agent = LazyField()
    request_id = LazyField()
    trace_id = LazyField()
    span_id = LazyField()
    parent_span_id = LazyField()

    @property
    def failed(self) -> bool:
        """What `plexus stat` counts against success: 5xx, no response, a gRPC error, a local reply."""
        return (
            self.status >= 500
            or self.status == 0
            or (self.grpc_status not in ("", "0"))
            or (self.reason != "" and self.reason != reasons.RETRY_BUDGET_EXHAUSTED)
        )


# A request as the sinks' queues hold it: its entry, or (journaled: plexus.proxy.outcomes) its journal tuple.
Queued = RequestEntry | tuple[Any, ...]


def entry_of(item: Queued) -> RequestEntry:
    """A queued request as its entry: an entry as is, a journal tuple (plexus.proxy.outcomes) through its
    outcome, its lazy fields decoded when read. (Only reads: safe in the span exporter's thread.)"""
    if isinstance(item, RequestEntry):
        return item
    entry: RequestEntry = item[0].entry(*item[1:])
    return entry


class Tap:
    """One live `plexus tap`: entries of ``service`` ("" = every service) wait here for the next flush."""

    __slots__ = ("dropped", "lines", "service", "tap_id")

    def __init__(self, tap_id: str, service: str) -> None:
        self.tap_id = tap_id
        self.service = service
        self.lines: list[RequestEntry] = []
        self.dropped = 0


class Telemetry:
    """One sidecar's per-request sinks besides the counters. Owned by the data plane (``DataPlaneStats``).

    The queues are drained by writers in ``plexus.sidecar`` (access log, span export, tap lines); every
    queue is bounded so a stuck writer costs memory that is capped, never the data path.
    """

    # (slots: read per request, from Python and from plexus.core.speedups.journal_end, by offset)
    __slots__ = (
        "access_log",
        "access_log_dropped",
        "access_log_failed",
        "access_log_full",
        "access_log_written",
        "exporting_spans",
        "journal",
        "loop_clock_offset",
        "namespace",
        "recent_failures",
        "ring",
        "spans",
        "spans_dropped",
        "spans_exported",
        "spans_failed",
        "tap_dropped",
        "tapping",
        "taps",
        "tracer",
        "workload",
    )

    def __init__(
        self,
        workload: str = "",
        namespace: str = "default",
        *,
        loop_clock_offset: float = 0.0,
        tracer: Tracer | None = None,
    ) -> None:
        self.workload = workload or UNKNOWN
        self.namespace = namespace or "default"
        # Every transport starts a request's trace context here (ids and sampling; see plexus.proxy.tracing).
        self.tracer = tracer if tracer is not None else Tracer()
        # loop.time() + offset = Unix time; set once when the loop starts (uvloop's clock is monotonic).
        self.loop_clock_offset = loop_clock_offset
        # The short ring: RequestEntry objects, or an HTTP/1.1 request's (outcome, numbers...) tuple that
        # becomes one only when read (``recent``; plexus.proxy.outcomes says why).
        self.ring: deque[Queued] = deque(maxlen=RECENT_REQUESTS)
        # HTTP/1.1, HTTP/2 and gRPC requests that ended as their outcome's tuple, not yet counted nor handed
        # to the ring and the access log (``settle``; plexus.proxy.outcomes says why).
        self.journal: list[tuple[Any, ...]] = []
        self.recent_failures: deque[RequestEntry] = deque(maxlen=RECENT_FAILURES)
        # A list while an access log is configured, of what the writer formats (plexus.proxy.access_line's
        # format_batch): entries, or HTTP/1.1 requests as their ring tuples (plexus.proxy.outcomes).
        self.access_log: list[Queued] | None = None
        # Called once when the queue reaches ACCESS_LOG_BATCH (the writer schedules a flush then).
        self.access_log_full: Callable[[], None] | None = None
        self.taps: dict[str, Tap] = {}
        self.tapping = False  # fast test on the hot path: any tap open
        self.spans: list[Queued] = []
        # Sampled requests are queued only while a span exporter drains them (--trace-export): without one
        # the sampling decision still travels to the next hop, but nothing is kept here. A request that
        # was only journaled is queued as its journal tuple (``entry_of`` makes its entry in the exporter's
        # thread), so a sampled request costs the loop no more than any other.
        self.exporting_spans = False
        # What the writers did (plexus_telemetry_* families): dropped = the queue was full; failed = the
        # writer could not write or export them; written/exported = delivered.
        self.spans_dropped = 0
        self.spans_failed = 0
        self.spans_exported = 0
        self.access_log_dropped = 0
        self.access_log_failed = 0
        self.access_log_written = 0
        self.tap_dropped = 0

    def settle(self) -> None:
        """Count the journal's requests (each run of one outcome at once: ``Outcome.count``), then hand them
        to the ring and the access log, in the order they ended. Every reader of the counters, the ring or
        the log calls this first."""
        journal = self.journal
        if not journal:
            return
        self.journal = []
        for outcome, run in groupby(journal, _OUTCOME_OF):
            outcome.count(list(run))
        self.ring.extend(journal)
        log = self.access_log
        if log is not None:
            queued = len(log)
            room = ACCESS_LOG_BUFFER - queued
            if room >= len(journal):
                log.extend(journal)
            else:
                log.extend(journal[: max(room, 0)])
                self.access_log_dropped += len(journal) - max(room, 0)
            if queued <= ACCESS_LOG_BATCH < len(log) and self.access_log_full is not None:
                self.access_log_full()

    @property
    def recent(self) -> list[RequestEntry]:
        """The short ring's requests as entries, oldest first."""
        self.settle()
        return [entry_of(item) for item in self.ring]

    def set_clock(self, loop_time: float) -> None:
        """Call once from the loop: ``loop_time`` is ``loop.time()`` now."""
        self.loop_clock_offset = time.time() - loop_time

    def wall(self, loop_time: float) -> float:
        return loop_time + self.loop_clock_offset

    def observe(
        self, entry: RequestEntry, failed: bool | None = None, logged: tuple[Any, ...] | None = None
    ) -> None:
        """Every sink but the counters (``ServiceStats.done`` calls this after counting, with ``failed``:
        ``entry.failed``, already known there). ``logged``: what the access log queues instead of the entry
        (an HTTP/1.1 request's ring tuple, plexus.proxy.outcomes)."""
        if self.journal:  # (the requests that ended before this one first: the ring and the log keep order)
            self.settle()
        self.ring.append(entry)
        if failed or (failed is None and entry.failed):
            self.recent_failures.append(entry)
        if self.access_log is not None:
            self.queue_line(entry if logged is None else logged)
        if self.tapping:
            self.tap(entry)
        if entry.sampled and self.exporting_spans:
            self.queue_span(entry)

    def queue_line(self, item: Queued) -> None:
        """One request for the access-log writer (bounded), while an access log is configured."""
        log = self.access_log
        if log is None:
            return
        queued = len(log)
        if queued < ACCESS_LOG_BUFFER:
            log.append(item)
            if queued == ACCESS_LOG_BATCH and self.access_log_full is not None:
                self.access_log_full()
        else:
            self.access_log_dropped += 1

    def queue_span(self, entry: Queued) -> None:
        """A sampled request for the span exporter (bounded): its entry, or its journal tuple."""
        if len(self.spans) < SPAN_BUFFER:
            self.spans.append(entry)
        else:
            self.spans_dropped += 1

    def tap(self, entry: RequestEntry) -> None:
        """An entry for every open tap of its service (bounded per tap)."""
        for tap in self.taps.values():
            if tap.service and tap.service != entry.service:
                continue
            if len(tap.lines) < TAP_BUFFER:
                tap.lines.append(entry)
            else:
                tap.dropped += 1
                self.tap_dropped += 1

    def open_tap(self, tap_id: str, service: str) -> None:
        self.taps[tap_id] = Tap(tap_id, service)
        self.tapping = True

    def close_tap(self, tap_id: str) -> None:
        self.taps.pop(tap_id, None)
        self.tapping = bool(self.taps)

    def find(self, request_id: str) -> list[RequestEntry]:
        """The recent entries of one request (every attempt and direction this sidecar saw), oldest first:
        its failed ones from the longer ring, the rest while the short ring still holds them."""
        recent = [e for e in self.recent if e.request_id == request_id]
        # A failure the short ring no longer holds ended before everything in it: it goes first.
        older = [
            e for e in self.recent_failures if e.request_id == request_id and not any(e is r for r in recent)
        ]
        return older + recent


ACCESS_LOG_BUFFER: Final = 50_000  # entries waiting for the writer; more are dropped and counted
# Lines a busy sidecar writes at once, before the writer's timer comes: ~80 KB, so the lines are written while
# they are still in the CPU's caches (at 10,000 requests a second the timer's 0.1 s holds a thousand).
ACCESS_LOG_BATCH: Final = 128

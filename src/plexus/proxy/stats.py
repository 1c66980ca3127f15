"""Data-plane counters: plain ints and fixed-bucket histograms, rendered as Prometheus text on demand."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from plexus.proxy.telemetry import (
    INBOUND,
    NO_FLAGS,
    OUTBOUND,
    UNKNOWN,
    RequestEntry,
    Telemetry,
)

if TYPE_CHECKING:
    from plexus.proxy.outcomes import Outcome

# Request duration buckets in milliseconds (Istio's istio_request_duration_milliseconds buckets).
DURATION_BUCKETS_MS: Final = (
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
)


# Request and response size buckets in bytes (istio_request_bytes / istio_response_bytes histograms).
SIZE_BUCKETS_BYTES: Final = (1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0)


MAX_LABEL_SETS: Final = 1000  # distinct (reason, service) pairs kept before the rest count as "other"
# Istio series (peer workload, response code, gRPC status, flags) kept per service and direction; past this
# the peer and code of new combinations collapse into one "overflow" series, so a caller that invents
# workload names or status codes cannot grow the sidecar's memory or the scrape without bound.
MAX_SERIES_PER_SERVICE: Final = 200
OVERFLOW: Final = "overflow"
# (method, path) pairs counted per service for `plexus top`; the rest count under path "other".
MAX_PATHS_PER_SERVICE: Final = 100

# Each (series, path) combination of a service is one flat list of counters, a *record*: one lookup and a few
# list increments per request. Istio's series, the per-path figures and the service's totals are sums over
# records, made when read (a scrape, a report: once a second), not per request.
REC_COUNT: Final = 0
REC_FAILURES: Final = 1  # RequestEntry.failed
REC_DURATION_SUM: Final = 2  # milliseconds
REC_REQUEST_BYTES: Final = 3
REC_RESPONSE_BYTES: Final = 4
REC_DURATION: Final = 5  # the duration histogram's buckets start here (+Inf last)
REC_REQUEST: Final = REC_DURATION + len(DURATION_BUCKETS_MS) + 1  # the request size histogram's
REC_RESPONSE: Final = REC_REQUEST + len(SIZE_BUCKETS_BYTES) + 1  # the response size histogram's
REC_SIZE: Final = REC_RESPONSE + len(SIZE_BUCKETS_BYTES) + 1
# Records kept per service and direction at most: past it, new combinations count under the overflow series
# and the "other" path (a bound on memory besides the series and path bounds).
MAX_RECORDS_PER_SERVICE: Final = 2000

RecordKey = tuple[str, int, str, str, str, str]  # (peer_workload, status, grpc_status, flags, method, path)


def _offset_table(bounds: tuple[float, ...], first: int, size: int) -> list[int]:
    """``first + bisect_left(bounds, n)`` for every whole ``n`` below ``size``: where a value's bucket ("le",
    inclusive) sits in a record, looked up per request instead of a bisect."""
    return [first + bisect_left(bounds, n) for n in range(size)]


# A duration's bucket by its ceiling in whole milliseconds (the bounds are whole: a duration in (k-1, k]
# falls where k does); sizes are whole already. Past the tables: bisect.
_DURATION_MS: Final = 1000.0
_DURATION_AT: Final = _offset_table(DURATION_BUCKETS_MS, REC_DURATION, int(_DURATION_MS) + 1)
_SIZE_TABLE: Final = 1 << 14
_REQUEST_AT: Final = _offset_table(SIZE_BUCKETS_BYTES, REC_REQUEST, _SIZE_TABLE)
_RESPONSE_AT: Final = _offset_table(SIZE_BUCKETS_BYTES, REC_RESPONSE, _SIZE_TABLE)


class Series:
    """One Istio label set's counters: requests, duration, request and response sizes (a view, summed from
    the records of every path when read)."""

    __slots__ = (
        "count",
        "duration_buckets",
        "duration_sum_ms",
        "request_buckets",
        "request_bytes",
        "response_buckets",
        "response_bytes",
    )

    def __init__(self) -> None:
        self.count = 0
        self.duration_buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)  # last one is +Inf
        self.duration_sum_ms = 0.0
        self.request_buckets = [0] * (len(SIZE_BUCKETS_BYTES) + 1)
        self.request_bytes = 0
        self.response_buckets = [0] * (len(SIZE_BUCKETS_BYTES) + 1)
        self.response_bytes = 0

    def add(self, record: list[float]) -> None:
        self.count += int(record[REC_COUNT])
        self.duration_sum_ms += record[REC_DURATION_SUM]
        self.request_bytes += int(record[REC_REQUEST_BYTES])
        self.response_bytes += int(record[REC_RESPONSE_BYTES])
        _add_into(self.duration_buckets, record, REC_DURATION)
        _add_into(self.request_buckets, record, REC_REQUEST)
        _add_into(self.response_buckets, record, REC_RESPONSE)


class PathStats:
    """Per (method, path) of one service and direction, for `plexus top`: requests, failures, durations (a
    view, summed from the records of every series when read)."""

    __slots__ = ("buckets", "count", "duration_sum_ms", "failures")

    def __init__(self) -> None:
        self.count = 0
        self.failures = 0
        self.buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)
        self.duration_sum_ms = 0.0

    def add(self, record: list[float]) -> None:
        self.count += int(record[REC_COUNT])
        self.failures += int(record[REC_FAILURES])
        self.duration_sum_ms += record[REC_DURATION_SUM]
        _add_into(self.buckets, record, REC_DURATION)


def _add_into(buckets: list[int], record: list[float], first: int) -> None:
    for i in range(len(buckets)):
        buckets[i] += int(record[first + i])


class ServiceStats:
    """Per service and direction: requests by status class and a duration histogram (the ``plexus_*``
    families), Istio's series by peer, code, gRPC status and flags, and per-path counts.

    ``record(status, ms)`` counts only the plexus families (callers that have no entry); ``done(entry)`` is
    what a finished request calls: every family, then the telemetry sinks. ``series``, ``paths``,
    ``buckets`` and ``duration_sum_ms`` are sums over the records, made when read."""

    __slots__ = (
        "_path_keys",
        "_plain_buckets",
        "_plain_sum_ms",
        "_records",
        "_series_keys",
        "counts_by_class",
        "direction",
        "failures",
        "outcomes",
        "protocol",
        "service",
        "telemetry",
    )

    def __init__(self, service: str, direction: str, telemetry: Telemetry | None = None) -> None:
        self.service = service
        self.direction = direction  # "egress" or "ingress"
        # Index status // 100 (0 for a response never given). Read ``by_class``: this list lacks the requests
        # the telemetry's journal holds until it is settled (plexus.proxy.outcomes).
        self.counts_by_class = [0, 0, 0, 0, 0, 0]
        self.failures = 0  # RequestEntry.failed, for reports and `plexus stat`
        self.protocol = "http"  # the protocol of the newest record (a service speaks one)
        self._records: dict[RecordKey, list[float]] = {}
        self._series_keys: set[tuple[str, int, str, str]] = set()  # for the bounds
        self._path_keys: set[tuple[str, str]] = set()
        # What record() counted (no entry, no record): durations for the plexus family only.
        self._plain_buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)
        self._plain_sum_ms = 0.0
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        # The ways HTTP/1.1 requests of this service ended, by key (bounded in plexus.proxy.outcomes).
        self.outcomes: dict[tuple[object, ...], Outcome] = {}

    @property
    def traffic_direction(self) -> str:
        """Istio's words: "outbound" for egress, "inbound" for ingress."""
        return OUTBOUND if self.direction == "egress" else INBOUND

    @property
    def by_class(self) -> list[int]:
        """Requests by status class, index status // 100 (0 for a response never given)."""
        self.telemetry.settle()
        return self.counts_by_class

    def record(self, status: int, duration_ms: float) -> None:
        cls = status // 100
        self.counts_by_class[cls if 0 < cls < 6 else 0] += 1
        self._plain_buckets[bisect_left(DURATION_BUCKETS_MS, duration_ms)] += 1
        self._plain_sum_ms += duration_ms

    def done(self, entry: RequestEntry, logged: tuple[Any, ...] | None = None) -> None:
        """A request ended: count it everywhere and hand it to the telemetry sinks (``logged``: what the
        access log queues instead of the entry, see Telemetry.observe)."""
        status = entry.status
        grpc_status = entry.grpc_status
        # RequestEntry.failed, asked only when one of its conditions can hold (not on the success path).
        # (A gRPC success's grpc-status is "0": no reason to ask.)
        failed = (
            bool(status >= 500 or not status or entry.reason or (grpc_status and grpc_status != "0"))
            and entry.failed
        )
        cls = status // 100
        self.counts_by_class[cls if 0 < cls < 6 else 0] += 1
        key = (entry.peer_workload, status, grpc_status, entry.flags, entry.method, entry.path)
        record = self._records.get(key) or self._new_record(key, entry.protocol)
        if failed:
            self.failures += 1
            record[REC_FAILURES] += 1
        count_into(record, entry.duration_ms, entry.request_bytes, entry.response_bytes)
        self.telemetry.observe(entry, failed, logged)

    def record_for(self, key: RecordKey, protocol: str) -> list[float]:
        """The record that requests of ``key`` count into (created within the bounds, see _new_record)."""
        return self._records.get(key) or self._new_record(key, protocol)

    def _new_record(self, key: RecordKey, protocol: str) -> list[float]:
        """A record for a new combination, within the bounds: past MAX_SERIES_PER_SERVICE series the peer,
        code and flags collapse into the overflow series; past MAX_PATHS_PER_SERVICE paths the path counts
        as "other"; past MAX_RECORDS_PER_SERVICE records both."""
        self.protocol = protocol
        series, path = key[:4], key[4:]
        full = len(self._records) >= MAX_RECORDS_PER_SERVICE
        if series not in self._series_keys:
            if full or len(self._series_keys) >= MAX_SERIES_PER_SERVICE:
                series = (OVERFLOW, 0, "", OVERFLOW)
            self._series_keys.add(series)
        if path not in self._path_keys:
            if full or len(self._path_keys) >= MAX_PATHS_PER_SERVICE:
                path = ("", "other")
            self._path_keys.add(path)
        if full:
            series, path = (OVERFLOW, 0, "", OVERFLOW), ("", "other")
        bounded = (*series, *path)
        record = self._records.get(bounded)
        if record is None:
            # Only bounded keys are kept: a combination past the bounds comes here each time (not a hot case).
            record = self._records[bounded] = [0] * REC_SIZE
            record[REC_DURATION_SUM] = 0.0
        return record

    @property
    def series(self) -> dict[tuple[str, int, str, str], Series]:
        """Istio's series: (peer_workload, status, grpc_status, flags) -> counters over every path."""
        self.telemetry.settle()
        return _summed(self._records, slice(0, 4), Series)

    @property
    def paths(self) -> dict[tuple[str, str], PathStats]:
        """(method, path) -> counters over every series."""
        self.telemetry.settle()
        return _summed(self._records, slice(4, 6), PathStats)

    @property
    def buckets(self) -> list[int]:
        """The service's duration histogram (plexus_request_duration_milliseconds), +Inf last."""
        self.telemetry.settle()
        out = list(self._plain_buckets)
        for record in list(self._records.values()):
            _add_into(out, record, REC_DURATION)
        return out

    @property
    def duration_sum_ms(self) -> float:
        self.telemetry.settle()
        return self._plain_sum_ms + sum(record[REC_DURATION_SUM] for record in list(self._records.values()))


_View = TypeVar("_View", Series, PathStats)


def _summed(records: dict[RecordKey, list[float]], part: slice, view: type[_View]) -> dict[Any, _View]:
    """The records summed by one part of their keys (the series part, or the path part)."""
    out: dict[Any, _View] = {}
    for key, record in list(records.items()):
        found = out.get(key[part])
        if found is None:
            found = out[key[part]] = view()
        found.add(record)
    return out


def _duration_at(ms: float) -> int:
    return REC_DURATION + bisect_left(DURATION_BUCKETS_MS, ms)


def _size_at(size: int, first: int) -> int:
    return first + bisect_left(SIZE_BUCKETS_BYTES, size)


def count_into(record: list[float], ms: float, request_bytes: int, response_bytes: int) -> None:
    """One request into a record: its count, its duration and both sizes, each with its histogram bucket."""
    record[REC_COUNT] += 1
    record[REC_DURATION_SUM] += ms
    if ms <= 1.0:
        record[REC_DURATION] += 1
    elif ms < _DURATION_MS:
        whole = int(ms)
        record[_DURATION_AT[whole if whole == ms else whole + 1]] += 1  # (the ceiling: see _DURATION_AT)
    else:
        record[_duration_at(ms)] += 1
    record[REC_REQUEST_BYTES] += request_bytes
    record[
        _REQUEST_AT[request_bytes]
        if 0 <= request_bytes < _SIZE_TABLE
        else _size_at(request_bytes, REC_REQUEST)
    ] += 1
    record[REC_RESPONSE_BYTES] += response_bytes
    record[
        _RESPONSE_AT[response_bytes]
        if 0 <= response_bytes < _SIZE_TABLE
        else _size_at(response_bytes, REC_RESPONSE)
    ] += 1


class TcpStats:
    """Per TCP service and direction (istio_tcp_*): connections opened and closed, bytes each way.

    ``peers`` splits the same counters by peer workload (outbound: the upstream instance's workload;
    inbound: "unknown" until mTLS tells who connected), bounded like the request series."""

    __slots__ = (
        "active",
        "bytes_received",
        "bytes_sent",
        "closed",
        "connections",
        "direction",
        "peers",
        "service",
    )

    def __init__(self, service: str, direction: str) -> None:
        self.service = service
        self.direction = direction
        self.connections = 0  # opened, cumulative
        self.closed = 0
        self.active = 0
        self.bytes_received = 0  # from the downstream
        self.bytes_sent = 0  # to the downstream
        # peer workload -> [opened, closed, bytes_received, bytes_sent]
        self.peers: dict[str, list[int]] = {}

    def peer(self, workload: str) -> list[int]:
        """The peer's [opened, closed, bytes_received, bytes_sent] counters, created on first use."""
        counters = self.peers.get(workload or UNKNOWN)
        if counters is None:
            if len(self.peers) >= MAX_SERIES_PER_SERVICE:
                workload = OVERFLOW
                counters = self.peers.get(workload)
            if counters is None:
                counters = self.peers[workload or UNKNOWN] = [0, 0, 0, 0]
        return counters


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class DataPlaneStats:
    """Every data-plane counter of one sidecar."""

    def __init__(self, telemetry: Telemetry | None = None) -> None:
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.services: dict[tuple[str, str], ServiceStats] = {}
        self.tcp: dict[tuple[str, str], TcpStats] = {}
        self.local_replies: dict[tuple[str, str], int] = {}  # (reason, service)
        self.downstream_rejects: dict[str, int] = {}  # reason
        self.downstream_cx_total = 0
        self.downstream_cx_active = 0
        self.upstream_cx_total = 0
        self.upstream_cx_active = 0
        self.upstream_cx_connect_fail = 0
        self.upstream_rq_retry = 0
        # The transport's pool sizes, {(pool, state): connections}, read when rendering (None: not shown).
        self.pool_sizes: Callable[[], Mapping[tuple[str, str], int]] | None = None

    def service(self, service: str, direction: str) -> ServiceStats:
        stats = self.services.get((service, direction))
        if stats is None:
            stats = self.services[(service, direction)] = ServiceStats(service, direction, self.telemetry)
        return stats

    def tcp_service(self, service: str, direction: str) -> TcpStats:
        stats = self.tcp.get((service, direction))
        if stats is None:
            stats = self.tcp[(service, direction)] = TcpStats(service, direction)
        return stats

    def local_reply(self, reason: str, service: str) -> None:
        key = (reason, service)
        if key not in self.local_replies and len(self.local_replies) >= MAX_LABEL_SETS:
            key = (reason, "other")  # the Host of an unknown service is the client's choice: bound the labels
        self.local_replies[key] = self.local_replies.get(key, 0) + 1

    def downstream_reject(self, reason: str) -> None:
        self.downstream_rejects[reason] = self.downstream_rejects.get(reason, 0) + 1

    def render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("plexus_requests_total", "counter", "HTTP requests by service, direction and status class")
        for s in self.services.values():
            for cls, count in enumerate(s.by_class):
                if count:
                    code = f"{cls}xx" if cls else "none"
                    out.append(
                        f"plexus_requests_total"
                        f"{_labels(service=s.service, direction=s.direction, code_class=code)} {count}"
                    )
        family("plexus_request_duration_milliseconds", "histogram", "HTTP request duration")
        for s in self.services.values():
            running = 0
            for bound, count in zip((*DURATION_BUCKETS_MS, float("inf")), s.buckets, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(
                    f"plexus_request_duration_milliseconds_bucket"
                    f"{_labels(service=s.service, direction=s.direction, le=le)} {running}"
                )
            base = _labels(service=s.service, direction=s.direction)
            out.append(f"plexus_request_duration_milliseconds_sum{base} {s.duration_sum_ms:.3f}")
            out.append(f"plexus_request_duration_milliseconds_count{base} {running}")
        family("plexus_local_replies_total", "counter", "Responses the sidecar wrote itself, by reason")
        for (reason, service), count in sorted(self.local_replies.items()):
            out.append(f"plexus_local_replies_total{_labels(reason=reason, service=service)} {count}")
        family(
            "plexus_downstream_rejects_total", "counter", "Malformed downstream requests refused, by reason"
        )
        for reason, count in sorted(self.downstream_rejects.items()):
            out.append(f"plexus_downstream_rejects_total{_labels(reason=reason)} {count}")
        for name, value, help_text in (
            ("plexus_downstream_cx_total", self.downstream_cx_total, "Downstream connections accepted"),
            ("plexus_upstream_cx_total", self.upstream_cx_total, "Upstream connections opened"),
            (
                "plexus_upstream_cx_connect_fail_total",
                self.upstream_cx_connect_fail,
                "Upstream connects failed",
            ),
            (
                "plexus_upstream_rq_retry_total",
                self.upstream_rq_retry,
                "Requests retried on another endpoint",
            ),
        ):
            family(name, "counter", help_text)
            out.append(f"{name} {value}")
        for name, value, help_text in (
            ("plexus_downstream_cx_active", self.downstream_cx_active, "Downstream connections open"),
            ("plexus_upstream_cx_active", self.upstream_cx_active, "Upstream connections open"),
        ):
            family(name, "gauge", help_text)
            out.append(f"{name} {value}")
        family("plexus_tcp_connections_total", "counter", "Proxied TCP connections")
        for t in self.tcp.values():
            out.append(
                f"plexus_tcp_connections_total"
                f"{_labels(service=t.service, direction=t.direction)} {t.connections}"
            )
        family("plexus_tcp_received_bytes_total", "counter", "TCP bytes from the downstream")
        for t in self.tcp.values():
            out.append(
                f"plexus_tcp_received_bytes_total"
                f"{_labels(service=t.service, direction=t.direction)} {t.bytes_received}"
            )
        family("plexus_tcp_sent_bytes_total", "counter", "TCP bytes to the downstream")
        for t in self.tcp.values():
            out.append(
                f"plexus_tcp_sent_bytes_total"
                f"{_labels(service=t.service, direction=t.direction)} {t.bytes_sent}"
            )
        pool_sizes = self.pool_sizes
        if pool_sizes is not None:
            family("plexus_upstream_pool_connections", "gauge", "Upstream connections in the pools, by state")
            for (pool, state), value in sorted(pool_sizes().items()):
                out.append(f"plexus_upstream_pool_connections{_labels(pool=pool, state=state)} {value}")
        _render_telemetry(out, self.telemetry)
        render_istio(out, self.services.values(), self.tcp.values(), self.telemetry)
        return "\n".join(out) + "\n"


def _render_telemetry(out: list[str], t: Telemetry) -> None:
    """What the writers behind the telemetry queues did: written, and dropped (queue full or write failed)."""
    out.append("# HELP plexus_telemetry_dropped_total Access-log lines, spans and tap lines lost, by sink")
    out.append("# TYPE plexus_telemetry_dropped_total counter")
    for sink, reason, value in (
        ("access_log", "queue_full", t.access_log_dropped),
        ("access_log", "write_failed", t.access_log_failed),
        ("spans", "queue_full", t.spans_dropped),
        ("spans", "export_failed", t.spans_failed),
        ("tap", "queue_full", t.tap_dropped),
    ):
        out.append(f"plexus_telemetry_dropped_total{_labels(sink=sink, reason=reason)} {value}")
    out.append("# HELP plexus_telemetry_written_total Access-log lines written and spans exported")
    out.append("# TYPE plexus_telemetry_written_total counter")
    out.append(f'plexus_telemetry_written_total{{sink="access_log"}} {t.access_log_written}')
    out.append(f'plexus_telemetry_written_total{{sink="spans"}} {t.spans_exported}')


# -- Istio's standard metrics ---------------------------------------------------------------------------
#
# Names, labels and buckets as Istio's telemetry v2 writes them, so Grafana's Istio dashboards, Kiali and
# Flagger read a Plexus sidecar unchanged. What Plexus cannot know yet gets Istio's own "unknown": principals
# (until mTLS), versions (no version label on a workload), clusters (no multi-cluster). Plexus's registry has
# no namespaces, so a known peer workload and every service live in this sidecar's namespace.

ISTIO_REQUEST_FAMILIES: Final = (
    "istio_requests_total",
    "istio_request_duration_milliseconds",
    "istio_request_bytes",
    "istio_response_bytes",
)
ISTIO_TCP_FAMILIES: Final = (
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
    "istio_tcp_received_bytes_total",
    "istio_tcp_sent_bytes_total",
)
_DURATION_LE: Final = (*(f"{b:g}" for b in DURATION_BUCKETS_MS), "+Inf")
_SIZE_LE: Final = (*(f"{b:g}" for b in SIZE_BUCKETS_BYTES), "+Inf")
LATEST: Final = "latest"  # Istio's canonical revision when a workload has no version label


def istio_peer_labels(t: Telemetry, service: str, outbound: bool, peer: str, protocol: str) -> str:
    """The labels of one (service, direction, peer) without the response's: ``k="v",...`` (no braces)."""
    peer = peer or UNKNOWN
    peer_ns = UNKNOWN if peer in (UNKNOWN, OVERFLOW) else t.namespace
    # connection_security_policy: the source cannot know it ("unknown"); the destination knows it got
    # plaintext ("none") until mTLS.
    if outbound:
        reporter, policy = "source", UNKNOWN
        src, src_ns, dst, dst_ns = t.workload, t.namespace, peer, peer_ns
    else:
        reporter, policy = "destination", "none"
        src, src_ns, dst, dst_ns = peer, peer_ns, t.workload, t.namespace
    pairs = (
        ("reporter", reporter),
        ("source_workload", src),
        ("source_workload_namespace", src_ns),
        ("source_principal", UNKNOWN),
        ("source_app", src),
        ("source_version", UNKNOWN),
        ("source_canonical_service", src),
        ("source_canonical_revision", LATEST),
        ("source_cluster", UNKNOWN),
        ("destination_workload", dst),
        ("destination_workload_namespace", dst_ns),
        ("destination_principal", UNKNOWN),
        ("destination_app", dst),
        ("destination_version", UNKNOWN),
        ("destination_service", service),
        ("destination_service_name", service),
        ("destination_service_namespace", t.namespace),
        ("destination_canonical_service", dst),
        ("destination_canonical_revision", LATEST),
        ("destination_cluster", UNKNOWN),
        ("request_protocol", protocol),
        ("connection_security_policy", policy),
    )
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)


def render_istio(
    out: list[str], services: Iterable[ServiceStats], tcp: Iterable[TcpStats], telemetry: Telemetry
) -> None:
    """Append Istio's request and TCP families for every series (bounded per service, see ``done``)."""
    rows: list[tuple[str, Series]] = []
    for s in services:
        outbound = s.direction == "egress"
        bases: dict[str, str] = {}
        for (peer, status, grpc_status, flags), series in s.series.items():
            base = bases.get(peer)
            if base is None:
                base = bases[peer] = istio_peer_labels(telemetry, s.service, outbound, peer, s.protocol)
            response = (
                f'response_code="{status}",grpc_response_status="{_escape(grpc_status)}",'
                f'response_flags="{_escape(flags)}"'
            )
            rows.append((f"{base},{response}", series))
    out.append("# HELP istio_requests_total Requests, as Istio counts them")
    out.append("# TYPE istio_requests_total counter")
    for labels, series in rows:
        out.append(f"istio_requests_total{{{labels}}} {series.count}")
    _histogram(
        out,
        "istio_request_duration_milliseconds",
        "Request duration, milliseconds",
        _DURATION_LE,
        ((labels, x.duration_buckets, f"{x.duration_sum_ms:.3f}") for labels, x in rows),
    )
    _histogram(
        out,
        "istio_request_bytes",
        "Request body sizes, bytes",
        _SIZE_LE,
        ((labels, x.request_buckets, str(x.request_bytes)) for labels, x in rows),
    )
    _histogram(
        out,
        "istio_response_bytes",
        "Response body sizes, bytes",
        _SIZE_LE,
        ((labels, x.response_buckets, str(x.response_bytes)) for labels, x in rows),
    )
    tcp_rows: list[tuple[str, list[int]]] = []
    for t in tcp:
        outbound = t.direction == "egress"
        for peer, counters in t.peers.items():
            base = istio_peer_labels(telemetry, t.service, outbound, peer, "tcp")
            tcp_rows.append((f'{base},response_flags="{NO_FLAGS}"', counters))
    for name, index, help_text in (
        ("istio_tcp_connections_opened_total", 0, "TCP connections opened"),
        ("istio_tcp_connections_closed_total", 1, "TCP connections closed"),
        ("istio_tcp_received_bytes_total", 2, "TCP bytes received from the downstream"),
        ("istio_tcp_sent_bytes_total", 3, "TCP bytes sent to the downstream"),
    ):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} counter")
        for labels, counters in tcp_rows:
            out.append(f"{name}{{{labels}}} {counters[index]}")


def _histogram(
    out: list[str],
    name: str,
    help_text: str,
    les: tuple[str, ...],
    rows: Iterable[tuple[str, list[int], str]],
) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} histogram")
    for labels, buckets, total in rows:
        running = 0
        for le, count in zip(les, buckets, strict=True):
            running += count
            out.append(f'{name}_bucket{{{labels},le="{le}"}} {running}')
        out.append(f"{name}_sum{{{labels}}} {total}")
        out.append(f"{name}_count{{{labels}}} {running}")

"""What the mesh is doing, from the sidecars' reports: rates, success, latency per service, path and edge
(``plexus stat``/``top``, the dashboard), the control plane's ``Info``, and ``plexus explain``'s verdict.

Pure: no I/O, no asyncio; the clock is injected (monotonic seconds). ``ControlCore`` feeds it; the admin HTTP
server and the Stat/Info RPCs read it.

Interface (stable; the dashboard and the CLI build on it)::

    observer = MeshObserver(clock, policy_version=lambda: core.version)
    observer.instances = lambda service: 3      # instances the registry holds (None: unknown -> 0)
    observer.registry_embedded = True           # set by plexus.control.app
    observer.admin_url = "http://127.0.0.1:15401/"
    observer.connected(node)                    # a stream opened, or the sidecar said Hello again
    observer.disconnected(node_id)              # its stream ended; history dropped DISCONNECTED_KEEP later
    observer.report(node_id, report)            # one Report: cumulative counters since the sidecar started
    observer.stat(service="", window=30.0) -> control_pb2.StatResponse
    observer.info() -> control_pb2.InfoResponse
    observer.sidecars -> int                    # connected now
    histogram_quantile(q, buckets) -> float     # per-bound counts of DURATION_BUCKETS_MS then +Inf
    order_hops(hops) / verdict(hops) -> str     # plexus explain

How rates are made: per sidecar a short history of its cumulative reports (one point per report while
younger than RECENT_SPAN, then one per OLD_STEP, up to HISTORY; capped point counts, so memory is bounded per
sidecar). A figure over a window is, per sidecar, (newest - oldest point inside the window) / the time
between them, summed over sidecars; a sidecar with a single point in the window uses the point before it.
A sidecar's first report adds a zero point at (now - its uptime): its counters started at zero then. A restart
(uptime or a counter going down) starts its history afresh the same way.

Views: a service's figures come from its providers' sidecars (inbound, Istio's reporter="destination"); a
service only callers saw requests of in the window (its providers are not meshed, or have not reported yet)
gets the callers' outbound view. Edges: the
outbound view (source = the calling sidecar's workload), plus inbound edges no outbound one covers (a
non-meshed caller, source "unknown").
"""

from __future__ import annotations

import array
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from plexus import __version__
from plexus.proto import control_pb2 as pb

# Upper bounds of the duration buckets in ms (plexus.proxy.stats.DURATION_BUCKETS_MS; the control plane may
# not import the data plane, and a report's bucket list is these then +Inf).
DURATION_BUCKETS_MS: Final = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                              10000.0, 30000.0, 60000.0)  # fmt: skip
INBOUND: Final = "inbound"
OUTBOUND: Final = "outbound"
UNKNOWN: Final = "unknown"
DEFAULT_WINDOW: Final = 30.0  # seconds, for window_seconds = 0 (linkerd viz uses 1 m; this reacts faster)
HISTORY: Final = 600.0  # seconds of points kept per sidecar: windows up to 10 minutes
# Younger points are kept one per RECENT_STEP (a 10 s window covers 8..10 s), older ones one per OLD_STEP (a
# 5-minute window is off by at most 30 s): about 50 points per sidecar however often it reports.
RECENT_SPAN: Final = 60.0
RECENT_STEP: Final = 2.0
OLD_STEP: Final = 30.0
MAX_RECENT: Final = int(RECENT_SPAN / RECENT_STEP) + 2
MAX_OLD: Final = int(HISTORY / OLD_STEP) + 2
DISCONNECTED_KEEP: Final = 300.0  # seconds a gone sidecar's history still counts (its traffic did happen)
# Edges and paths kept of one report: a sidecar bounds its own (200 peers, 100 paths per service); this bounds
# what a misbehaving one can make the control plane hold.
MAX_REPORT_KEYS: Final = 5000
MAX_STAT_PATHS: Final = 500  # busiest paths returned by one Stat; the rest are left out


# ---------------------------------------------------------------------------------------- figures


def histogram_quantile(q: float, buckets: Sequence[int]) -> float:
    """Prometheus's histogram_quantile over per-bucket counts (not cumulative): linear inside the bucket the
    rank falls in (from 0 for the first), the highest finite bound when it falls in +Inf; 0 with no counts."""
    total = sum(buckets)
    if total <= 0:
        return 0.0
    rank = q * total
    running = 0
    for i, count in enumerate(buckets):
        if count <= 0:
            continue
        if running + count >= rank:
            if i >= len(DURATION_BUCKETS_MS):
                return DURATION_BUCKETS_MS[-1]
            lower = DURATION_BUCKETS_MS[i - 1] if i > 0 else 0.0
            upper = DURATION_BUCKETS_MS[i]
            return lower + (upper - lower) * max(rank - running, 0.0) / count
        running += count
    return DURATION_BUCKETS_MS[-1]


# requests, errors, then the duration buckets, cumulative since the sidecar started. An array of machine
# integers: a tenth of the memory of Python ints in tuples, which is most of what the history costs.
Counts: TypeAlias = "array.array[int]"
EdgeKey = tuple[str, str, str, str]  # direction, source workload, destination service, destination workload
PathKey = tuple[str, str, str, str]  # service, direction, method, path
TcpKey = tuple[str, str]  # service, direction
ZERO: Final[Counts] = array.array("q", [0, 0])


@dataclass(slots=True)
class Figures:
    """Requests, errors and durations over a window, summed over sidecars; ``rps`` sums each one's rate."""

    requests: int = 0
    errors: int = 0
    rps: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS_MS) + 1))

    def add(self, new: Counts, old: Counts, elapsed: float) -> None:
        requests = new[0] - old[0]
        if requests <= 0:
            return
        self.requests += requests
        self.errors += max(new[1] - old[1], 0)
        self.rps += requests / elapsed
        buckets, size = self.buckets, len(old)
        for i in range(2, min(len(new), len(buckets) + 2)):
            buckets[i - 2] += new[i] - (old[i] if i < size else 0)

    @property
    def success_rate(self) -> float:
        return 1.0 - min(self.errors / self.requests, 1.0) if self.requests else 1.0

    def quantile(self, q: float) -> float:
        return histogram_quantile(q, self.buckets)


# ---------------------------------------------------------------------------------------- history


@dataclass(slots=True)
class _Point:
    t: float
    edges: dict[EdgeKey, Counts]
    paths: dict[PathKey, Counts]
    has_paths: bool = True  # False once aged past RECENT_SPAN: old points keep edges only (memory)


def _counts(requests: int, errors: int, buckets: Iterable[int]) -> Counts:
    return array.array("q", [requests, errors, *buckets])


class _Sidecar:
    """One sidecar: its last Hello, connection state, the latest report's gauges and its history."""

    __slots__ = ("active_connections", "connected", "gone_at", "keys", "last_seq", "node", "old", "protocols",
                 "recent", "tcp_active", "uptime")  # fmt: skip

    def __init__(self, node: pb.Node) -> None:
        self.node = node
        self.connected = True
        self.gone_at = 0.0
        self.uptime = -1.0
        self.last_seq = 0
        self.recent: deque[_Point] = deque(maxlen=MAX_RECENT)
        self.old: deque[_Point] = deque(maxlen=MAX_OLD)
        self.protocols: dict[EdgeKey, tuple[str, bool]] = {}  # protocol, mtls (latest report)
        self.tcp_active: dict[TcpKey, int] = {}
        self.active_connections = 0
        # one key object per edge or path, shared by every point (a report's keys are new strings each time)
        self.keys: dict[tuple[str, str, str, str], tuple[str, str, str, str]] = {}

    def key(self, key: tuple[str, str, str, str]) -> tuple[str, str, str, str]:
        keys = self.keys
        found = keys.get(key)
        if found is None:
            if len(keys) >= 4 * MAX_REPORT_KEYS:
                keys.clear()  # keys of edges and paths long gone; the next reports fill it again
            found = keys[key] = key
        return found

    def points(self) -> list[_Point]:
        return [*self.old, *self.recent]

    def reset(self) -> None:
        self.recent.clear()
        self.old.clear()

    def add(self, point: _Point) -> None:
        recent = self.recent
        if len(recent) >= 2 and point.t - recent[-2].t < RECENT_STEP:
            recent[-1] = point  # too close to the one before: the newest replaces the last
        else:
            recent.append(point)
        while len(recent) > 1 and point.t - recent[0].t > RECENT_SPAN:
            aged = recent.popleft()
            if not self.old or aged.t - self.old[-1].t >= OLD_STEP:
                self.old.append(_Point(aged.t, aged.edges, {}, has_paths=False))
        while self.old and point.t - self.old[0].t > HISTORY:
            self.old.popleft()

    def span(self, now: float, window: float, recent_only: bool = False) -> tuple[_Point, _Point] | None:
        """(base, newest) for a window ending now, or None when this sidecar has nothing in it."""
        if not self.recent:
            return None
        newest = self.recent[-1]
        start = now - window
        if newest.t < start:
            return None
        # newest to oldest, touching only the points in the window and the one before it
        inside: _Point | None = None
        before: _Point | None = None
        older = () if recent_only else reversed(self.old)
        for point in itertools.chain(itertools.islice(reversed(self.recent), 1, None), older):
            if point.t >= start:
                inside = point
            else:
                before = point
                break
        base = inside if inside is not None else before  # a single point in the window: the one before it
        return None if base is None else (base, newest)


def _failed_flags(status: int, grpc_status: str, flags: str) -> bool:
    return status >= 500 or status == 0 or grpc_status not in ("", "0") or flags not in ("-", "DC", "URX")


# ---------------------------------------------------------------------------------------- the observer


class MeshObserver:
    def __init__(
        self,
        clock: Callable[[], float],
        *,
        policy_version: Callable[[], int] = lambda: 0,
        instances: Callable[[str], int] | None = None,
    ) -> None:
        self._clock = clock
        self._policy_version = policy_version
        self.instances = instances
        self.registry_embedded = False
        self.admin_url = ""
        self._started = clock()
        self._sidecars: dict[str, _Sidecar] = {}

    # ------------------------------------------------------------------ feeding
    def connected(self, node: pb.Node) -> None:
        found = self._sidecars.get(node.id)
        if found is None:
            self._sidecars[node.id] = _Sidecar(node)
        else:
            found.node = node
            found.connected = True

    def disconnected(self, node_id: str) -> None:
        found = self._sidecars.get(node_id)
        if found is not None:
            found.connected = False
            found.gone_at = self._clock()

    def report(self, node_id: str, report: pb.Report) -> None:
        sidecar = self._sidecars.get(node_id)
        if sidecar is None:
            return  # a report before the Hello cannot happen on a stream; ignore it
        now = self._clock()
        edges: dict[EdgeKey, Counts] = {}
        protocols: dict[EdgeKey, tuple[str, bool]] = {}
        for e in report.edges[:MAX_REPORT_KEYS]:
            key = sidecar.key((e.direction, e.source_workload, e.destination_service, e.destination_workload))
            edges[key] = _counts(e.requests, e.errors, e.duration_buckets)
            protocols[key] = (e.protocol, e.mtls)
        paths = {
            sidecar.key((p.service, p.direction, p.method, p.path)): _counts(
                p.requests, p.errors, p.duration_buckets
            )
            for p in report.paths[:MAX_REPORT_KEYS]
        }
        previous = sidecar.recent[-1] if sidecar.recent else None
        restarted = report.uptime_seconds < sidecar.uptime or (
            previous is not None and _went_down(previous.edges, edges)
        )
        if previous is None or restarted:
            sidecar.reset()
            previous = None
            origin = now - max(report.uptime_seconds, 0.0)
            if origin < now:
                sidecar.add(_Point(origin, {}, {}))  # its counters were zero when it started
        if previous is not None:  # share unchanged counters with the previous point (idle keys cost no copy)
            edges = {k: (old if (old := previous.edges.get(k)) == v else v) for k, v in edges.items()}
            paths = {k: (old if (old := previous.paths.get(k)) == v else v) for k, v in paths.items()}
        sidecar.add(_Point(now, edges, paths))
        sidecar.uptime = report.uptime_seconds
        sidecar.last_seq = report.sequence
        sidecar.protocols = protocols
        sidecar.tcp_active = {(t.service, t.direction): int(t.active) for t in report.tcp}
        sidecar.active_connections = int(report.active_connections)

    def prune(self) -> None:
        """Forget sidecars gone for longer than DISCONNECTED_KEEP."""
        now = self._clock()
        gone = [
            node_id
            for node_id, s in self._sidecars.items()
            if not s.connected and now - s.gone_at > DISCONNECTED_KEEP
        ]
        for node_id in gone:
            del self._sidecars[node_id]

    # ------------------------------------------------------------------ reading
    @property
    def sidecars(self) -> int:
        return sum(1 for s in self._sidecars.values() if s.connected)

    def info(self) -> pb.InfoResponse:
        return pb.InfoResponse(
            version=__version__,
            admin_url=self.admin_url,
            registry_embedded=self.registry_embedded,
            policy_version=self._policy_version(),
            sidecars=self.sidecars,
            uptime_seconds=max(self._clock() - self._started, 0.0),
        )

    def stat(self, service: str = "", window: float = DEFAULT_WINDOW) -> pb.StatResponse:
        """Figures over the last ``window`` seconds (0: DEFAULT_WINDOW) of one service, or of every one."""
        self.prune()
        window = window if window > 0 else DEFAULT_WINDOW
        window = min(window, HISTORY)
        now = self._clock()
        by_service: dict[tuple[str, str], Figures] = {}  # (service, direction)
        by_edge: dict[EdgeKey, Figures] = {}
        by_path: dict[PathKey, Figures] = {}
        protocol: dict[tuple[str, str], str] = {}
        mtls: dict[EdgeKey, bool] = {}
        tcp_open: dict[tuple[str, str], int] = {}
        meshed: dict[str, int] = {}
        covered = 0.0
        for sidecar in self._sidecars.values():
            if sidecar.connected:
                for provided in sidecar.node.provides:
                    meshed[provided] = meshed.get(provided, 0) + 1
                for tcp_key, active in sidecar.tcp_active.items():
                    tcp_open[tcp_key] = tcp_open.get(tcp_key, 0) + active
                    protocol.setdefault(tcp_key, "tcp")
            newest = sidecar.recent[-1] if sidecar.recent else None
            if newest is None:
                continue
            for key in newest.edges:  # known services, with or without traffic in the window
                by_service.setdefault((key[2], key[0]), Figures())
                proto = sidecar.protocols.get(key)
                if proto is not None:
                    protocol[(key[2], key[0])] = proto[0]
                    mtls[key] = mtls.get(key, False) or proto[1]
            found = sidecar.span(now, window)
            if found is None:
                continue
            base, newest = found
            elapsed = newest.t - base.t
            if elapsed <= 0:
                continue
            covered = max(covered, elapsed)
            for key, counts in newest.edges.items():
                old = base.edges.get(key, ZERO)
                by_service[(key[2], key[0])].add(counts, old, elapsed)
                edge = by_edge.get(key)
                if edge is None:
                    edge = by_edge[key] = Figures()
                edge.add(counts, old, elapsed)
            if not base.has_paths:  # paths (`top`) cover at most the last RECENT_SPAN: old points keep none
                found = sidecar.span(now, min(window, RECENT_SPAN), recent_only=True)
                if found is None:
                    continue
                base, newest = found
                elapsed = newest.t - base.t
                if elapsed <= 0:
                    continue
            for pkey, counts in newest.paths.items():
                figures = by_path.get(pkey)
                if figures is None:
                    figures = by_path[pkey] = Figures()
                figures.add(counts, base.paths.get(pkey, ZERO), elapsed)

        names = {s for s, _ in by_service} | set(meshed) | {s for s, _ in tcp_open}
        if service:
            names &= {service}
        view = {name: _view(name, by_service, tcp_open) for name in names}
        response = pb.StatResponse(window_seconds=covered if covered > 0 else window)
        for name in sorted(names):
            direction = view[name]
            figures = by_service.get((name, direction)) or Figures()
            response.services.add(
                service=name,
                meshed=meshed.get(name, 0),
                instances=self.instances(name) if self.instances is not None else 0,
                success_rate=figures.success_rate,
                rps=figures.rps,
                latency_p50_ms=figures.quantile(0.5),
                latency_p95_ms=figures.quantile(0.95),
                latency_p99_ms=figures.quantile(0.99),
                tcp_connections=tcp_open.get((name, direction), 0),
                requests=figures.requests,
                protocol=protocol.get((name, direction), ""),
            )
        paths = [
            (figures, key)
            for key, figures in by_path.items()
            if key[0] in view and key[1] == view[key[0]] and figures.requests > 0
        ]
        paths.sort(key=lambda item: (-item[0].rps, item[1]))
        for figures, (name, _, method, path) in paths[:MAX_STAT_PATHS]:
            response.paths.add(
                service=name,
                method=method,
                path=path,
                rps=figures.rps,
                success_rate=figures.success_rate,
                latency_p50_ms=figures.quantile(0.5),
                latency_p99_ms=figures.quantile(0.99),
                requests=figures.requests,
            )
        outbound = {(k[1], k[2], k[3]) for k, f in by_edge.items() if k[0] == OUTBOUND and f.requests}
        for edge_key in sorted(by_edge):
            figures = by_edge[edge_key]
            direction, source, dest_service, dest_workload = edge_key
            if figures.requests == 0 or (service and dest_service != service):
                continue
            if direction == INBOUND and (source, dest_service, dest_workload) in outbound:
                continue  # the caller's own sidecar reported this edge
            response.edges.add(
                source_workload=source,
                destination_service=dest_service,
                destination_workload=dest_workload,
                rps=figures.rps,
                success_rate=figures.success_rate,
                latency_p50_ms=figures.quantile(0.5),
                latency_p99_ms=figures.quantile(0.99),
                requests=figures.requests,
                mtls=mtls.get(edge_key, False),
            )
        return response


def _view(name: str, by_service: dict[tuple[str, str], Figures], tcp: dict[tuple[str, str], int]) -> str:
    """The providers' (inbound) view, unless only callers saw requests in the window: the providers are not
    meshed, or their sidecars have not reported the traffic yet (sidecars report at their own phases)."""
    inbound, outbound = by_service.get((name, INBOUND)), by_service.get((name, OUTBOUND))
    if inbound is not None and inbound.requests > 0:
        return INBOUND
    if outbound is not None and outbound.requests > 0:
        return OUTBOUND
    return INBOUND if inbound is not None or (name, INBOUND) in tcp or outbound is None else OUTBOUND


def _went_down(old: dict[EdgeKey, Counts], new: dict[EdgeKey, Counts]) -> bool:
    return any(new.get(k, ZERO)[0] < c[0] for k, c in old.items())


# ---------------------------------------------------------------------------------------- explain


def _path_rank(hop: pb.RequestLine) -> tuple[float, int]:
    return (hop.start_unix, 0 if hop.direction == OUTBOUND else 1)


CLOCK_SLACK: Final = 0.001  # s: access logs round durations; a call made as the inbound hop ends still counts


def order_hops(hops: Iterable[pb.RequestLine]) -> list[pb.RequestLine]:
    """The hops in the order the request went through them.

    By start time, except that a hop always comes after the hop that led to it, whatever the sidecars'
    clocks say: they are separate processes whose Unix times differ by a millisecond or more, and a callee's
    inbound hop often starts within that much of its caller's outbound one. Leads to:

    - a caller's outbound hop -> the inbound hop of the same service whose workload is its peer and whose
      peer is its workload ("unknown" or empty matches anything: a peer the hop could not know);
    - an inbound hop -> the outbound hops the same sidecar started while serving it (one clock: exact).
    """
    waiting = sorted(hops, key=_path_rank)
    placed: list[pb.RequestLine] = []
    while waiting:
        free = (h for h in waiting if not any(_leads_to(o, h) for o in waiting if o is not h))
        hop = next(free, waiting[0])  # a request that loops back through a sidecar: start order decides
        waiting.remove(hop)
        placed.append(hop)
    return placed


def _leads_to(first: pb.RequestLine, then: pb.RequestLine) -> bool:
    if first.direction == OUTBOUND and then.direction == INBOUND:
        return (
            first.service == then.service
            and _same_peer(then.peer_workload, first.workload)
            and _same_peer(first.peer_workload, then.workload)
        )
    if first.direction == INBOUND and then.direction == OUTBOUND:
        same_sidecar = (
            first.sidecar_id == then.sidecar_id if first.sidecar_id else first.workload == then.workload
        )
        end = first.start_unix + first.duration_ms / 1000 + CLOCK_SLACK
        return same_sidecar and first.start_unix <= then.start_unix <= end
    return False


def _same_peer(seen: str, actual: str) -> bool:
    return seen in ("", UNKNOWN) or actual in ("", UNKNOWN) or seen == actual


def _failed(hop: pb.RequestLine) -> bool:
    return bool(hop.reason) or hop.status >= 500 or hop.status == 0


def verdict(hops: Sequence[pb.RequestLine]) -> str:
    """One line: which hop failed the request and why, or that none did. ``hops`` in path order.

    The outermost hop's status is what the client got; when it failed, the hop blamed is the deepest one
    that set a reason (the outer hops passed its answer on), else the deepest one that saw a 5xx or no
    response (the app itself answered it)."""
    if not hops:
        return "not found on any sidecar (requests are remembered for the last 4096 per sidecar)"
    final = hops[0]
    if not _failed(final):
        return f"no hop failed it: final status {final.status}"
    with_reason = [h for h in hops if h.reason]
    failing = with_reason or [h for h in hops if _failed(h)]
    hop = failing[-1]
    flags = hop.response_flags or "-"
    if hop.reason:
        what = hop.reason
    elif hop.status:
        what = f"the upstream answered {hop.status}"
    else:
        what = "no response"
    return (
        f"{hop.workload or UNKNOWN} ({hop.direction}) failed it: {what} ({flags}), status {hop.status}, "
        f"upstream {hop.upstream or '-'}"
    )

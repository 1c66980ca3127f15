"""The sidecar's side of the control plane: install pushed snapshots, describe the sidecar, report traffic.

``PolicyAgent`` is what ``AsyncControlClient`` calls. Installing one snapshot:

1. ``PolicySet.from_json`` (a snapshot that does not decode is a NACK like any other error);
2. the services its routes send traffic to that no app consumes (foreign destinations) are watched in the
   registry, and new ones are waited for (up to ``first_set_wait``) so that the first request routed to them
   finds their cluster instead of answering no_healthy_upstream;
3. ``DataPlane.set_policy`` compiles every part, then installs (a ConfigError changes nothing: NACK);
4. destinations the new policy no longer names are unwatched only after ``unwatch_delay``: a request routed
   by the previous policy may still retry into them.

Any exception propagates to the client, which NACKs with its text; the last good policy keeps serving.

It is also what the control stream reads of the data plane's telemetry (``Observed``): the report's edges
(each ``ServiceStats.series`` summed per peer workload), paths, TCP summaries and active connections; taps
(``Telemetry.open_tap``/``close_tap``, drained into TapLines); and the hops of a request id for ``explain``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any, Final

from plexus import __version__
from plexus.clients.control_async import NodeInfo, SnapshotIn, Traffic
from plexus.config.resources import PolicySet
from plexus.core import reasons
from plexus.core.address import HostPort
from plexus.proto import control_pb2 as pb
from plexus.proxy.stats import OVERFLOW, ServiceStats
from plexus.proxy.telemetry import INBOUND, UNKNOWN, RequestEntry
from plexus.sidecar.mesh import LocalMesh
from plexus.transport.dataplane import DataPlane

FIRST_SET_WAIT: Final = 2.0  # seconds a snapshot waits for a new destination's first registry set
UNWATCH_DELAY: Final = 5.0  # seconds a destination dropped by a snapshot stays watched (in-flight retries)
DIRECTIONS: Final = {"egress": "outbound", "ingress": "inbound"}
NOT_FAILED_FLAGS: Final = ("-", "DC", "URX")  # RequestEntry.failed: no reason, or only the retry budget's


def series_failed(status: int, grpc_status: str, flags: str) -> bool:
    """``RequestEntry.failed`` from a series key: flags stand for the reason (``response_flag(reason)``)."""
    return status >= 500 or status == 0 or grpc_status not in ("", "0") or flags not in NOT_FAILED_FLAGS


def edges_of(stats: ServiceStats, workload: str) -> list[pb.EdgeSummary]:
    """One edge per peer workload of one service and direction (``workload`` is this sidecar's).

    Errors per peer are counted from the series keys; the overflow series (peers and codes past the cap)
    gets what is left of ``stats.failures``. A service counted only by ``record()`` (no series) is one edge
    with an unknown peer, its errors the 5xx and never-answered requests."""
    direction = DIRECTIONS.get(stats.direction, stats.direction)
    inbound = direction == INBOUND
    by_peer: dict[str, pb.EdgeSummary] = {}
    counted_errors = 0

    def edge(peer: str) -> pb.EdgeSummary:
        found = by_peer.get(peer)
        if found is None:
            source, destination = (peer, workload) if inbound else (workload, peer)
            found = by_peer[peer] = pb.EdgeSummary(
                direction=direction,
                source_workload=source,
                destination_service=stats.service,
                destination_workload=destination,
                protocol=stats.protocol,
                duration_buckets=[0] * len(stats.buckets),
            )
        return found

    for (peer, status, grpc_status, flags), series in list(stats.series.items()):
        e = edge(peer or UNKNOWN)
        e.requests += series.count
        if peer != OVERFLOW and series_failed(status, grpc_status, flags):
            e.errors += series.count
            counted_errors += series.count
        for i, count in enumerate(series.duration_buckets):
            e.duration_buckets[i] += count
        e.duration_sum_ms += series.duration_sum_ms
    if OVERFLOW in by_peer:
        by_peer[OVERFLOW].errors = max(stats.failures - counted_errors, 0)
    recorded: int = sum(stats.by_class)
    if not by_peer and recorded > 0:
        e = edge(UNKNOWN)
        e.requests = recorded
        e.errors = stats.by_class[5] + stats.by_class[0]
        e.duration_buckets[:] = stats.buckets
        e.duration_sum_ms = stats.duration_sum_ms
    return list(by_peer.values())


def policy_destinations(policy: PolicySet) -> frozenset[str]:
    """The services the policy's routes and mirrors send traffic to besides their own hosts."""
    return policy.foreign_destinations()


class PolicyAgent:
    def __init__(
        self,
        dp: DataPlane,
        mesh: LocalMesh,
        *,
        node_id: str,
        workload: str = "",
        zone: str = "",
        unit: str = "",
        advertised: HostPort | None = None,
        first_set_wait: float = FIRST_SET_WAIT,
        unwatch_delay: float = UNWATCH_DELAY,
    ) -> None:
        self._dp = dp
        self._mesh = mesh
        self._node_id = node_id
        self._workload = workload
        self._zone = zone
        self._unit = unit
        self._advertised = advertised
        self._first_set_wait = first_set_wait
        self._unwatch_delay = unwatch_delay
        self._loop = asyncio.get_running_loop()
        self._destinations: frozenset[str] = frozenset()  # named by the installed policy
        self._draining: dict[str, asyncio.TimerHandle] = {}  # dropped, still watched until the timer fires
        self.version = 0
        self.installed_at: float | None = None
        self.last_wait_missing: list[str] = []  # new destinations with no registry set after the wait
        self.on_installed: Callable[[int], None] | None = None
        telemetry = dp.stats.telemetry
        if telemetry.loop_clock_offset == 0.0:  # nobody set it yet: tap and explain lines need Unix times
            telemetry.set_clock(self._loop.time())

    # ----------------------------------------------------------------- installing
    async def install(self, snap: SnapshotIn) -> None:
        """Install one snapshot; raises (ConfigError, ValueError, ...) leaving the last policy serving."""
        policy = PolicySet.from_json(snap.policy_json)
        wanted = policy_destinations(policy)
        added = wanted - self._destinations - set(self._draining)
        if added:
            self._watch(self._destinations | wanted)
            self.last_wait_missing = await self._mesh.wait_first_sets(added, self._first_set_wait)
        try:
            self._dp.set_policy(policy)
        except BaseException:
            if added:
                self._watch(self._destinations)  # never used: unwatch at once
            raise
        dropped = self._destinations - wanted
        self._destinations = wanted
        for service in wanted:
            timer = self._draining.pop(service, None)
            if timer is not None:
                timer.cancel()
        for service in dropped:
            self._draining[service] = self._loop.call_later(self._unwatch_delay, self._unwatch, service)
        self._watch(self._destinations)
        self.version = snap.version
        self.installed_at = time.time()
        if self.on_installed is not None:
            self.on_installed(snap.version)

    def _unwatch(self, service: str) -> None:
        if self._draining.pop(service, None) is not None:
            self._watch(self._destinations)

    def _watch(self, services: frozenset[str]) -> None:
        self._mesh.watch_route_destinations(frozenset(services | set(self._draining)))

    def close(self) -> None:
        for timer in self._draining.values():
            timer.cancel()
        self._draining.clear()

    # ----------------------------------------------------------------- describing
    def node(self) -> NodeInfo:
        mesh = self._mesh
        addresses = {p.instance.address for p in mesh.providers.values()}
        if self._advertised is not None:
            addresses.add(str(self._advertised))
        return NodeInfo(
            id=self._node_id,
            workload=self._workload,
            zone=self._zone,
            unit=self._unit,
            sidecar_version=__version__,
            consumes=tuple(sorted(mesh.watched_services())),
            provides=tuple(sorted(mesh.providers)),
            addresses=tuple(sorted(addresses)),
        )

    def traffic(self) -> list[Traffic]:
        """Cumulative per service and direction; errors are 5xx answers, requests never answered, and the
        local replies that are not 5xx: rate-limited requests (429), refused at the ingress of a provider."""
        out: list[Traffic] = []
        local_replies = self._dp.stats.local_replies
        for (service, direction), stats in list(self._dp.stats.services.items()):
            by_class = stats.by_class
            limited = local_replies.get((reasons.RATE_LIMITED, service), 0) if direction == "ingress" else 0
            out.append(
                Traffic(
                    service=service,
                    direction=DIRECTIONS.get(direction, direction),
                    requests=sum(by_class),
                    errors=by_class[5] + by_class[0] + limited,
                    duration_buckets=tuple(stats.buckets),
                    duration_sum_ms=stats.duration_sum_ms,
                )
            )
        return out

    # ----------------------------------------------------------------- observability (control_async.Observed)
    def fill_report(self, report: pb.Report) -> None:
        stats = self._dp.stats
        workload = self._workload or UNKNOWN
        for service_stats in list(stats.services.values()):
            report.edges.extend(edges_of(service_stats, workload))
            direction = DIRECTIONS.get(service_stats.direction, service_stats.direction)
            for (method, path), p in list(service_stats.paths.items()):
                report.paths.add(
                    service=service_stats.service,
                    direction=direction,
                    method=method,
                    path=path,
                    requests=p.count,
                    errors=p.failures,
                    duration_buckets=p.buckets,
                    duration_sum_ms=p.duration_sum_ms,
                )
        for t in list(stats.tcp.values()):
            report.tcp.add(
                service=t.service,
                direction=DIRECTIONS.get(t.direction, t.direction),
                opened=t.connections,
                closed=t.closed,
                active=max(t.active, 0),
                bytes_received=t.bytes_received,
                bytes_sent=t.bytes_sent,
            )
        report.active_connections = max(stats.downstream_cx_active, 0)

    def open_tap(self, tap_id: str, service: str) -> None:
        self._dp.stats.telemetry.open_tap(tap_id, service)

    def close_tap(self, tap_id: str) -> None:
        self._dp.stats.telemetry.close_tap(tap_id)

    def take_tap_lines(self) -> list[pb.TapLines]:
        out: list[pb.TapLines] = []
        for tap in list(self._dp.stats.telemetry.taps.values()):
            if not tap.lines and not tap.dropped:
                continue
            entries, tap.lines = tap.lines, []
            dropped, tap.dropped = tap.dropped, 0
            out.append(pb.TapLines(tap_id=tap.tap_id, lines=map(self.request_line, entries), dropped=dropped))
        return out

    def explain(self, request_id: str) -> list[pb.RequestLine]:
        return [self.request_line(e) for e in self._dp.stats.telemetry.find(request_id)]

    def request_line(self, e: RequestEntry) -> pb.RequestLine:
        return pb.RequestLine(
            start_unix=self._dp.stats.telemetry.wall(e.start),
            sidecar_id=self._node_id,
            workload=self._workload or UNKNOWN,
            direction=e.direction,
            service=e.service,
            protocol=e.protocol,
            method=e.method,
            path=e.path,
            authority=e.authority,
            status=max(e.status, 0),
            grpc_status=e.grpc_status,
            response_flags=e.flags,
            reason=e.reason,
            duration_ms=e.duration_ms,
            request_bytes=max(e.request_bytes, 0),
            response_bytes=max(e.response_bytes, 0),
            upstream=e.upstream,
            request_id=e.request_id,
            trace_id=e.trace_id,
            peer_workload=e.peer_workload,
            attempts=max(e.attempts, 0),
        )

    def view(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "installed_at": self.installed_at,
            "destinations": sorted(self._destinations),
            "draining_destinations": sorted(self._draining),
            "last_wait_missing": self.last_wait_missing,
        }


def default_node_id(advertised: HostPort) -> str:
    """Unique per sidecar process, the same across its reconnects."""
    return f"sidecar-{advertised}-{os.getpid()}"

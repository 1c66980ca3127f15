"""The control plane's admin HTTP API and web dashboard.

Admin: /ready, /proxies, /config_dump, /stats/prometheus. Dashboard (``plexus.control.dashboard``, static
files served from the package, only the names in ``STATIC``): / and its assets, and the JSON it reads:
/api/stat (``StatResponse``), /api/graph (workloads, services and the edges between them), /api/history
(golden metrics every few seconds, ``plexus.control.history``) and /api/proxies (push status per sidecar).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

from google.protobuf.json_format import MessageToDict

from plexus.control.core import ControlCore, NodeView
from plexus.control.history import History, StatSource
from plexus.control.observe import HISTORY
from plexus.proto import control_pb2 as pb
from plexus.transport.control_http import ControlRequest, ControlResponse, Router

# path -> (package file, content type). Only these names are served: a request path is never joined to a
# directory, so there is nothing to traverse.
STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
STATIC_HEADERS: Final = {
    "cache-control": "no-cache",  # a control-plane upgrade must not leave an old script in the browser
    "x-content-type-options": "nosniff",
    # everything the page needs comes from this server; no inline script, nothing from elsewhere
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'",
}
DEFAULT_WINDOW: Final = 30.0  # seconds; `plexus stat`'s default
MAX_WINDOW: Final = HISTORY  # the observer keeps this many seconds of each sidecar's reports
UNKNOWN_WORKLOAD: Final = "unknown"  # a caller outside the mesh, or a sidecar started without --workload


def _dict(message: Any) -> dict[str, Any]:
    found: dict[str, Any] = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return found


def proxies_json(core: ControlCore) -> dict[str, Any]:
    return _dict(core.proxy_status())


def prometheus_text(core: ControlCore) -> str:
    push = core.push_state
    states = push.state_counts()
    lines = [
        "# HELP plexus_control_version The current policy version.",
        "# TYPE plexus_control_version gauge",
        f"plexus_control_version {core.version}",
        "# HELP plexus_control_resources Stored policy resources.",
        "# TYPE plexus_control_resources gauge",
        f"plexus_control_resources {len(core.get())}",
        "# HELP plexus_control_connected_sidecars Sidecars with an open stream.",
        "# TYPE plexus_control_connected_sidecars gauge",
        f"plexus_control_connected_sidecars {core.connected}",
        "# HELP plexus_control_sidecars Connected sidecars by sync state.",
        "# TYPE plexus_control_sidecars gauge",
    ]
    for state, count in states.items():
        lines.append(f'plexus_control_sidecars{{state="{state.value}"}} {count}')
    lines += [
        "# HELP plexus_control_pushes_total Snapshots pushed to sidecars.",
        "# TYPE plexus_control_pushes_total counter",
        f"plexus_control_pushes_total {push.pushes_total}",
        "# HELP plexus_control_acks_total Snapshots sidecars accepted.",
        "# TYPE plexus_control_acks_total counter",
        f"plexus_control_acks_total {push.acks_total}",
        "# HELP plexus_control_nacks_total Snapshots sidecars refused.",
        "# TYPE plexus_control_nacks_total counter",
        f"plexus_control_nacks_total {push.nacks_total}",
        "# HELP plexus_control_ignored_answers_total ACKs/NACKs of no push in flight (late or stale nonce).",
        "# TYPE plexus_control_ignored_answers_total counter",
        f"plexus_control_ignored_answers_total {push.ignored_answers_total}",
        "# HELP plexus_control_push_to_ack_seconds From a push to its ACK or NACK.",
        "# TYPE plexus_control_push_to_ack_seconds histogram",
    ]
    hist = push.push_to_ack
    for bound, count in zip((*hist.bounds, None), hist.cumulative(), strict=True):
        le = "+Inf" if bound is None else f"{bound:g}"
        lines.append(f'plexus_control_push_to_ack_seconds_bucket{{le="{le}"}} {count}')
    lines.append(f"plexus_control_push_to_ack_seconds_sum {hist.total:.6f}")
    lines.append(f"plexus_control_push_to_ack_seconds_count {hist.count}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- dashboard data


def _workload(name: str) -> str:
    return name or UNKNOWN_WORKLOAD


@dataclass(slots=True)
class _Flow:
    """Figures of EdgeStats summed: rates and counts add; the success rate is weighted by requests; the
    latencies are the highest of the parts that carried requests (an upper bound: percentiles do not add)."""

    requests: int = 0
    rps: float = 0.0
    failed: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    mtls: bool = True
    parts: int = 0
    peers: set[str] = field(default_factory=set)

    def add(self, e: pb.EdgeStat, peer: str) -> None:
        self.parts += 1
        self.peers.add(peer)
        self.requests += e.requests
        self.rps += e.rps
        self.failed += e.requests * (1.0 - e.success_rate)
        self.mtls = self.mtls and e.mtls
        if e.requests:
            self.p50 = max(self.p50, e.latency_p50_ms)
            self.p99 = max(self.p99, e.latency_p99_ms)

    def to_json(self) -> dict[str, Any]:
        success = 1.0 if self.requests == 0 else max(0.0, 1.0 - self.failed / self.requests)
        return {
            "requests": self.requests,
            "rps": self.rps,
            "success_rate": success,
            "latency_p50_ms": self.p50,
            "latency_p99_ms": self.p99,
            "mtls": self.mtls and self.parts > 0,
            "peers": sorted(self.peers),
        }


def graph_json(stat: pb.StatResponse, sidecars: Iterable[NodeView]) -> dict[str, Any]:
    """The service graph: workloads and services as nodes; ``call`` edges workload -> service (what callers
    sent, over every instance) and ``serve`` edges service -> workload (what each providing workload got).
    Connected sidecars add their workload and the services they provide or consume, so the graph shows the
    mesh before any traffic; figures come from ``stat`` (its edges, and its services for service nodes)."""
    workloads: dict[str, dict[str, Any]] = {}
    services: dict[str, dict[str, Any]] = {}
    calls: dict[tuple[str, str], _Flow] = {}
    serves: dict[tuple[str, str], _Flow] = {}

    def workload(name: str) -> dict[str, Any]:
        return workloads.setdefault(
            name, {"id": f"workload:{name}", "kind": "workload", "name": name, "sidecars": 0}
        )

    def service(name: str) -> dict[str, Any]:
        return services.setdefault(name, {"id": f"service:{name}", "kind": "service", "name": name})

    for view in sidecars:
        wl = _workload(view.node.workload)
        workload(wl)["sidecars"] += 1
        for name in view.node.provides:
            service(name)
            serves.setdefault((name, wl), _Flow())
        for name in view.node.consumes:
            service(name)
            calls.setdefault((wl, name), _Flow())
    for s in stat.services:
        node = service(s.service)
        node.update(_dict(s))
        # numbers, not the strings MessageToDict makes of uint64
        node["requests"], node["tcp_connections"] = int(s.requests), int(s.tcp_connections)
    for e in stat.edges:
        src, dst = _workload(e.source_workload), _workload(e.destination_workload)
        workload(src)
        service(e.destination_service)
        calls.setdefault((src, e.destination_service), _Flow()).add(e, dst)
        if e.destination_workload:
            workload(dst)
            serves.setdefault((e.destination_service, dst), _Flow()).add(e, src)
    for node in services.values():  # a service without a ServiceStat: no traffic seen in the window
        node.setdefault("service", node["name"])
        for key, value in _dict(pb.ServiceStat(success_rate=1.0)).items():
            node.setdefault(key, int(value) if key in ("requests", "tcp_connections") else value)
    edges = [
        {"id": f"{src}->{dst}", "kind": "call", "source": f"workload:{src}", "target": f"service:{dst}",
         "source_workload": src, "destination_service": dst, **flow.to_json()}
        for (src, dst), flow in sorted(calls.items())
    ] + [
        {"id": f"{svc}->{wl}", "kind": "serve", "source": f"service:{svc}", "target": f"workload:{wl}",
         "destination_service": svc, "destination_workload": wl, **flow.to_json()}
        for (svc, wl), flow in sorted(serves.items())
    ]  # fmt: skip
    return {
        "window_seconds": stat.window_seconds,
        "nodes": [workloads[k] for k in sorted(workloads)] + [services[k] for k in sorted(services)],
        "edges": edges,
    }


def dashboard_proxies_json(core: ControlCore) -> dict[str, Any]:
    """ProxyStatus per sidecar (as /proxies, with versions as numbers rather than the strings MessageToDict
    makes of uint64) plus its last report's sequence (0: none yet) and age (null: never)."""
    found = proxies_json(core)
    found["version"] = int(found["version"])
    now = time.monotonic()
    reports = {v.node.id: v for v in core.nodes()}
    for proxy in found["proxies"]:
        for key in ("sent_version", "acked_version", "nacked_version"):
            proxy[key] = int(proxy[key])
        proxy["node"]["applied_version"] = int(proxy["node"]["applied_version"])
        view = reports.get(proxy["node"]["id"])
        has_report = view is not None and view.report is not None
        proxy["report_sequence"] = int(view.report.sequence) if view and view.report else 0
        proxy["report_age_seconds"] = round(now - view.report_time, 3) if view and has_report else None
    return found


def _query_window(request: ControlRequest) -> float:
    raw = request.query.get("window", [""])[0]
    if not raw:
        return DEFAULT_WINDOW
    try:
        window = float(raw.removesuffix("s"))
    except ValueError:
        raise ValueError(f"window: {raw!r} is not a number of seconds") from None
    if not math.isfinite(window) or not 0 < window <= MAX_WINDOW:
        raise ValueError(f"window: {raw!r} must be above 0 and at most {MAX_WINDOW:g} seconds")
    return window


def _static(name: str, content_type: str) -> Callable[[ControlRequest], ControlResponse]:
    def serve(_: ControlRequest) -> ControlResponse:
        body = resources.files("plexus.control").joinpath("dashboard", name).read_bytes()
        return ControlResponse(200, body, content_type, dict(STATIC_HEADERS))

    return serve


def build_router(
    core: ControlCore,
    flags: Mapping[str, Any],
    serving: Callable[[], bool],
    *,
    stats: StatSource | None = None,
    history: History | None = None,
) -> Router:
    """The admin routes; ``stats`` (the report aggregator) and ``history`` feed the dashboard's API, which
    answers 503 without them."""
    router = Router()

    def ready(_: ControlRequest) -> ControlResponse:
        if not serving():
            return ControlResponse.json({"ready": False}, 503)
        return ControlResponse.json({"ready": True, "version": core.version})

    def proxies(_: ControlRequest) -> ControlResponse:
        return ControlResponse.json(proxies_json(core))

    def config_dump(_: ControlRequest) -> ControlResponse:
        return ControlResponse.json(
            {
                "flags": dict(flags),
                "version": core.version,
                "report_interval_ms": core.report_interval_ms,
                "stress": [{"host": s.host, "address": s.address, "percent": s.percent} for s in core.stress],
                "resources": core.resources_json(),
            }
        )

    def prometheus(_: ControlRequest) -> ControlResponse:
        return ControlResponse.text(
            prometheus_text(core), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    router.add("GET", "/ready", ready)
    router.add("GET", "/proxies", proxies)
    router.add("GET", "/config_dump", config_dump)
    router.add("GET", "/stats/prometheus", prometheus)
    _add_dashboard(router, core, stats, history)
    return router


def _add_dashboard(
    router: Router, core: ControlCore, stats: StatSource | None, history: History | None
) -> None:
    unavailable = ControlResponse.error(503, "this control plane aggregates no reports")

    def api_stat(request: ControlRequest) -> ControlResponse:
        window = _query_window(request)
        if stats is None:
            return unavailable
        service = request.query.get("service", [""])[0]
        return ControlResponse.json(_dict(stats.stat(service, window)))

    def api_graph(request: ControlRequest) -> ControlResponse:
        window = _query_window(request)
        if stats is None:
            return unavailable
        return ControlResponse.json(graph_json(stats.stat("", window), core.nodes()))

    def api_history(request: ControlRequest) -> ControlResponse:
        if history is None:
            return unavailable
        return ControlResponse.json(history.to_json(request.query.get("service", [""])[0]))

    def api_proxies(_: ControlRequest) -> ControlResponse:
        return ControlResponse.json(dashboard_proxies_json(core))

    router.add("GET", "/api/stat", api_stat)
    router.add("GET", "/api/graph", api_graph)
    router.add("GET", "/api/history", api_history)
    router.add("GET", "/api/proxies", api_proxies)
    for path, (name, content_type) in STATIC.items():
        router.add("GET", path, _static(name, content_type))

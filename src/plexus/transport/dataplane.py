"""The data plane of one sidecar: HTTP/1.1 and TCP listeners over shared clusters, pools and counters.

This is the face the sidecar's composition root uses. Everything here runs on one event loop (uvloop in
the sidecar); registry pushes arrive through ``update_service`` on that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from plexus.codec.http1 import Http1Limits, RequestHead
from plexus.codec.http1.limits import MAX_REQUEST_LINE
from plexus.config.resources import PolicySet
from plexus.config.route_config import RoutingConfig
from plexus.core import reasons
from plexus.core.address import HostPort
from plexus.discovery.model import Instance
from plexus.proxy import ClusterManager, DataPlaneStats, Endpoint, IngressRoutes, service_from_host
from plexus.proxy.adaptive import LoadSignal
from plexus.proxy.locality import compile_locality
from plexus.proxy.ratelimit import Gate, QuotaSource, compile_gates, render_metrics
from plexus.proxy.route_table import compile_routing
from plexus.proxy.telemetry import Telemetry
from plexus.proxy.tracing import DEFAULT_SAMPLE_PERCENT, Tracer
from plexus.transport.context import DataPlaneContext
from plexus.transport.h2_downstream import Http2Downstream, Http2Proxy
from plexus.transport.http_downstream import HttpDownstream
from plexus.transport.routes import Route, caller_header_line
from plexus.transport.rpc_proxy import (
    CODECS,
    FixedRouter,
    NamedRouter,
    RpcDownstream,
    RpcStats,
    RpcUpstreamPool,
)
from plexus.transport.sniffing import SniffingProtocol
from plexus.transport.tcp_proxy import TcpPipe
from plexus.transport.upstream import UpstreamPool

log = logging.getLogger("plexus.dataplane")

# Outlier sweeps run at most this often (each detector sweeps on its own interval; Istio's default is 10 s,
# tests use less), and only while some cluster has outlier detection.
OUTLIER_TICK_SECONDS: Final = 0.5
HOST_CACHE_SIZE: Final = 4096  # Host header → route entries; bounded because clients choose the Host


@dataclass(frozen=True, slots=True)
class DataPlaneSettings:
    connect_timeout: float = 1.0  # seconds
    request_timeout: float = 15.0  # whole upstream response
    idle_timeout: float = 300.0  # downstream keep-alive idle
    lb_policy: str = "round_robin"  # round_robin | least_request | random | weighted | ring_hash
    hash_header: str | None = None  # for ring_hash (consistent hash on a request header)
    hop_name: str = "sidecar"  # written into x-plexus-hop on local replies
    max_header_bytes: int = 60 * 1024
    max_headers: int = 100
    max_body_bytes: int | None = None  # None: stream any size
    sniff_timeout: float = 0.2  # per-service egress: bytes that decide nothing within this go TCP
    # Bolt/Dubbo upstream connections: a heartbeat after this long with nothing read (MOSN's keepalive
    # default is 15 s; 0 turns it off), and the connection closed when nothing answers within the timeout.
    rpc_heartbeat_interval: float = 15.0
    rpc_heartbeat_timeout: float = 5.0
    # HTTP/2 upstream connections: a PING after this long with nothing read, the connection failed (its
    # streams with it) when no ACK comes within the timeout; closed after being idle (no stream) this long.
    h2_ping_interval: float = 30.0
    h2_ping_timeout: float = 10.0
    h2_upstream_idle_timeout: float = 60.0
    # HTTP/2 engine of the h2c proxy: "ngh2" (libnghttp2 through the ngh2 binding: ~30x less codec CPU than
    # pure Python, nghttp2's own attack limits; bench/profiles/h2-NOTES.md) or "h2" (pure Python, the codec
    # of plexus.codec.http2, kept as the reference the tests run both engines against).
    h2_engine: str = "ngh2"
    # Who this sidecar is: the workload (sent to providers as x-plexus-caller, for per-caller limits) and
    # where it runs (UnitRouting keeps its traffic in its own unit or zone).
    workload: str = ""
    zone: str = ""
    unit: str = ""
    # Telemetry: the namespace in Istio's labels, and the percent of new traces sampled (Istio's 1%).
    namespace: str = "default"
    trace_sample_percent: float = DEFAULT_SAMPLE_PERCENT


class _SharedEgressRouter:
    """The service is the Host header minus its port."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.cache: dict[bytes, Route] = {}

    def resolve(self, head: RequestHead) -> Route | str:
        host = head.host
        if host is not None:
            route = self.cache.get(host)
            if route is not None:
                return route
        route = self.plane.egress_route(service_from_host(host))
        if route is None:
            return reasons.UNKNOWN_SERVICE
        if host is not None and len(self.cache) < HOST_CACHE_SIZE:
            self.cache[host] = route
        return route

    def unknown_hook(self, head: RequestHead) -> Coroutine[Any, Any, Route | str] | None:
        hook = self.plane.on_unknown_service
        service = service_from_host(head.host)
        if hook is None or service is None:
            return None
        return self._wait(hook, service, head)

    async def _wait(
        self, hook: Callable[[str], Awaitable[bool]], service: str, head: RequestHead
    ) -> Route | str:
        if not await hook(service):
            return reasons.UNKNOWN_SERVICE
        return self.resolve(head)


class _ServiceEgressRouter:
    def __init__(self, plane: DataPlane, service: str) -> None:
        self.plane = plane
        self.service = service

    def resolve(self, head: RequestHead) -> Route | str:
        route = self.plane.egress_route(self.service)
        return route if route is not None else reasons.NO_HEALTHY_UPSTREAM

    def unknown_hook(self, head: RequestHead) -> None:
        return None


class _IngressRouter:
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def resolve(self, head: RequestHead) -> Route | str:
        local = self.plane.local.resolve(head.service, head.host)
        if local is None or local.protocol in CODECS:  # a Bolt/Dubbo app is never sent HTTP
            return reasons.UNKNOWN_SERVICE
        return self.plane.ingress_route(local.service)

    def unknown_hook(self, head: RequestHead) -> None:
        return None


class DataPlane:
    def __init__(
        self, settings: DataPlaneSettings, on_unknown_service: Callable[[str], Awaitable[bool]] | None = None
    ) -> None:
        self.settings = settings
        self.on_unknown_service = on_unknown_service
        self.clusters = ClusterManager(settings.lb_policy, settings.hash_header)
        self.stats = DataPlaneStats(
            Telemetry(settings.workload, settings.namespace, tracer=Tracer(settings.trace_sample_percent))
        )
        limits = Http1Limits(
            settings.max_header_bytes, settings.max_headers, MAX_REQUEST_LINE, settings.max_body_bytes
        )
        loop: Any = None
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
        self.ctx = DataPlaneContext(loop, settings, self.stats, limits, UpstreamPool(self.stats, limits))
        if loop is not None:
            self.stats.telemetry.set_clock(loop.time())
        self.stats.pool_sizes = self._pool_sizes
        self.rpc_stats = RpcStats()
        self.rpc_pool = RpcUpstreamPool(self.ctx, self.rpc_stats)
        self.h2 = Http2Proxy(self.ctx)
        self.local = IngressRoutes()
        self._egress_routes: dict[str, Route] = {}
        self.routing = compile_routing(RoutingConfig())  # route tables, subsets, policies: none until set
        self.policy = PolicySet()  # the whole policy installed by set_policy
        # Rate limits: a Gate per protected local service; the global token client (set by the sidecar when
        # it has --control) and the machine load its sampler feeds (read by adaptive rules).
        self.gates: dict[str, Gate] = {}
        self.quota: QuotaSource | None = None
        self.load = LoadSignal()
        self._ingress_routes: dict[str, Route] = {}
        # Egress requests name their caller (x-plexus-caller: workload) so providers can limit per caller.
        self._caller_line = caller_header_line(settings.workload)
        self._shared_router = _SharedEgressRouter(self)
        self._rpc_routers: dict[str, NamedRouter] = {}
        self._ingress_router = _IngressRouter(self)
        self._servers: dict[str, asyncio.Server] = {}  # listener name → server
        self._listeners: dict[str, dict[str, Any]] = {}  # listener name → description for config_dump
        self._closed = False
        self._outlier_tick: asyncio.TimerHandle | None = None  # while some cluster has outlier detection

    # -- registry and config input ------------------------------------------------------------------

    def update_service(self, service: str, instances: Sequence[Instance]) -> None:
        removed = self.clusters.update(service, instances)
        for endpoint in removed:
            self.ctx.pool.drop_endpoint(endpoint.key)
            self.rpc_pool.drop_endpoint(endpoint.key)

    def configure_service(
        self, service: str, lb_policy: str | None = None, hash_header: str | None = None
    ) -> None:
        self.clusters.configure(service, lb_policy, hash_header)
        self._drop_egress_routes()  # a Route holds its cluster's balancer (Route.fast)

    def set_routing(self, config: RoutingConfig) -> None:
        """Install route tables, subsets and load-balancer policies at once (raises ConfigError, changing
        nothing, for a policy the balancers refuse); requests routed after this use them."""
        routing = compile_routing(config)
        self.clusters.set_routing(routing.subsets, routing.policies)
        self.clusters.set_traffic_policies(routing.pools, routing.outliers, routing.budgets)
        self._start_outlier_tick()
        self.routing = routing
        self._drop_egress_routes()

    def set_policy(self, policy: PolicySet) -> None:
        """Install a whole policy set (the control plane's snapshot, or a local policy file) at once: routing
        and resilience (VirtualService, DestinationRule), rate limits, unit routing and traffic shifts. Each
        part is compiled before anything changes, so a ConfigError leaves the last policy serving (the
        sidecar then NACKs). Parts are added below in this order; each part's owner edits only its lines."""
        routing = policy.routing()
        # -- compile (may raise ConfigError) --
        compiled = compile_routing(routing)
        locality = compile_locality(policy, unit=self.settings.unit, zone=self.settings.zone)
        gates = compile_gates(
            policy.rate_limits, self.quota, time.monotonic, load=self.load, previous=self.gates
        )
        # -- install (must not raise) --
        self.clusters.set_routing(compiled.subsets, compiled.policies)
        self.clusters.set_traffic_policies(compiled.pools, compiled.outliers, compiled.budgets)
        self._start_outlier_tick()
        self.clusters.set_locality(locality.wrap_for if locality else None)
        self.routing = compiled
        self.policy = policy
        self._drop_egress_routes()
        self.gates = gates
        self.load.wanted = any(gate.uses_load for gate in gates.values())
        for service, ingress in self._ingress_routes.items():
            ingress.gate = gates.get(service)
        # Ingress Routes stay (each holds its app's endpoint and idle connections); a part that changes
        # ingress behaviour updates the existing Route objects in place (and ingress_route, new ones).

    def _start_outlier_tick(self) -> None:
        """Sweep the outlier detectors every OUTLIER_TICK_SECONDS on the data plane's loop, while some
        cluster has one (a set_policy before the loop runs starts it with the first listener)."""
        if self._outlier_tick is not None or self._closed or not self.clusters.has_outliers:
            return
        loop = self.ctx.loop
        if loop is None:
            with contextlib.suppress(RuntimeError):
                loop = asyncio.get_running_loop()
        if loop is not None:
            self._outlier_tick = loop.call_later(OUTLIER_TICK_SECONDS, self._on_outlier_tick)

    def _on_outlier_tick(self) -> None:
        self._outlier_tick = None
        self.clusters.tick(self.clusters.clock())
        self._start_outlier_tick()

    def _drop_egress_routes(self) -> None:
        """Cached egress Routes hold a table and a balancer: the next request builds fresh ones."""
        self._egress_routes.clear()
        self._shared_router.cache.clear()

    def egress_route(self, service: str | None) -> Route | None:
        if service is None:
            return None
        route = self._egress_routes.get(service)
        if route is not None:
            return route
        cluster = self.clusters.get(service) or self.clusters.get(service.lower())
        if cluster is None:
            return None
        route = Route(
            cluster.service,
            self.stats.service(cluster.service, "egress"),
            cluster=cluster,
            table=self.routing.tables.get(cluster.service),
            clusters=self.clusters,
            caller_line=self._caller_line,
        )
        self._egress_routes[service] = route
        return route

    def ingress_route(self, service: str) -> Route | str:
        route = self._ingress_routes.get(service)
        if route is None:
            local = self.local.services.get(service)
            if local is None:
                return reasons.UNKNOWN_SERVICE
            endpoint = Endpoint(Instance(service=service, address=str(local.app), protocol=local.protocol))
            route = Route(service, self.stats.service(service, "ingress"), local=endpoint)
            route.gate = self.gates.get(service)
            self._ingress_routes[service] = route
        return route

    def set_local_service(self, service: str, protocol: str, app: HostPort) -> None:
        self._retire_ingress_route(service)
        self.local.set(service, protocol, app)

    def remove_local_service(self, service: str) -> None:
        self._retire_ingress_route(service)
        self.local.remove(service)

    def _retire_ingress_route(self, service: str) -> None:
        """The app's address changed or went away: idle connections to it close, busy ones after use."""
        old = self._ingress_routes.pop(service, None)
        if old is not None and old.local is not None:
            old.local.removed = True
            self.ctx.pool.drop_endpoint(old.local.key)
            self.rpc_pool.drop_endpoint(old.local.key)

    # -- protocol seams between listeners and the RPC proxy ---------------------------------------

    def rpc_factory(self, direction: str) -> Callable[[str], asyncio.Protocol] | None:
        """For a sniffing ``ingress`` or shared ``egress`` listener: a maker of the RPC (Bolt, Dubbo)
        protocol for a connection whose first bytes named ``protocol``; None while the listener serves no RPC
        (the connection is then closed).

        Ingress: a frame goes to the local service it names; egress: to the cluster it names (see
        ``rpc_proxy.service_names``); an unknown name gets NO_UPSTREAM (``unknown_service``) in protocol
        terms."""
        if direction not in ("ingress", "egress"):
            return None
        router = self._rpc_routers.get(direction)
        if router is None:
            find = self._find_rpc_ingress if direction == "ingress" else self._find_rpc_egress
            router = self._rpc_routers[direction] = NamedRouter(find)
        fallback = self.stats.service("unknown", direction)
        pool, named = self.rpc_pool, router

        def make(protocol: str) -> asyncio.Protocol:
            return RpcDownstream(pool, CODECS[protocol], "", named, fallback)

        return make

    def _find_rpc_egress(self, name: str, protocol: str) -> Route | None:
        route = self.egress_route(name)
        if route is None or (route.cluster is not None and route.cluster.protocol != protocol):
            return None
        return route

    def _find_rpc_ingress(self, name: str, protocol: str) -> Route | None:
        local = self.local.services.get(name)
        if local is None or local.protocol != protocol:
            return None
        route = self.ingress_route(name)
        return route if isinstance(route, Route) else None

    # -- listeners ----------------------------------------------------------------------------------

    def _loop(self) -> asyncio.AbstractEventLoop:
        if self.ctx.loop is None:
            self.ctx.loop = asyncio.get_running_loop()
            self.stats.telemetry.set_clock(self.ctx.loop.time())
        return self.ctx.loop

    async def _serve(
        self, name: str, factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, **info: Any
    ) -> HostPort:
        if name in self._servers:
            raise RuntimeError(f"listener {name} is already open")
        server = await self._loop().create_server(factory, host, port, reuse_address=True, backlog=1024)
        self._start_outlier_tick()  # a policy installed before the loop ran
        bound = server.sockets[0].getsockname()
        address = HostPort(str(bound[0]), int(bound[1]))
        self._servers[name] = server
        self._listeners[name] = {"address": str(address), **info}
        return address

    def _sniffing(self, direction: str, router: Any) -> Callable[[], asyncio.Protocol]:
        """A shared listener's factory: HTTP/1, h2c and (once served) Bolt/Dubbo, sniffed per connection."""
        ctx, h2, stats, loop = self.ctx, self.h2, self.stats, self._loop()
        timeout = self.settings.sniff_timeout

        def make_http() -> asyncio.Protocol:
            return HttpDownstream(ctx, router, direction)

        def make_h2() -> asyncio.Protocol:
            return Http2Downstream(h2, router, direction)

        def make_rpc(protocol: str) -> asyncio.Protocol | None:
            make = self.rpc_factory(direction)
            return make(protocol) if make is not None else None

        def factory() -> asyncio.Protocol:
            return SniffingProtocol(loop, timeout, make_http, None, make_rpc, make_h2, stats)

        return factory

    async def listen_shared_egress(self, host: str, port: int) -> HostPort:
        return await self._serve(
            "egress",
            self._sniffing("egress", self._shared_router),
            host,
            port,
            kind="shared_egress",
            protocol="sniffed",
        )

    async def listen_rpc_egress(self, protocol: str, host: str, port: int) -> HostPort:
        """A shared egress for one RPC protocol (MOSN's Bolt egress, 12220): each request goes to the
        cluster its frame names (``sofa_head_target_service`` for Bolt), multiplexed like a service port."""
        make = self.rpc_factory("egress")
        assert make is not None
        if protocol not in CODECS:
            raise ValueError(f"{protocol!r} is not an RPC protocol ({', '.join(sorted(CODECS))})")
        return await self._serve(
            f"egress:{protocol}", lambda: make(protocol), host, port, kind="rpc_egress", protocol=protocol
        )

    async def listen_service_egress(self, service: str, host: str, port: int) -> HostPort:
        ctx = self.ctx
        router = _ServiceEgressRouter(self, service)
        loop = self._loop()

        def make_http() -> asyncio.Protocol:
            return HttpDownstream(ctx, router, "egress")

        def make_tcp(initial: bytes = b"") -> asyncio.Protocol:
            def pick(exclude: Endpoint | None) -> Endpoint | None:
                cluster = self.clusters.get(service)
                return cluster.pick(exclude) if cluster is not None else None

            return TcpPipe(ctx, self.stats.tcp_service(service, "egress"), pick, retry=True, initial=initial)

        rpc_router = FixedRouter(lambda: self.egress_route(service), reasons.NO_HEALTHY_UPSTREAM)

        def make_rpc(protocol: str) -> asyncio.Protocol:
            stats = self.stats.service(service, "egress")
            return RpcDownstream(self.rpc_pool, CODECS[protocol], service, rpc_router, stats)

        def factory() -> asyncio.Protocol:
            cluster = self.clusters.get(service)
            protocol: str | None = None
            if cluster is not None:
                # A service that spoke Bolt/Dubbo keeps doing so when its endpoints are all gone: its callers
                # then get NO_UPSTREAM in their own protocol instead of a closed connection.
                protocol = cluster.protocol if cluster.endpoints or cluster.protocol in CODECS else None
            if protocol == "http":
                return make_http()
            if protocol == "grpc":
                return Http2Downstream(self.h2, router, "egress")
            if protocol is not None and protocol in CODECS:
                return make_rpc(protocol)
            if protocol is not None:
                return make_tcp()
            return SniffingProtocol(
                loop,
                self.settings.sniff_timeout,
                make_http,
                make_tcp,
                make_rpc,
                lambda: Http2Downstream(self.h2, router, "egress"),
                self.stats,
            )

        return await self._serve(
            f"egress:{service}", factory, host, port, kind="service_egress", service=service
        )

    async def close_service_egress(self, service: str) -> None:
        name = f"egress:{service}"
        server = self._servers.pop(name, None)
        self._listeners.pop(name, None)
        if server is not None:
            server.close()

    async def listen_ingress(self, host: str, port: int) -> HostPort:
        return await self._serve(
            "ingress",
            self._sniffing("ingress", self._ingress_router),
            host,
            port,
            kind="ingress",
            protocol="sniffed",
        )

    async def listen_tcp_ingress(self, service: str, host: str, port: int, app: HostPort) -> HostPort:
        ctx = self.ctx
        endpoint = Endpoint(Instance(service=service, address=str(app), protocol="tcp"))
        stats = self.stats.tcp_service(service, "ingress")

        def factory() -> asyncio.Protocol:
            return TcpPipe(ctx, stats, lambda exclude: endpoint, retry=False)

        return await self._serve(
            f"ingress:{service}", factory, host, port, kind="tcp_ingress", service=service, app=str(app)
        )

    async def listen_rpc_ingress(
        self, service: str, protocol: str, host: str, port: int, app: HostPort
    ) -> HostPort:
        """A dedicated ingress port for a Bolt/Dubbo provider: frames are decoded, heartbeats answered here,
        requests multiplexed to the local app over the shared RPC pool (the service's ingress route). Also
        maps the service on the shared ingress. Closed by ``close_tcp_ingress`` + ``remove_local_service``."""
        codec = CODECS[protocol]
        self.set_local_service(service, protocol, app)
        router = FixedRouter(lambda: self.ingress_route(service), reasons.UNKNOWN_SERVICE)
        stats = self.stats.service(service, "ingress")
        pool = self.rpc_pool

        def factory() -> asyncio.Protocol:
            return RpcDownstream(pool, codec, service, router, stats)

        return await self._serve(
            f"ingress:{service}",
            factory,
            host,
            port,
            kind="rpc_ingress",
            service=service,
            protocol=protocol,
            app=str(app),
        )

    async def close_tcp_ingress(self, service: str) -> None:
        """Stop accepting on the service's TCP ingress port; connections already piped run on."""
        name = f"ingress:{service}"
        server = self._servers.pop(name, None)
        self._listeners.pop(name, None)
        if server is not None:
            server.close()

    # -- views --------------------------------------------------------------------------------------

    def metrics_text(self) -> str:
        return (
            self.stats.render()
            + self.rpc_stats.render()
            + render_metrics(self.gates)
            + self.clusters.render_metrics()
        )

    def _pool_sizes(self) -> dict[tuple[str, str], int]:
        """Upstream pool sizes for plexus_upstream_pool_connections, read when /stats/prometheus renders."""
        pool, rpc = self.ctx.pool, self.rpc_pool
        return {
            ("http1", "open"): sum(pool.open.values()),
            ("http1", "idle"): sum(len(idle) for idle in pool.idle.values()),
            ("http1", "waiting"): sum(len(waiters) for waiters in pool.waiters.values()),
            ("rpc", "open"): len(rpc.conns),
            ("rpc", "draining"): len(rpc.draining),
        }

    def clusters_view(self) -> list[dict[str, Any]]:
        return self.clusters.view()

    def config_view(self) -> dict[str, Any]:
        return {
            "listeners": [{"name": name, **info} for name, info in self._listeners.items()],
            "local_services": [
                {"service": s.service, "protocol": s.protocol, "app": str(s.app)}
                for s in self.local.services.values()
            ],
            "settings": asdict(self.settings),
            "clusters": sorted(self.clusters.clusters),
            "routing": self.routing.view(),
            "rate_limits": {service: gate.view() for service, gate in sorted(self.gates.items())},
        }

    # -- shutdown -----------------------------------------------------------------------------------

    async def close(self, drain_seconds: float = 0.0) -> None:
        """Stop accepting; let in-flight requests finish for up to ``drain_seconds``; then close the rest."""
        if self._closed:
            return
        self._closed = True
        if self._outlier_tick is not None:
            self._outlier_tick.cancel()
            self._outlier_tick = None
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        ctx = self.ctx
        for conn in list(ctx.connections):
            conn.drain()
        self.h2.drain()
        if drain_seconds > 0 and ctx.loop is not None:
            deadline = ctx.loop.time() + drain_seconds
            while (ctx.connections or self.h2.connections) and ctx.loop.time() < deadline:
                await asyncio.sleep(0.02)
        for conn in list(ctx.connections):
            conn.abort()
        self.h2.close()
        for pipe in list(ctx.tcp_connections):
            assert isinstance(pipe, TcpPipe)
            pipe.close()
        ctx.pool.close_all()
        self.rpc_pool.close_all()
        await asyncio.sleep(0)  # let transports run their connection_lost callbacks

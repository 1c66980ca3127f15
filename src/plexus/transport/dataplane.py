"""The data plane of one sidecar: HTTP/1.1 and TCP listeners over shared clusters, pools and counters.

This is the face the sidecar's composition root uses. Everything here runs on one event loop (uvloop in
the sidecar); registry pushes arrive through ``update_service`` on that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from plexus.codec.http1 import Http1Limits, RequestHead
from plexus.codec.http1.limits import MAX_REQUEST_LINE
from plexus.core import reasons
from plexus.core.address import HostPort
from plexus.discovery.model import Instance
from plexus.proxy import Cluster, ClusterManager, DataPlaneStats, Endpoint, IngressRoutes, service_from_host
from plexus.transport.context import DataPlaneContext
from plexus.transport.http_downstream import HttpDownstream
from plexus.transport.routes import Route
from plexus.transport.rpc_proxy import CODECS, RpcDownstream, RpcStats, RpcUpstreamPool
from plexus.transport.sniffing import SniffingProtocol
from plexus.transport.tcp_proxy import TcpPipe
from plexus.transport.upstream import UpstreamPool

log = logging.getLogger("plexus.dataplane")

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
        if local is None:
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
        self.stats = DataPlaneStats()
        limits = Http1Limits(
            settings.max_header_bytes, settings.max_headers, MAX_REQUEST_LINE, settings.max_body_bytes
        )
        loop: Any = None
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
        self.ctx = DataPlaneContext(loop, settings, self.stats, limits, UpstreamPool(self.stats, limits))
        self.rpc_stats = RpcStats()
        self.rpc_pool = RpcUpstreamPool(self.ctx, self.rpc_stats)
        self.local = IngressRoutes()
        self._egress_routes: dict[str, Route] = {}
        self._ingress_routes: dict[str, Route] = {}
        self._shared_router = _SharedEgressRouter(self)
        self._ingress_router = _IngressRouter(self)
        self._servers: dict[str, asyncio.Server] = {}  # listener name → server
        self._listeners: dict[str, dict[str, Any]] = {}  # listener name → description for config_dump
        self._closed = False

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

    def egress_route(self, service: str | None) -> Route | None:
        if service is None:
            return None
        route = self._egress_routes.get(service)
        if route is not None:
            return route
        cluster = self.clusters.get(service) or self.clusters.get(service.lower())
        if cluster is None:
            return None
        route = Route(cluster.service, self.stats.service(cluster.service, "egress"), cluster=cluster)
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

    # -- protocol seams between listeners and the RPC proxy ---------------------------------------

    def rpc_factory(self, direction: str) -> Callable[[str], asyncio.Protocol] | None:
        """For a sniffing ``ingress`` or shared ``egress`` listener: a maker of the RPC (Bolt, Dubbo)
        protocol for a connection whose first bytes named ``protocol``; None while the listener serves no RPC
        (the connection is then closed)."""
        return None

    # -- listeners ----------------------------------------------------------------------------------

    def _loop(self) -> asyncio.AbstractEventLoop:
        if self.ctx.loop is None:
            self.ctx.loop = asyncio.get_running_loop()
        return self.ctx.loop

    async def _serve(
        self, name: str, factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, **info: Any
    ) -> HostPort:
        if name in self._servers:
            raise RuntimeError(f"listener {name} is already open")
        server = await self._loop().create_server(factory, host, port, reuse_address=True, backlog=1024)
        bound = server.sockets[0].getsockname()
        address = HostPort(str(bound[0]), int(bound[1]))
        self._servers[name] = server
        self._listeners[name] = {"address": str(address), **info}
        return address

    async def listen_shared_egress(self, host: str, port: int) -> HostPort:
        ctx, router = self.ctx, self._shared_router
        return await self._serve(
            "egress",
            lambda: HttpDownstream(ctx, router, "egress"),
            host,
            port,
            kind="shared_egress",
            protocol="http",
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

        def current_cluster() -> Cluster | None:
            return self.clusters.get(service)

        def make_rpc(protocol: str) -> asyncio.Protocol:
            stats = self.stats.service(service, "egress")
            return RpcDownstream(self.rpc_pool, CODECS[protocol], service, current_cluster, stats)

        def factory() -> asyncio.Protocol:
            cluster = self.clusters.get(service)
            protocol: str | None = None
            if cluster is not None:
                # A service that spoke Bolt/Dubbo keeps doing so when its endpoints are all gone: its callers
                # then get NO_UPSTREAM in their own protocol instead of a closed connection.
                protocol = cluster.protocol if cluster.endpoints or cluster.protocol in CODECS else None
            if protocol == "http":
                return make_http()
            if protocol is not None and protocol in CODECS:
                return make_rpc(protocol)
            if protocol is not None:
                return make_tcp()
            return SniffingProtocol(loop, self.settings.sniff_timeout, make_http, make_tcp, make_rpc)

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
        ctx, router = self.ctx, self._ingress_router
        return await self._serve(
            "ingress",
            lambda: HttpDownstream(ctx, router, "ingress"),
            host,
            port,
            kind="ingress",
            protocol="http",
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

    async def close_tcp_ingress(self, service: str) -> None:
        """Stop accepting on the service's TCP ingress port; connections already piped run on."""
        name = f"ingress:{service}"
        server = self._servers.pop(name, None)
        self._listeners.pop(name, None)
        if server is not None:
            server.close()

    # -- views --------------------------------------------------------------------------------------

    def metrics_text(self) -> str:
        return self.stats.render() + self.rpc_stats.render()

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
        }

    # -- shutdown -----------------------------------------------------------------------------------

    async def close(self, drain_seconds: float = 0.0) -> None:
        """Stop accepting; let in-flight requests finish for up to ``drain_seconds``; then close the rest."""
        if self._closed:
            return
        self._closed = True
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        ctx = self.ctx
        for conn in list(ctx.connections):
            conn.drain()
        if drain_seconds > 0 and ctx.loop is not None:
            deadline = ctx.loop.time() + drain_seconds
            while ctx.connections and ctx.loop.time() < deadline:
                await asyncio.sleep(0.02)
        for conn in list(ctx.connections):
            conn.abort()
        for pipe in list(ctx.tcp_connections):
            assert isinstance(pipe, TcpPipe)
            pipe.close()
        ctx.pool.close_all()
        self.rpc_pool.close_all()
        await asyncio.sleep(0)  # let transports run their connection_lost callbacks

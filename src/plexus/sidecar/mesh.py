"""What the local app asked of its sidecar: the services it provides and the services it consumes.

``LocalMesh`` is the glue between the local API, the data plane and the registry client:

- a provider registration maps a service to the app's port in the data plane, publishes one instance (the
  sidecar's advertised ingress, or a dedicated TCP ingress port) and starts one health-check task;
- a consumer registration opens a per-service egress port and subscribes through the registry client;
- the shared egress asks for services it does not know yet (``on_unknown_service``): subscribe on demand.

The registry client (``AsyncRegistryClient``) runs on the same loop and calls back on it, so everything here
runs on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from plexus.clients.registry_async import AsyncRegistryClient
from plexus.config.sidecar_settings import SidecarSettings
from plexus.core.address import HostPort, parse_host_port
from plexus.core.errors import ValidationError
from plexus.discovery.model import Instance, ServiceSet, validate_instance, validate_service_name
from plexus.sidecar.health import HealthChecker, HealthSpec
from plexus.sidecar.stats import SidecarStats
from plexus.transport.dataplane import DataPlane

UNKNOWN_SERVICE_WAIT: Final = (
    1.0  # how long a shared-egress request waits for a first set before unknown_service
)
# Provider protocols that get a dedicated ingress port (the one published). TCP is piped raw to the app;
# Bolt and Dubbo are decoded there, heartbeats answered by the sidecar, and requests multiplexed to the app
# over one id-rewriting connection (``DataPlane.listen_rpc_ingress``).
RAW_INGRESS_PROTOCOLS: Final = frozenset({"tcp", "bolt", "dubbo"})
RPC_INGRESS_PROTOCOLS: Final = frozenset({"bolt", "dubbo"})
MAX_ON_DEMAND: Final = 1024  # Host headers come from the app; cap the subscriptions they can create

# Why a service is watched: a per-service egress port, the shared egress on demand, or a subscription made
# through the MOSN-compatible API (routed by the shared Bolt egress, no port of its own).
Reason = Literal["consumer", "shared", "subscribed", "routes"]


class MeshError(Exception):
    """A local API request that cannot be served: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """A validated ``PUT /v1/providers/{service}`` body."""

    port: int
    protocol: str = "http"
    version: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    weight: int = 100
    health_path: str | None = None


@dataclass(slots=True)
class Provider:
    service: str
    spec: ProviderSpec
    app: HostPort
    instance: Instance
    checker: HealthChecker
    tcp_ingress: HostPort | None = None


def instance_json(instance: Instance) -> dict[str, Any]:
    data = dataclasses.asdict(instance)
    data["labels"] = dict(instance.labels)
    return data


def set_exists(service_set: ServiceSet) -> bool:
    """Whether a set names a service worth routing to: it has instances.

    The registry commits a set (with a version) for any service someone subscribes to, so an empty set may
    only mean "nobody ever published it"; the shared egress then answers unknown_service. Once a service had
    instances here, later empty sets are applied (the data plane answers no_healthy_upstream instead).
    """
    return bool(service_set.instances)


class LocalMesh:
    def __init__(
        self,
        config: SidecarSettings,
        dp: DataPlane,
        client: AsyncRegistryClient,
        advertised: HostPort,
        stats: SidecarStats,
    ) -> None:
        self._config = config
        self._dp = dp
        self._client = client
        self._advertised = advertised
        self._stats = stats
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()  # serialises registrations; the control path is not hot
        self.providers: dict[str, Provider] = {}
        self.consumers: dict[str, HostPort] = {}
        # service -> (listener, app, protocol)
        self._tcp_listeners: dict[str, tuple[HostPort, HostPort, str]] = {}
        self._reasons: dict[str, set[Reason]] = {}
        self._callbacks: dict[str, Callable[[ServiceSet], None]] = {}
        self._sets: dict[str, ServiceSet] = {}  # last set applied to the data plane, per service
        self._waiters: dict[str, list[asyncio.Future[ServiceSet]]] = {}
        self.draining = False
        self._published_once = False
        # DELETEd services, still routed while draining
        self._route_removals: dict[str, asyncio.Task[None]] = {}
        # Called (on the loop) when the watched or provided services change: the control-plane client then
        # sends a new Hello (plexus.sidecar.policy). None: nobody listens.
        self.on_change: Callable[[], None] | None = None

    # ----------------------------------------------------------------- providers
    async def put_provider(self, service: str, spec: ProviderSpec) -> Instance:
        if self.draining:
            raise MeshError(503, "the sidecar is draining; it takes no new providers")
        self._check_name(service)
        app = HostPort(self._config.app_host, spec.port)
        async with self._lock:
            self._cancel_route_removal(service)
            old = self.providers.get(service)
            tcp_ingress: HostPort | None = None
            listener = self._tcp_listeners.get(service)
            if (
                spec.protocol in RAW_INGRESS_PROTOCOLS
                and listener is not None
                and listener[1:] == (app, spec.protocol)
            ):
                tcp_ingress = listener[0]  # same app port and protocol: keep the port callers already know
            # A new TCP ingress port is known only once it listens; validate with the shared one meanwhile.
            port = tcp_ingress.port if tcp_ingress is not None else self._advertised.port
            instance = Instance(
                service=service,
                address=str(HostPort(self._advertised.host, port)),
                protocol=spec.protocol,
                version=spec.version,
                labels=dict(spec.metadata),
                zone=self._config.zone,
                unit=self._config.unit,
                weight=spec.weight,
                workload=self._config.workload,
                meshed=True,
            )
            try:
                validate_instance(instance)  # refuse before touching the data plane
            except ValidationError as exc:
                raise MeshError(400, exc.message, _body_field(exc.field)) from None
            if old is not None:
                await old.checker.stop()
                if old.tcp_ingress is None and spec.protocol in RAW_INGRESS_PROTOCOLS:
                    self._dp.remove_local_service(service)  # the old HTTP mapping goes
                if old.tcp_ingress is not None and spec.protocol not in RAW_INGRESS_PROTOCOLS:
                    await self._close_tcp_ingress(service)  # the old dedicated port goes
            try:
                if spec.protocol in RAW_INGRESS_PROTOCOLS:
                    if tcp_ingress is None:
                        await self._close_tcp_ingress(service)
                        host = self._config.ingress_address.host
                        if spec.protocol in RPC_INGRESS_PROTOCOLS:
                            tcp_ingress = await self._dp.listen_rpc_ingress(
                                service, spec.protocol, host, 0, app
                            )
                        else:
                            tcp_ingress = await self._dp.listen_tcp_ingress(service, host, 0, app)
                        self._tcp_listeners[service] = (tcp_ingress, app, spec.protocol)
                    instance = dataclasses.replace(
                        instance, address=str(HostPort(self._advertised.host, tcp_ingress.port))
                    )
                else:
                    self._dp.set_local_service(service, spec.protocol, app)
            except (ValueError, OSError, RuntimeError) as exc:
                self.providers.pop(service, None)
                self._republish()
                status = 400 if isinstance(exc, ValueError) else 409 if isinstance(exc, RuntimeError) else 500
                raise MeshError(status, f"data plane refused {service}: {exc}") from None
            checker = HealthChecker(
                service,
                HealthSpec(app, spec.health_path),
                self._config.health_interval,
                self._on_health_change,
                self._on_health_result,
            )
            self.providers[service] = Provider(service, spec, app, instance, checker, tcp_ingress)
            checker.start()
            self._republish()
            return instance

    async def delete_provider(self, service: str) -> bool:
        async with self._lock:
            provider = self.providers.pop(service, None)
            if provider is None:
                return False
            await provider.checker.stop()
            self._republish()
            # Withdraw first, route on for the drain time: a consumer that picked this instance just before
            # the registry's push still reaches the app instead of meeting unknown_service (the SDK's close
            # order).
            self._route_removals[service] = self._loop.create_task(self._remove_route_later(provider))
            return True

    async def _remove_route_later(self, provider: Provider) -> None:
        await asyncio.sleep(self._config.drain_time)
        async with self._lock:
            if self._route_removals.get(provider.service) is not asyncio.current_task():
                return  # re-registered meanwhile: the new registration owns the route
            del self._route_removals[provider.service]
            if provider.tcp_ingress is not None:
                await self._close_tcp_ingress(provider.service)
            if provider.tcp_ingress is None or provider.spec.protocol in RPC_INGRESS_PROTOCOLS:
                self._dp.remove_local_service(provider.service)

    def _cancel_route_removal(self, service: str) -> None:
        pending = self._route_removals.pop(service, None)
        if pending is not None:
            pending.cancel()

    async def _close_tcp_ingress(self, service: str) -> None:
        """Close the service's TCP ingress listener, where the data plane can.

        ``DataPlane`` has no ``close_tcp_ingress`` yet (asked of its owner); until it does, a withdrawn TCP
        service's listener stays open (nobody is told its port any more) and is reused by a later PUT with the
        same app port, while a PUT with another app port is refused by the data plane (409).
        """
        closer = getattr(self._dp, "close_tcp_ingress", None)
        if closer is not None and service in self._tcp_listeners:
            await closer(service)
            del self._tcp_listeners[service]

    def published(self) -> list[Instance]:
        if self.draining:
            return []
        return [p.instance for p in self.providers.values() if p.checker.healthy]

    def _republish(self) -> None:
        self._published_once = True
        self._changed()
        self._client.set_published(self.published())

    def _on_health_change(self, service: str, healthy: bool) -> None:
        self._stats.health_transitions[(service, "restored" if healthy else "withdrawn")] += 1
        self._republish()

    def _on_health_result(self, service: str, ok: bool) -> None:
        self._stats.health_checks[(service, "ok" if ok else "fail")] += 1

    async def withdraw_all(self) -> None:
        """Drain: publish nothing from now on and stop the health checks (they must not republish)."""
        self.draining = True
        if self._published_once:  # a pure consumer never opens a publish stream, not even to say "nothing"
            self._client.set_published([])
        for provider in list(self.providers.values()):
            await provider.checker.stop()

    # ----------------------------------------------------------------- consumers
    async def put_consumer(self, service: str, lb: str | None, hash_header: str | None) -> HostPort:
        self._check_name(service)
        async with self._lock:
            if lb is not None or hash_header is not None:
                try:
                    self._dp.configure_service(service, lb_policy=lb, hash_header=hash_header)
                except ValueError as exc:
                    raise MeshError(400, str(exc), "lb") from None
            address = self.consumers.get(service)
            if address is None:
                address = await self._open_egress(service)
                self.consumers[service] = address
            self._subscribe(service, "consumer")
            return address

    async def delete_consumer(self, service: str) -> bool:
        async with self._lock:
            address = self.consumers.pop(service, None)
            if address is None:
                return False
            await self._dp.close_service_egress(service)
            self._unsubscribe(service, "consumer")
            return True

    async def subscribe_service(self, service: str, wait: float = UNKNOWN_SERVICE_WAIT) -> ServiceSet | None:
        """Watch ``service`` without an egress port of its own (the shared RPC egress routes to it by the
        name in each frame); wait up to ``wait`` seconds for a first set with instances, and return it."""
        self._check_name(service)
        async with self._lock:
            self._subscribe(service, "subscribed")
        known = self._sets.get(service)
        if known is not None or wait <= 0:
            return known
        waiter: asyncio.Future[ServiceSet] = self._loop.create_future()
        self._waiters.setdefault(service, []).append(waiter)
        try:
            found = await asyncio.wait_for(waiter, wait)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(service)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
        return found if set_exists(found) else self._sets.get(service)

    async def unsubscribe_service(self, service: str) -> bool:
        """Undo ``subscribe_service``; False when it was not subscribed that way."""
        async with self._lock:
            if "subscribed" not in self._reasons.get(service, set()):
                return False
            self._unsubscribe(service, "subscribed")
            return True

    async def _open_egress(self, service: str) -> HostPort:
        host = parse_host_port(self._config.egress).host
        port_range = self._config.egress_port_range
        if port_range is None:
            return await self._dp.listen_service_egress(service, host, 0)
        taken = {a.port for a in self.consumers.values()}
        for port in range(port_range[0], port_range[1] + 1):
            if port in taken:
                continue
            with contextlib.suppress(OSError):
                return await self._dp.listen_service_egress(service, host, port)
        raise MeshError(503, f"no free port left in --egress-ports {self._config.egress_ports}")

    # ----------------------------------------------------------------- subscriptions
    def watch_route_destinations(self, services: frozenset[str]) -> None:
        """Keep exactly ``services`` watched for the routes file (destinations no app consumes itself)."""
        for service in [s for s, why in self._reasons.items() if "routes" in why and s not in services]:
            self._unsubscribe(service, "routes")
        for service in services:
            self._subscribe(service, "routes")

    def _subscribe(self, service: str, reason: Reason) -> None:
        reasons = self._reasons.setdefault(service, set())
        reasons.add(reason)
        if service in self._callbacks:
            return

        on_set = self._apply_set  # called on the loop; bound methods compare equal, so unwatch finds it
        self._callbacks[service] = on_set
        self._client.watch(service, on_set)  # calls on_set at once with a cached set, if the client has one
        self._changed()

    def _unsubscribe(self, service: str, reason: Reason) -> None:
        reasons = self._reasons.get(service)
        if reasons is None:
            return
        reasons.discard(reason)
        if reasons:
            return
        del self._reasons[service]
        callback = self._callbacks.pop(service, None)
        if callback is not None:
            self._client.unwatch(service, callback)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def watched_services(self) -> list[str]:
        """Every service watched, for any reason (what the control plane scopes this sidecar's policy by)."""
        return list(self._callbacks)

    async def wait_first_sets(self, services: frozenset[str], timeout: float) -> list[str]:
        """Wait up to ``timeout`` until each of ``services`` (watched already) has a set with instances in the
        data plane; returns those still without one. (The registry may answer a new subscription with an
        empty set before the publisher's set: that one does not end the wait.)"""
        deadline = self._loop.time() + timeout
        pending = [s for s in services if s not in self._sets]
        while pending:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                break
            waiters: list[tuple[str, asyncio.Future[ServiceSet]]] = []
            for service in pending:
                waiter: asyncio.Future[ServiceSet] = self._loop.create_future()
                self._waiters.setdefault(service, []).append(waiter)
                waiters.append((service, waiter))
            try:
                futures = [w for _, w in waiters]
                await asyncio.wait(futures, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for service, waiter in waiters:
                    waiter.cancel()
                    listed = self._waiters.get(service)
                    if listed is not None and waiter in listed:
                        listed.remove(waiter)
            pending = [s for s in pending if s not in self._sets]
        return pending

    def _apply_set(self, service_set: ServiceSet) -> None:
        service = service_set.service
        if service not in self._callbacks:
            return  # a late callback after unwatch
        last = self._sets.get(service)
        if last is not None and service_set.version <= last.version:
            if service_set.version == last.version:
                self._wake(service, service_set)
            return  # never an older set after a newer one
        if last is not None or set_exists(service_set):
            self._sets[service] = service_set
            self._dp.update_service(service, service_set.instances)
        self._wake(service, service_set)

    def _wake(self, service: str, service_set: ServiceSet) -> None:
        for waiter in self._waiters.pop(service, []):
            if not waiter.done():
                waiter.set_result(service_set)

    async def on_unknown_service(self, service: str) -> bool:
        """The shared egress saw a Host naming no known service: subscribe, wait briefly for a first set."""
        try:
            validate_service_name(service)
        except ValidationError:
            return False
        if service in self._sets:
            return True
        if service not in self._callbacks and len(self._reasons) >= MAX_ON_DEMAND:
            return False
        if "shared" not in self._reasons.get(service, set()):
            self._stats.on_demand_subscriptions += 1
        waiter: asyncio.Future[ServiceSet] = self._loop.create_future()
        self._waiters.setdefault(service, []).append(waiter)
        self._subscribe(service, "shared")
        try:
            found = set_exists(await asyncio.wait_for(waiter, UNKNOWN_SERVICE_WAIT))
        except TimeoutError:
            found = False
        finally:
            waiters = self._waiters.get(service)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
        if not found and service not in self._sets and not self._waiters.get(service):
            self._unsubscribe(service, "shared")  # do not keep watching every typo a caller sends
        return found or service in self._sets

    def service_view(self, service: str) -> dict[str, Any] | None:
        if service not in self._callbacks:
            return None  # not watched (the client may still cache an old set; it is not kept current)
        service_set = self._sets.get(service) or self._client.current(service)
        if service_set is None:
            return {"service": service, "version": 0, "state": "pending", "instances": []}
        return {
            "service": service,
            "version": service_set.version,
            "state": service_set.state.value,
            "instances": [instance_json(i) for i in service_set.instances],
        }

    # ----------------------------------------------------------------- views and shutdown
    def health_view(self) -> dict[str, bool]:
        return {s: p.checker.healthy for s, p in self.providers.items()}

    def view(self) -> dict[str, Any]:
        return {
            "providers": {
                s: {
                    "app": str(p.app),
                    "healthy": p.checker.healthy,
                    "last_check": p.checker.last_detail,
                    "instance": instance_json(p.instance),
                }
                for s, p in sorted(self.providers.items())
            },
            "consumers": {s: str(a) for s, a in sorted(self.consumers.items())},
            "subscriptions": {s: sorted(r) for s, r in sorted(self._reasons.items())},
            "draining": self.draining,
        }

    async def close(self) -> None:
        for service in list(self._route_removals):
            self._cancel_route_removal(service)
        for provider in list(self.providers.values()):
            await provider.checker.stop()
        for service, callback in list(self._callbacks.items()):
            self._client.unwatch(service, callback)
        self._callbacks.clear()
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        self._waiters.clear()

    @staticmethod
    def _check_name(service: str) -> None:
        try:
            validate_service_name(service)
        except ValidationError as exc:
            raise MeshError(400, exc.message, "service") from None


def _body_field(instance_field: str) -> str:
    """Name the request-body field behind an Instance field, so a 400 points at what the app sent."""
    if instance_field.startswith("labels"):
        return "metadata" + instance_field.removeprefix("labels")
    return instance_field

"""Direct mode: the app talks to the registry itself (no sidecar) and calls providers at their addresses.

The registry client (grpc) is imported here, and this module is imported only when direct mode is chosen, so
an app in mesh mode never loads grpc.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from plexus.clients.registry import RegistryClient
from plexus.core.address import HostPort
from plexus.discovery.model import Instance, validate_instance, validate_service_name
from plexus.sdk.subscription import Subscription

log = logging.getLogger("plexus.sdk")


class DirectBackend:
    mode = "direct"

    def __init__(self, registry: str, advertise_host: str, connect_wait: float) -> None:
        self.registry_address = registry
        self.advertise_host = advertise_host
        self._registry = RegistryClient(registry)
        self._registry.start()
        self._lock = threading.Lock()
        self._published: dict[str, Instance] = {}
        self._subscriptions: list[Subscription] = []
        deadline = time.monotonic() + connect_wait
        while not self._registry.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._registry.connected:
            # Not fatal: the client keeps reconnecting in the background and resends the published set.
            log.warning("plexus.sdk: registry %s not reachable yet; retrying in the background", registry)

    @property
    def connected(self) -> bool:
        return self._registry.connected

    def publish(self, service: str, port: int, protocol: str, version: str,
                metadata: Mapping[str, str]) -> Instance:
        address = str(HostPort(self.advertise_host, port))
        instance = validate_instance(Instance(service=service, address=address, protocol=protocol,
                                              version=version, labels=dict(metadata), meshed=False))
        with self._lock:
            self._published[service] = instance
            self._registry.set_published(list(self._published.values()))
        return instance

    def unpublish(self, service: str) -> bool:
        with self._lock:
            if self._published.pop(service, None) is None:
                return False
            self._registry.set_published(list(self._published.values()))
        return True

    def unpublish_all(self) -> list[str]:
        with self._lock:
            services = list(self._published)
            self._published.clear()
            self._registry.set_published([])
        return services

    def publish_errors(self) -> list[tuple[int, str, str]]:
        return self._registry.publish_errors()

    def subscribe(self, service: str, protocol: str | None = None) -> Subscription:
        validate_service_name(service)
        subscription = Subscription(service, protocol=protocol, on_close=self._unsubscribe)
        self._registry.watch(service, subscription._update)
        current = self._registry.current(service)
        if current is not None:
            subscription._update(current)
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
        self._registry.unwatch(subscription.service, subscription._update)

    def close(self) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()
        self._registry.close(withdraw=True)

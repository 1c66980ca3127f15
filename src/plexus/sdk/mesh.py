"""Mesh mode: the app talks only to its sidecar's local API; the sidecar publishes, subscribes and proxies.

Subscriptions poll ``GET /v1/services/{service}`` on one background thread: the local API is on loopback and a
poll costs a fraction of a millisecond, so polling keeps the SDK free of a streaming protocol.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Final

from plexus.discovery.model import Instance, ServiceSet, SetState, validate_service_name
from plexus.sdk.sidecar_api import SidecarApi
from plexus.sdk.subscription import Subscription

log = logging.getLogger("plexus.sdk")

POLL_INTERVAL: Final = 0.5  # how stale a mesh-mode Subscription may be; calls themselves never wait on it


class MeshBackend:
    mode = "mesh"

    def __init__(self, api: SidecarApi, poll_interval: float = POLL_INTERVAL) -> None:
        self.api = api
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._published: set[str] = set()
        self._egress: dict[str, str] = {}
        self._subscriptions: list[Subscription] = []
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        return self.api.probe(timeout=1.0)

    def publish(self, service: str, port: int, protocol: str, version: str,
                metadata: Mapping[str, str]) -> None:
        validate_service_name(service)
        self.api.put_provider(service, port, protocol, version, dict(metadata))
        with self._lock:
            self._published.add(service)

    def unpublish(self, service: str) -> bool:
        with self._lock:
            if service not in self._published:
                return False
            self._published.discard(service)
        self.api.delete_provider(service)
        return True

    def unpublish_all(self) -> list[str]:
        with self._lock:
            services = sorted(self._published)
            self._published.clear()
        for service in services:
            try:
                self.api.delete_provider(service)
            except Exception as exc:  # the sidecar may already be gone; it withdraws on its own exit
                log.warning("plexus.sdk: could not unpublish %s through the sidecar: %s", service, exc)
        return services

    def egress_for(self, service: str) -> str:
        """The sidecar's egress address for ``service`` (declares the app a consumer of it)."""
        validate_service_name(service)
        with self._lock:
            known = self._egress.get(service)
        if known is not None:
            return known
        address = self.api.put_consumer(service)
        with self._lock:
            self._egress[service] = address
        return address

    def subscribe(self, service: str, protocol: str | None = None) -> Subscription:
        egress = self.egress_for(service)
        subscription = Subscription(service, egress=egress, protocol=protocol, on_close=self._unsubscribe)
        self._refresh(subscription)
        with self._lock:
            self._subscriptions.append(subscription)
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll, name="plexus-sdk-mesh-poll", daemon=True)
                self._poller.start()
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval):
            with self._lock:
                subscriptions = list(self._subscriptions)
            for subscription in subscriptions:
                self._refresh(subscription)

    def _refresh(self, subscription: Subscription) -> None:
        try:
            reply = self.api.get_service(subscription.service)
        except Exception as exc:  # keep the last known set while the sidecar is unreachable
            log.debug("plexus.sdk: polling %s failed: %s", subscription.service, exc)
            return
        service_set = service_set_from_json(subscription.service, reply)
        if service_set is not None:
            subscription._update(service_set)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            subscriptions = list(self._subscriptions)
            poller = self._poller
        for subscription in subscriptions:
            subscription.close()
        if poller is not None:
            poller.join(timeout=2.0)


def service_set_from_json(service: str, reply: Mapping[str, Any]) -> ServiceSet | None:
    """The sidecar's ``{"version", "state", "instances"}`` as a ServiceSet; None before it knows any."""
    if "version" not in reply and "instances" not in reply:
        return None
    if reply.get("state") == "pending":
        return None  # the sidecar has asked the registry but has no answer yet
    instances = tuple(_instance_from_json(service, item) for item in reply.get("instances") or ()
                      if isinstance(item, Mapping) and isinstance(item.get("address"), str))
    state = SetState.RESTORED if str(reply.get("state", "")).lower() == "restored" else SetState.LIVE
    try:
        version = int(reply.get("version") or 0)
    except (TypeError, ValueError):
        version = 0
    return ServiceSet(service=service, version=version, instances=instances, state=state)


def _instance_from_json(service: str, item: Mapping[str, Any]) -> Instance:
    labels = item.get("labels") or item.get("metadata") or {}
    return Instance(
        service=str(item.get("service") or service),
        address=str(item["address"]),
        protocol=str(item.get("protocol") or "http"),
        version=str(item.get("version") or ""),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
        zone=str(item.get("zone") or ""),
        unit=str(item.get("unit") or ""),
        weight=int(item.get("weight") or 100),
        identity=str(item.get("identity") or ""),
        mtls=bool(item.get("mtls", False)),
        workload=str(item.get("workload") or ""),
        meshed=bool(item.get("meshed", False)),
    )

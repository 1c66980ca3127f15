"""Clusters: a service's endpoints, its load balancer and its counters; the manager that holds them all."""

from __future__ import annotations

from collections.abc import Sequence

from plexus.discovery.model import Instance
from plexus.proxy.endpoint import Endpoint
from plexus.proxy.lb import LoadBalancer, make_balancer


class Cluster:
    __slots__ = (
        "balancer",
        "by_key",
        "endpoints",
        "hash_header",
        "lb_policy",
        "protocol",
        "service",
        "service_header_line",
    )

    def __init__(self, service: str, lb_policy: str, hash_header: str | None = None) -> None:
        self.service = service
        self.lb_policy = lb_policy
        self.hash_header: bytes | None = hash_header.lower().encode() if hash_header else None
        self.balancer: LoadBalancer = make_balancer(lb_policy)
        self.endpoints: list[Endpoint] = []
        self.by_key: dict[str, Endpoint] = {}
        self.protocol = "http"
        # Precomputed once: the header that tells the provider sidecar's ingress which service this is.
        self.service_header_line = b"x-plexus-service: " + service.encode() + b"\r\n"

    def update(self, instances: Sequence[Instance]) -> list[Endpoint]:
        """Replace the endpoint set; return the endpoints that left (marked removed)."""
        fresh: dict[str, Endpoint] = {}
        for instance in instances:
            old = self.by_key.get(instance.address)
            if old is not None and old.instance == instance:
                fresh[instance.address] = old
            elif old is not None:
                old.instance = instance  # same address, new metadata: keep the counters
                old.weight = instance.weight
                fresh[instance.address] = old
            else:
                fresh[instance.address] = Endpoint(instance)
        removed = [e for key, e in self.by_key.items() if key not in fresh]
        for endpoint in removed:
            endpoint.removed = True
        self.by_key = fresh
        self.endpoints = list(fresh.values())
        if instances:
            self.protocol = instances[0].protocol
        self.balancer.rebuild(self.endpoints)
        return removed

    def configure(self, lb_policy: str | None, hash_header: str | None) -> None:
        if lb_policy is not None and lb_policy != self.lb_policy:
            self.balancer = make_balancer(lb_policy)
            self.lb_policy = lb_policy
            self.balancer.rebuild(self.endpoints)
        if hash_header is not None:
            self.hash_header = hash_header.lower().encode() or None

    def pick(self, exclude: Endpoint | None = None, hash_key: bytes | None = None) -> Endpoint | None:
        return self.balancer.pick(exclude, hash_key)

    def view(self) -> dict[str, object]:
        return {
            "service": self.service,
            "protocol": self.protocol,
            "lb_policy": self.lb_policy,
            "hash_header": self.hash_header.decode() if self.hash_header else None,
            "endpoints": [e.view() for e in self.endpoints],
        }


class ClusterManager:
    """All clusters of one sidecar, by service name."""

    def __init__(self, lb_policy: str = "round_robin", hash_header: str | None = None) -> None:
        make_balancer(lb_policy)  # refuse an unknown default policy now, not at the first request
        self.default_policy = lb_policy
        self.default_hash_header = hash_header
        self.clusters: dict[str, Cluster] = {}
        self._overrides: dict[str, tuple[str | None, str | None]] = {}

    def get(self, service: str) -> Cluster | None:
        return self.clusters.get(service)

    def update(self, service: str, instances: Sequence[Instance]) -> list[Endpoint]:
        cluster = self.clusters.get(service)
        if cluster is None:
            policy, header = self._overrides.get(service, (None, None))
            cluster = Cluster(service, policy or self.default_policy, header or self.default_hash_header)
            self.clusters[service] = cluster
        return cluster.update(instances)

    def configure(self, service: str, lb_policy: str | None = None, hash_header: str | None = None) -> None:
        if lb_policy is not None:
            make_balancer(lb_policy)
        self._overrides[service] = (lb_policy, hash_header)
        cluster = self.clusters.get(service)
        if cluster is not None:
            cluster.configure(lb_policy, hash_header)

    def view(self) -> list[dict[str, object]]:
        return [c.view() for c in self.clusters.values()]

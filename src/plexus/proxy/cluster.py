"""Clusters: a service's endpoints, its load balancer and its counters; the manager that holds them all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from plexus.discovery.model import Instance
from plexus.proxy.endpoint import Endpoint
from plexus.proxy.lb import LoadBalancer, make_balancer

VERSION_LABEL = "version"  # the label a subset selects an instance's release by, as Istio's pods carry it


def instance_labels(instance: Instance) -> dict[str, str]:
    """What subsets select on: the published metadata plus ``version`` (the instance's version field wins)."""
    labels = dict(instance.labels)
    if instance.version:
        labels[VERSION_LABEL] = instance.version
    return labels


def in_subset(instance: Instance, selector: Mapping[str, str]) -> bool:
    """An instance is in a subset when its labels include every label of the subset's selector."""
    if not selector:
        return True
    labels = instance.labels
    version = instance.version
    for key, value in selector.items():
        have = version if key == VERSION_LABEL and version else labels.get(key)
        if have != value:
            return False
    return True


class Cluster:
    __slots__ = (
        "_subset_balancers",
        "balancer",
        "by_key",
        "endpoints",
        "hash_header",
        "lb_policy",
        "protocol",
        "service",
        "service_header_line",
        "subsets",
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
        # Subsets (DestinationRule): name → label selector, and one balancer each over its endpoints, kept in
        # step with the endpoint list (rebuilt on every update, as the cluster's own balancer is).
        self.subsets: Mapping[str, Mapping[str, str]] = {}
        self._subset_balancers: dict[str, LoadBalancer] = {}

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
        self._rebuild_subsets()
        return removed

    def configure(self, lb_policy: str | None, hash_header: str | None) -> None:
        if lb_policy is not None and lb_policy != self.lb_policy:
            self.balancer = make_balancer(lb_policy)
            self.lb_policy = lb_policy
            self.balancer.rebuild(self.endpoints)
            self._subset_balancers.clear()
            self._rebuild_subsets()
        if hash_header is not None:
            self.hash_header = hash_header.lower().encode() or None

    def set_policy(self, lb_policy: str, hash_header: str | None) -> None:
        """Set both exactly (a DestinationRule's policy, or back to the defaults when it goes)."""
        self.configure(lb_policy, None)
        self.hash_header = hash_header.lower().encode() if hash_header else None

    def set_subsets(self, subsets: Mapping[str, Mapping[str, str]]) -> None:
        self.subsets = {name: dict(selector) for name, selector in subsets.items()}
        self._subset_balancers.clear()
        self._rebuild_subsets()

    def _rebuild_subsets(self) -> None:
        balancers = self._subset_balancers
        for name, selector in self.subsets.items():
            balancer = balancers.get(name)
            if balancer is None:
                balancers[name] = balancer = make_balancer(self.lb_policy)
            balancer.rebuild([e for e in self.endpoints if in_subset(e.instance, selector)])

    def subset_balancer(self, subset: str) -> LoadBalancer | None:
        """The balancer over a subset's endpoints; None for a subset this cluster does not define."""
        return self._subset_balancers.get(subset)

    def pick(self, exclude: Endpoint | None = None, hash_key: bytes | None = None) -> Endpoint | None:
        return self.balancer.pick(exclude, hash_key)

    def pick_subset(
        self, subset: str | None, exclude: Endpoint | None = None, hash_key: bytes | None = None
    ) -> Endpoint | None:
        """An endpoint of ``subset`` (the whole cluster for None); None when the subset has none."""
        if subset is None:
            return self.balancer.pick(exclude, hash_key)
        balancer = self._subset_balancers.get(subset)
        return balancer.pick(exclude, hash_key) if balancer is not None else None

    def holds(self, subset: str | None, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` belongs to this cluster's ``subset`` (a retry stays in its subset)."""
        if self.by_key.get(endpoint.key) is not endpoint:
            return False
        if subset is None:
            return True
        selector = self.subsets.get(subset)
        return selector is not None and in_subset(endpoint.instance, selector)

    def view(self) -> dict[str, object]:
        return {
            "service": self.service,
            "protocol": self.protocol,
            "lb_policy": self.lb_policy,
            "hash_header": self.hash_header.decode() if self.hash_header else None,
            "endpoints": [e.view() for e in self.endpoints],
            "subsets": {
                name: {
                    "labels": dict(selector),
                    "endpoints": [e.key for e in self.endpoints if in_subset(e.instance, selector)],
                }
                for name, selector in self.subsets.items()
            },
        }


class ClusterManager:
    """All clusters of one sidecar, by service name."""

    def __init__(self, lb_policy: str = "round_robin", hash_header: str | None = None) -> None:
        make_balancer(lb_policy)  # refuse an unknown default policy now, not at the first request
        self.default_policy = lb_policy
        self.default_hash_header = hash_header
        self.clusters: dict[str, Cluster] = {}
        self._overrides: dict[str, tuple[str | None, str | None]] = {}
        # From the routing config (DestinationRules): they win over an app's choice through the local API.
        self._subsets: Mapping[str, Mapping[str, Mapping[str, str]]] = {}
        self._policies: Mapping[str, tuple[str, str | None]] = {}

    def get(self, service: str) -> Cluster | None:
        return self.clusters.get(service)

    def _own_policy(self, service: str) -> tuple[str, str | None]:
        """The policy without a DestinationRule: the app's override, else the sidecar's default."""
        policy, header = self._overrides.get(service, (None, None))
        return policy or self.default_policy, header or self.default_hash_header

    def update(self, service: str, instances: Sequence[Instance]) -> list[Endpoint]:
        cluster = self.clusters.get(service)
        if cluster is None:
            policy, header = self._policies.get(service) or self._own_policy(service)
            cluster = Cluster(service, policy, header)
            cluster.set_subsets(self._subsets.get(service, {}))
            self.clusters[service] = cluster
        return cluster.update(instances)

    def configure(self, service: str, lb_policy: str | None = None, hash_header: str | None = None) -> None:
        if lb_policy is not None:
            make_balancer(lb_policy)
        self._overrides[service] = (lb_policy, hash_header)
        cluster = self.clusters.get(service)
        if cluster is not None and service not in self._policies:
            cluster.configure(lb_policy, hash_header)

    def set_routing(
        self,
        subsets: Mapping[str, Mapping[str, Mapping[str, str]]],
        policies: Mapping[str, tuple[str, str | None]],
    ) -> None:
        """Install every service's subsets and DestinationRule policy; services left out lose theirs."""
        for policy, _ in policies.values():
            make_balancer(policy)  # refuse an unknown policy before changing anything
        old_policies = self._policies
        self._subsets, self._policies = subsets, policies
        for service, cluster in self.clusters.items():
            cluster.set_subsets(subsets.get(service, {}))
            if service in policies:
                cluster.set_policy(*policies[service])
            elif service in old_policies:
                cluster.set_policy(*self._own_policy(service))

    def view(self) -> list[dict[str, object]]:
        return [c.view() for c in self.clusters.values()]

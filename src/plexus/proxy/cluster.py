"""Clusters: a service's endpoints, its load balancer and its counters; the manager that holds them all."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from plexus.config.route_config import ConnectionPool, OutlierDetection, RetryBudget
from plexus.discovery.model import Instance
from plexus.proxy.endpoint import Endpoint
from plexus.proxy.lb import LoadBalancer, make_balancer
from plexus.proxy.outlier import OutlierDetector
from plexus.proxy.resilience import OVERFLOW_KINDS, CircuitBreaker
from plexus.proxy.stats import _labels

# A locality policy (plexus.proxy.locality): given a maker of the cluster's plain balancer, the balancer to
# use instead (a wrapper that keeps traffic in the caller's unit, shifts it, or stress-tests one instance).
LocalityWrap = Callable[[Callable[[], LoadBalancer]], LoadBalancer]

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
    """A service's endpoints and balancers. ``breaker`` holds its connection-pool limits and retry budget
    (unlimited but for the default budget until a DestinationRule sets them); ``outlier`` its outlier
    detector (None without ``outlierDetection``). Ejected endpoints stay in ``endpoints`` but leave every
    balancer (``rebuild_balancers``) unless all of them are ejected (panic mode)."""

    __slots__ = (
        "_subset_balancers",
        "balancer",
        "breaker",
        "by_key",
        "endpoints",
        "hash_header",
        "lb_policy",
        "locality",
        "outlier",
        "protocol",
        "service",
        "service_header_line",
        "subsets",
    )

    def __init__(self, service: str, lb_policy: str, hash_header: str | None = None) -> None:
        self.service = service
        self.lb_policy = lb_policy
        self.hash_header: bytes | None = hash_header.lower().encode() if hash_header else None
        self.locality: LocalityWrap | None = None  # set_locality
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
        self.breaker = CircuitBreaker()
        self.outlier: OutlierDetector | None = None

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
                fresh[instance.address] = endpoint = Endpoint(instance)
                endpoint.outlier = self.outlier
        removed = [e for key, e in self.by_key.items() if key not in fresh]
        for endpoint in removed:
            endpoint.removed = True
        self.by_key = fresh
        self.endpoints = list(fresh.values())
        if instances:
            self.protocol = instances[0].protocol
        self.rebuild_balancers()
        return removed

    def usable(self, endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        """The endpoints a balancer over ``endpoints`` picks from: those not ejected by outlier detection,
        or all of them when every one is ejected (panic mode: Envoy routes to all hosts then)."""
        for endpoint in endpoints:
            if endpoint.ejected:
                kept = [e for e in endpoints if not e.ejected]
                return kept or endpoints
        return endpoints

    def rebuild_balancers(self) -> None:
        """Rebuild the cluster's balancer and its subsets' over the usable endpoints (after an endpoint
        update, an ejection or a return)."""
        self.balancer.rebuild(self.usable(self.endpoints))
        self._rebuild_subsets()

    def set_traffic_policy(
        self,
        pool: ConnectionPool | None,
        outlier: OutlierDetection | None,
        budget: RetryBudget | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Install a DestinationRule's connection pool, outlier detection and retry budget (None: defaults).
        The breaker is updated in place, so requests in flight end on the counters they started on."""
        self.breaker.configure(pool, budget)
        if outlier is None:
            if self.outlier is not None:
                self.outlier = None
                ejected = False
                for endpoint in self.endpoints:
                    ejected = ejected or endpoint.ejected
                    endpoint.ejected = False
                    endpoint.errors_in_row = endpoint.gateway_errors_in_row = 0
                    endpoint.outlier = None
                if ejected:
                    self.rebuild_balancers()
        elif self.outlier is None:
            self.outlier = detector = OutlierDetector(self, outlier, clock)
            for endpoint in self.endpoints:
                endpoint.outlier = detector
        elif self.outlier.config != outlier:
            self.outlier.configure(outlier)

    def configure(self, lb_policy: str | None, hash_header: str | None) -> None:
        if lb_policy is not None and lb_policy != self.lb_policy:
            make_balancer(lb_policy)  # refuse an unknown policy before changing anything
            self.lb_policy = lb_policy
            self.balancer = self._make_balancer()
            self._subset_balancers.clear()
            self.rebuild_balancers()
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
                balancers[name] = balancer = self._make_balancer()
            balancer.rebuild(self.usable([e for e in self.endpoints if in_subset(e.instance, selector)]))

    def _make_balancer(self) -> LoadBalancer:
        policy = self.lb_policy
        wrap = self.locality
        return make_balancer(policy) if wrap is None else wrap(lambda: make_balancer(policy))

    def set_locality(self, wrap: LocalityWrap | None) -> None:
        """Wrap the cluster's balancer and each subset's in a locality policy (None: plain balancers again);
        they are rebuilt over the current endpoints. Routes holding the old balancer must be dropped."""
        if wrap is None and self.locality is None:
            return
        self.locality = wrap
        self.balancer = self._make_balancer()
        self._subset_balancers.clear()
        self.rebuild_balancers()

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
            "circuit_breaker": self.breaker.view(),
            "outlier_detection": self.outlier.view() if self.outlier is not None else None,
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

    def __init__(
        self,
        lb_policy: str = "round_robin",
        hash_header: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        make_balancer(lb_policy)  # refuse an unknown default policy now, not at the first request
        self.clock = clock  # outlier detectors' clock (ejection times); tick(now) must use the same one
        self.default_policy = lb_policy
        self.default_hash_header = hash_header
        self.clusters: dict[str, Cluster] = {}
        self._overrides: dict[str, tuple[str | None, str | None]] = {}
        # From the routing config (DestinationRules): they win over an app's choice through the local API.
        self._subsets: Mapping[str, Mapping[str, Mapping[str, str]]] = {}
        self._policies: Mapping[str, tuple[str, str | None]] = {}
        # DestinationRules' trafficPolicy resilience parts, by service.
        self._pools: Mapping[str, ConnectionPool] = {}
        self._outliers: Mapping[str, OutlierDetection] = {}
        self._budgets: Mapping[str, RetryBudget] = {}
        # Locality policy (UnitRouting, TrafficShift, stress tests): service → its balancer wrapper, or None.
        self._locality: Callable[[str], LocalityWrap | None] | None = None

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
            if self._locality is not None:
                cluster.set_locality(self._locality(service))
            cluster.set_subsets(self._subsets.get(service, {}))
            self._apply_traffic_policy(service, cluster)
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

    def set_locality(self, locality: Callable[[str], LocalityWrap | None] | None) -> None:
        """Install the locality policy: ``locality(service)`` gives each cluster's wrapper (None: plain)."""
        self._locality = locality
        for service, cluster in self.clusters.items():
            cluster.set_locality(locality(service) if locality is not None else None)

    def set_traffic_policies(
        self,
        pools: Mapping[str, ConnectionPool],
        outliers: Mapping[str, OutlierDetection],
        budgets: Mapping[str, RetryBudget],
    ) -> None:
        """Install every service's connection pool limits, outlier detection and retry budget; services left
        out get the defaults (unlimited, no detection, Envoy's budget). Clusters made later get theirs too."""
        self._pools, self._outliers, self._budgets = dict(pools), dict(outliers), dict(budgets)
        for service, cluster in self.clusters.items():
            self._apply_traffic_policy(service, cluster)

    def _apply_traffic_policy(self, service: str, cluster: Cluster) -> None:
        cluster.set_traffic_policy(
            self._pools.get(service), self._outliers.get(service), self._budgets.get(service), self.clock
        )

    @property
    def has_outliers(self) -> bool:
        """Whether some service has outlier detection: the transport ticks the clusters only then."""
        return bool(self._outliers)

    def tick(self, now: float) -> None:
        """Run the outlier detectors' sweeps that are due (``now`` from ``self.clock``)."""
        for cluster in self.clusters.values():
            outlier = cluster.outlier
            if outlier is not None:
                outlier.tick(now)

    def view(self) -> list[dict[str, object]]:
        return [c.view() for c in self.clusters.values()]

    def render_metrics(self) -> str:
        """Circuit breaker and outlier detection counters (Prometheus text), for the clusters that have a
        limit, a detector or a count: without policy the output is unchanged (empty)."""
        shown = [
            c
            for c in self.clusters.values()
            if c.breaker.limited
            or c.outlier is not None
            or c.breaker.budget_exhausted
            or any(c.breaker.overflows.values())
        ]
        if not shown:
            return ""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("plexus_upstream_overflow_total", "counter", "Requests refused by a circuit breaker, by limit")
        for c in shown:
            for kind in OVERFLOW_KINDS:
                count = c.breaker.overflows[kind]
                out.append(f"plexus_upstream_overflow_total{_labels(service=c.service, limit=kind)} {count}")
        family("plexus_upstream_retry_budget_exhausted_total", "counter", "Retries the retry budget refused")
        for c in shown:
            count = c.breaker.budget_exhausted
            out.append(f"plexus_upstream_retry_budget_exhausted_total{_labels(service=c.service)} {count}")
        for name, help_text in (
            ("requests", "Requests in flight counted by the circuit breaker"),
            ("pending", "Requests waiting for a connection"),
            ("retries", "Retries in flight"),
        ):
            family(f"plexus_upstream_breaker_{name}", "gauge", help_text)
            for c in shown:
                value = getattr(c.breaker, name)
                out.append(f"plexus_upstream_breaker_{name}{_labels(service=c.service)} {value}")
        detected = [c for c in shown if c.outlier is not None]
        family("plexus_outlier_ejections_total", "counter", "Endpoints ejected by outlier detection")
        for c in detected:
            o = c.outlier
            assert o is not None
            for cause, count in (
                ("consecutive_5xx", o.ejections_consecutive_5xx),
                ("consecutive_gateway", o.ejections_gateway),
            ):
                out.append(f"plexus_outlier_ejections_total{_labels(service=c.service, cause=cause)} {count}")
        family("plexus_outlier_ejections_overflow_total", "counter", "Ejections the max ejection % refused")
        for c in detected:
            assert c.outlier is not None
            count = c.outlier.ejections_overflow
            out.append(f"plexus_outlier_ejections_overflow_total{_labels(service=c.service)} {count}")
        family("plexus_outlier_ejections_active", "gauge", "Endpoints ejected now")
        for c in detected:
            assert c.outlier is not None
            out.append(f"plexus_outlier_ejections_active{_labels(service=c.service)} {c.outlier.ejected_now}")
        return "\n".join(out) + "\n"

"""Compiled routes: what an HTTP listener needs to forward one request, built once, reused per request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Protocol

from plexus.codec.http1 import RequestHead
from plexus.core import reasons
from plexus.proxy import Cluster, ClusterManager, Endpoint, LoadBalancer, ServiceStats
from plexus.proxy.route_table import Destination, RouteTable, Rule
from plexus.proxy.stream import AUTHORITY, METHOD, PATH, HeaderLookup


class HeadLookup:
    """An HTTP/1.1 request as the stream shape (a ``HeaderLookup``): its headers plus ``:method``, ``:path``,
    ``:authority``. Nothing is built up front: a pseudo-header is read from the head, a header name is found
    by scanning the head's few pairs (first value wins), so a request routed or admitted on one or two names
    pays for those only."""

    __slots__ = ("head",)

    def __init__(self, head: RequestHead) -> None:
        self.head = head

    def __call__(self, name: str) -> str | None:
        head = self.head
        if name.startswith(":"):
            if name == METHOD:
                return head.method.decode("latin-1")
            if name == PATH:
                return head.target.decode("latin-1")
            if name == AUTHORITY:
                return head.host.decode("latin-1") if head.host is not None else None
            return None
        wanted = name.encode("latin-1")
        for raw_name, raw_value in head.headers:
            if raw_name == wanted or raw_name.lower() == wanted:
                return raw_value.decode("latin-1")
        return None


def lookup_from_head(head: RequestHead) -> HeaderLookup:
    """An HTTP/1.1 request as the stream shape: its headers plus ``:method``, ``:path``, ``:authority``."""
    return HeadLookup(head)


CALLER_HEADER: Final = b"x-plexus-caller"  # plexus.config.policy_kinds.CALLER_HEADER: who calls (workload)


def caller_header_line(workload: str) -> bytes:
    """``x-plexus-caller: <workload>\\r\\n`` for an egress sidecar's requests (b"" without a workload).
    Raises ValueError for a name with control characters (CR or LF would end the header early)."""
    workload = workload.strip()
    if not workload:
        return b""
    if any(ord(c) < 32 or ord(c) == 127 for c in workload):
        raise ValueError(f"workload {workload!r}: control characters cannot name a caller")
    return CALLER_HEADER + b": " + workload.encode() + b"\r\n"


class Route:
    """Where one service's requests go and what to add to them.

    With a route table (a VirtualService for the service) every pick first chooses a destination (service
    and subset), then an endpoint of it; without one, the cluster's balancer picks, as it always did, and
    ``fast`` hands HTTP/1.1 that balancer so its hot path makes no call here. A Route is cached by the data
    plane and rebuilt whenever its table, its cluster's balancer or its hash header change.
    """

    __slots__ = (
        "_extras",
        "_gate",
        "_policy",
        "caller_line",
        "cluster",
        "clusters",
        "connect_fail_reason",
        "extra",
        "fast",
        "first_always",
        "local",
        "policed",
        "retry",
        "rule_fast",
        "service",
        "stats",
        "table",
    )

    def __init__(
        self,
        service: str,
        stats: ServiceStats,
        *,
        cluster: Cluster | None = None,
        local: Endpoint | None = None,
        table: RouteTable | None = None,
        clusters: ClusterManager | None = None,
        caller_line: bytes = b"",
    ) -> None:
        self.service = service
        self.stats = stats
        self.cluster = cluster
        self.local = local  # ingress: the one local app endpoint
        self.table = table  # egress: the service's VirtualService, when one is installed
        self.clusters = clusters  # where a destination naming another service is found
        plain = cluster is not None and table is None and cluster.hash_header is None
        self.fast = cluster.balancer if plain and cluster is not None else None
        # The same for each rule that sends everything to this route's whole cluster (no subset, no other
        # service, no hash): its requests are picked by the cluster's balancer with no call here.
        self.rule_fast: dict[Rule, LoadBalancer] = {}
        # A table whose first rule matches everything (no ``match``): that rule, found without a lookup.
        self.first_always: Rule | None = None
        if table is not None and table.rules and not table.rules[0].matches:
            self.first_always = table.rules[0]
        if table is not None and cluster is not None and cluster.hash_header is None and local is None:
            for rule in table.rules:
                if len(rule.destinations) == 1:
                    (only,) = rule.destinations
                    if only.service == service and only.subset is None:
                        self.rule_fast[rule] = cluster.balancer
        # Egress tells the provider sidecar which service this is (and, when the sidecar knows its workload,
        # who calls: ``caller_line`` is ``x-plexus-caller: <workload>``, for per-caller limits); ingress adds
        # nothing. Precomputed: the hot path writes these bytes as they are.
        self.caller_line = caller_line if cluster is not None else b""
        self.extra = cluster.service_header_line + self.caller_line if cluster is not None else b""
        self._extras: dict[str, bytes] = {}  # another service's lines, for rules that send requests there
        self.retry = cluster is not None  # egress retries once on another endpoint; ingress has only one
        self.connect_fail_reason = (
            reasons.UPSTREAM_CONNECT_FAILED if cluster is not None else reasons.LOCAL_APP_UNAVAILABLE
        )
        # The request policy (timeout, retries, fault, mirror) when no rule of a route table gives one: a
        # plexus.proxy.resilience.RulePolicy, or None for the built-in behaviour (one retry elsewhere for a
        # failure before send, no timeout). A matched Rule's own ``policy`` wins.
        self._policy: Any = None
        # Admission (rate limits, adaptive shedding) for an ingress route: a plexus.proxy.ratelimit.Gate or
        # None. ``gate.admit(lookup)`` answers None (go on, then ``gate.done(started)`` once answered) or a
        # reason code for a local reply (reasons.RATE_LIMITED → 429, reasons.LOAD_SHED → 503).
        self._gate: Any = None
        # Whether a request of this route needs the policed path (HTTP/1.1 tests this one attribute): kept in
        # step by the ``policy`` and ``gate`` setters; a Route is rebuilt when its table or cluster changes.
        self.policed = False
        self._refresh()

    @property
    def policy(self) -> Any:
        return self._policy

    @policy.setter
    def policy(self, policy: Any) -> None:
        self._policy = policy
        self._refresh()

    @property
    def gate(self) -> Any:
        return self._gate

    @gate.setter
    def gate(self, gate: Any) -> None:
        self._gate = gate
        self._refresh()

    def _refresh(self) -> None:
        """Policed when a policy or gate is set, a rule carries a policy or sends requests to another
        service (whose cluster may have limits), or the cluster limits connections or detects outliers."""
        policed = self._policy is not None or self._gate is not None
        table = self.table
        if not policed and table is not None and self.local is None:
            policed = any(
                rule.policy is not None or any(d.service != self.service for d in rule.destinations)
                for rule in table.rules
            )
        cluster = self.cluster
        if not policed and cluster is not None:
            breaker = cluster.breaker
            policed = (
                breaker.limited
                or breaker.max_requests_per_connection is not None
                or breaker.connect_timeout is not None
                or cluster.outlier is not None
            )
        self.policed = policed

    def pick(self, head: RequestHead, exclude: Endpoint | None) -> Endpoint | str | None:
        """HTTP/1.1's pick (see ``pick_stream`` for the answers)."""
        if self.local is not None:
            return self.local
        if self.table is not None:
            return self.pick_stream(lookup_from_head(head), exclude)
        cluster = self.cluster
        assert cluster is not None
        key = None
        name = cluster.hash_header
        if name is not None:
            for n, v in head.headers:
                if n.lower() == name:
                    key = v
                    break
        return cluster.balancer.pick(exclude, key)

    def pick_stream(self, lookup: HeaderLookup, exclude: Endpoint | None) -> Endpoint | str | None:
        """The endpoint for one request of any protocol, routed on its stream headers (see proxy.stream).

        None: no healthy endpoint. A ``str``: a reason code from ``plexus.core.reasons`` for a local reply
        (e.g. no route of the service's route table matched). Same as ``pick_in(match_rule(lookup), ...)``."""
        if self.local is not None:
            return self.local
        if self.table is None:
            return self.pick_in(None, lookup, exclude)
        rule = self.table.match(lookup)
        if rule is None:
            return reasons.NO_ROUTE
        return self.pick_in(rule, lookup, exclude)

    def match_rule(self, lookup: HeaderLookup) -> Rule | str | None:
        """The route-table rule for a request, once per request (its ``policy`` applies to every try):
        None when the route has no table (or is an ingress route), ``reasons.NO_ROUTE`` when none matched."""
        table = self.table
        if table is None or self.local is not None:
            return None
        rule = table.match(lookup)
        return reasons.NO_ROUTE if rule is None else rule

    def policy_of(self, rule: Rule | None) -> Any:
        """The request policy for a request that matched ``rule`` (a RulePolicy, or None: built-in)."""
        if rule is not None and rule.policy is not None:
            return rule.policy
        return self.policy

    def pick_in(self, rule: Rule | None, lookup: HeaderLookup, exclude: Endpoint | None) -> Endpoint | None:
        """An endpoint for one try of a request that matched ``rule`` (None: no table): a retry passes the
        endpoint it moves away from as ``exclude``. None: no healthy endpoint."""
        if self.local is not None:
            return self.local
        cluster = self.cluster
        assert cluster is not None
        subset = None
        if rule is not None:
            destination = rule.draw() if exclude is None else self._retry_destination(rule, exclude)
            subset = destination.subset
            if destination.service != self.service:
                other = self.clusters.get(destination.service) if self.clusters is not None else None
                if other is None:
                    return None
                cluster = other
        key = None
        name = cluster.hash_header
        if name is not None:
            value = lookup(name.decode("latin-1"))
            key = value.encode("latin-1") if value is not None else None
        if subset is None:
            return cluster.balancer.pick(exclude, key)
        return cluster.pick_subset(subset, exclude, key)

    def _retry_destination(self, rule: Rule, exclude: Endpoint) -> Destination:
        """A retry stays in the destination (service and subset) of the endpoint it moves away from."""
        for destination in rule.destinations:
            if destination.service == self.service:
                cluster = self.cluster
            else:
                cluster = self.clusters.get(destination.service) if self.clusters is not None else None
            if cluster is not None and cluster.holds(destination.subset, exclude):
                return destination
        return rule.draw()

    def extra_for(self, endpoint: Endpoint) -> bytes:
        """The header lines to add for ``endpoint``: names its own service when a route table sent the
        request to another service than this route's (the provider sidecar routes on that header)."""
        service = endpoint.instance.service
        if service == self.service or self.clusters is None:
            return self.extra
        return self.extra_named(service)

    def extra_named(self, service: str) -> bytes:
        """The header lines for a request this route sends to ``service`` (a rule's destination, a mirror)."""
        if service == self.service or self.clusters is None:
            return self.extra
        extra = self._extras.get(service)
        if extra is None:
            other = self.clusters.get(service)
            if other is None:
                return self.extra
            extra = self._extras[service] = other.service_header_line + self.caller_line
        return extra

    def cluster_of(self, endpoint: Endpoint) -> Cluster | None:
        """The cluster ``endpoint`` was picked from (another service's when a rule sent it there); None for
        the ingress route's local endpoint."""
        cluster = self.cluster
        if cluster is None:
            return None
        service = endpoint.instance.service
        if service == cluster.service or self.clusters is None:
            return cluster
        return self.clusters.get(service)


class Router(Protocol):
    """Resolve a request to a route, or to a reason code for a local reply."""

    def resolve(self, head: RequestHead) -> Route | str: ...

    def unknown_hook(self, head: RequestHead) -> Coroutine[Any, Any, Route | str] | None:
        """For a request ``resolve`` could not route: a way to wait for a route, or None."""
        ...


UnknownServiceHook = Callable[[str], Awaitable[bool]]

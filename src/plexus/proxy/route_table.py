"""Route tables: a service's VirtualService compiled into rules that pick a destination per request.

A request of any protocol is seen as a ``HeaderLookup`` (see ``plexus.proxy.stream``): header matches read
any lower-case header name or pseudo-header (``:service``, ``:rpc-method``, ``:rpc-version``, ``:authority``),
``uri`` matches ``:path`` and ``method`` matches ``:method``. The first rule whose match holds wins (a rule
without ``match`` always holds); its destinations are chosen by weight with one random draw over a
precomputed cumulative table. ``choose`` answers None when no rule matched: the caller replies ``no_route``.

Compiled once per config (``compile_routing``), immutable afterwards; matching allocates nothing but what the
lookup itself builds.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from typing import Any

from plexus.config.route_config import (
    ConnectionPool,
    HttpMatch,
    OutlierDetection,
    RetryBudget,
    RoutingConfig,
    StringMatch,
    VirtualService,
)
from plexus.core.errors import ConfigError
from plexus.proxy.resilience import RulePolicy, compile_rule_policy
from plexus.proxy.stream import METHOD, PATH, HeaderLookup

Predicate = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a rule sends a request: a service's cluster, narrowed to a subset when one is named."""

    service: str
    subset: str | None = None


def _predicate(match: StringMatch, strip_query: bool = False) -> Predicate:
    """A fast test for one StringMatch; ``uri`` exact and regex see the path without its query (Envoy)."""
    value = match.value
    if match.kind == "prefix":

        def prefix(text: str) -> bool:
            return text.startswith(value)

        return prefix
    if match.kind == "exact":
        if strip_query:
            return lambda text: text.partition("?")[0] == value
        return value.__eq__  # str.__eq__ answers a bool for the str values a lookup gives
    regex = match.regex
    assert regex is not None
    if strip_query:
        return lambda text: regex.fullmatch(text.partition("?")[0]) is not None
    return lambda text: regex.fullmatch(text) is not None


class _Match:
    """One ``match[]`` entry: (lookup name, predicate) pairs that must all hold."""

    __slots__ = ("conditions",)

    def __init__(self, match: HttpMatch) -> None:
        conditions: list[tuple[str, Predicate]] = []
        if match.method is not None:
            conditions.append((METHOD, _predicate(match.method)))
        if match.uri is not None:
            conditions.append((PATH, _predicate(match.uri, strip_query=True)))
        conditions.extend((name, _predicate(m)) for name, m in match.headers)
        self.conditions = tuple(conditions)

    def holds(self, lookup: HeaderLookup) -> bool:
        for name, predicate in self.conditions:
            value = lookup(name)
            if value is None or not predicate(value):
                return False
        return True


class Rule:
    """One ``http[]`` rule: its matches and its weighted destinations."""

    __slots__ = ("_random", "cumulative", "destinations", "matches", "name", "policy", "total")

    def __init__(
        self,
        name: str | None,
        matches: tuple[_Match, ...],
        weighted: list[tuple[Destination, int]],
        rng: random.Random,
    ) -> None:
        self.name = name
        self.matches = matches
        self.destinations = tuple(d for d, _ in weighted)
        self.cumulative = list(accumulate(w for _, w in weighted))
        self.total = self.cumulative[-1] if self.cumulative else 0
        self._random = rng.random
        # The rule's request policy (timeout, retries, fault, mirror) compiled from the HttpRoute, or None
        # when the rule sets none of them (the transports then keep their built-in behaviour).
        self.policy: RulePolicy | None = None

    def holds(self, lookup: HeaderLookup) -> bool:
        matches = self.matches
        if not matches:
            return True
        return any(m.holds(lookup) for m in matches)

    def draw(self) -> Destination:
        destinations = self.destinations
        if len(destinations) == 1:
            return destinations[0]
        # bisect_right skips weight-0 destinations: their cumulative bound equals the one before.
        return destinations[bisect.bisect_right(self.cumulative, self._random() * self.total)]


class RouteTable:
    """A service's rules, in order."""

    __slots__ = ("rules", "service", "source")

    def __init__(self, service: str, rules: tuple[Rule, ...], source: str = "") -> None:
        self.service = service
        self.rules = rules
        self.source = source

    def match(self, lookup: HeaderLookup) -> Rule | None:
        for rule in self.rules:
            if rule.holds(lookup):
                return rule
        return None

    def choose(self, lookup: HeaderLookup) -> Destination | None:
        rule = self.match(lookup)
        return None if rule is None else rule.draw()


def compile_table(service: str, vs: VirtualService, rng: random.Random | None = None) -> RouteTable:
    rng = rng or random.Random()
    rules = []
    for index, http in enumerate(vs.http):
        weights_given = any(d.weight is not None for d in http.route)
        weighted = [
            (Destination(d.host, d.subset), (d.weight or 0) if weights_given else 1) for d in http.route
        ]
        if weights_given and len(weighted) == 1 and weighted[0][1] == 0:
            weighted = [(weighted[0][0], 1)]  # one destination takes all traffic whatever its weight says
        rule = Rule(http.name, tuple(_Match(m) for m in http.match), weighted, rng)
        try:
            rule.policy = compile_rule_policy(http, rng)
        except ConfigError as exc:  # say which resource and rule, as the parser's problems do
            where = f"{vs.source + ': ' if vs.source else ''}VirtualService {vs.name}: spec.http[{index}]"
            raise ConfigError(f"{where}.{exc.where}", exc.message) from None
        rules.append(rule)
    return RouteTable(service, tuple(rules), vs.source)


@dataclass(frozen=True, slots=True)
class CompiledRouting:
    """What a sidecar installs at once: route tables, subsets, load-balancer policies and the resilience
    parts of DestinationRules (connection pool limits, outlier detection, retry budget), by service."""

    tables: Mapping[str, RouteTable]
    subsets: Mapping[str, Mapping[str, Mapping[str, str]]]  # service → subset name → labels
    policies: Mapping[str, tuple[str, str | None]]  # service → (lb policy, hash header)
    config: RoutingConfig
    pools: Mapping[str, ConnectionPool] = field(default_factory=dict)
    outliers: Mapping[str, OutlierDetection] = field(default_factory=dict)
    budgets: Mapping[str, RetryBudget] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        """For /config_dump: the resources as installed and what they compiled to."""
        return {
            "file": self.config.file,
            "services": {
                service: {
                    "rules": [
                        {
                            "name": rule.name,
                            "matches": len(rule.matches),
                            "policy": rule.policy.view() if rule.policy is not None else None,
                            "destinations": [
                                {"host": d.service, "subset": d.subset, "weight_bound": bound}
                                for d, bound in zip(rule.destinations, rule.cumulative, strict=True)
                            ],
                        }
                        for rule in table.rules
                    ]
                }
                for service, table in sorted(self.tables.items())
            },
            "subsets": {s: {n: dict(labels) for n, labels in v.items()} for s, v in self.subsets.items()},
            "policies": {s: {"lb": p, "hash_header": h} for s, (p, h) in self.policies.items()},
            "connection_pools": {s: asdict(p) for s, p in self.pools.items()},
            "outlier_detection": {s: asdict(o) for s, o in self.outliers.items()},
            "retry_budgets": {s: asdict(b) for s, b in self.budgets.items()},
            "resources": self.config.to_dict(),
        }


EMPTY_CONFIG = RoutingConfig()


def compile_routing(config: RoutingConfig, rng: random.Random | None = None) -> CompiledRouting:
    rng = rng or random.Random()
    tables: dict[str, RouteTable] = {}
    for vs in config.virtual_services:
        for host in vs.hosts:
            tables[host] = compile_table(host, vs, rng)
    subsets: dict[str, dict[str, Mapping[str, str]]] = {}
    policies: dict[str, tuple[str, str | None]] = {}
    pools: dict[str, ConnectionPool] = {}
    outliers: dict[str, OutlierDetection] = {}
    budgets: dict[str, RetryBudget] = {}
    for dr in config.destination_rules:
        subsets[dr.host] = {s.name: dict(s.labels) for s in dr.subsets}
        if dr.load_balancer is not None:
            policies[dr.host] = (dr.load_balancer.lb_policy, dr.load_balancer.hash_header)
        if dr.connection_pool is not None:
            pools[dr.host] = dr.connection_pool
        if dr.outlier_detection is not None:
            outliers[dr.host] = dr.outlier_detection
        if dr.retry_budget is not None:
            budgets[dr.host] = dr.retry_budget
    return CompiledRouting(tables, subsets, policies, config, pools, outliers, budgets)

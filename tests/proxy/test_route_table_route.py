"""Route.pick_stream and Route.pick with a route table: subsets, other services, no_route, retries."""

from __future__ import annotations

import random
from collections import Counter

from plexus.codec.http1 import RequestHead
from plexus.config.route_config import parse_routes
from plexus.core import reasons
from plexus.discovery.model import Instance
from plexus.proxy import ClusterManager, Endpoint
from plexus.proxy.route_table import compile_routing
from plexus.proxy.stats import DataPlaneStats
from plexus.proxy.stream import lookup_from_mapping
from plexus.transport.routes import Route, lookup_from_head

ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop]
  http:
  - match: [{headers: {x-canary: {exact: "1"}}}]
    route: [{destination: {host: shop, subset: v2}}]
  - match: [{headers: {":rpc-method": {exact: refund}}}]
    route: [{destination: {host: refunds}}]
  - match: [{headers: {x-to: {exact: nowhere}}}]
    route: [{destination: {host: ghost}}]
  - match: [{uri: {prefix: /api}}]
    route:
    - {destination: {host: shop, subset: v1}, weight: 80}
    - {destination: {host: shop, subset: v2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shop}
spec:
  host: shop
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def _setup() -> tuple[ClusterManager, Route]:
    routing = compile_routing(parse_routes(ROUTES, "r.yaml"), random.Random(5))
    manager = ClusterManager()
    manager.set_routing(routing.subsets, routing.policies)
    manager.update(
        "shop",
        [
            Instance("shop", "10.0.0.1:80", version="v1"),
            Instance("shop", "10.0.0.2:80", version="v1"),
            Instance("shop", "10.0.0.3:80", version="v2"),
        ],
    )
    manager.update("refunds", [Instance("refunds", "10.0.1.1:80")])
    cluster = manager.get("shop")
    assert cluster is not None
    stats = DataPlaneStats().service("shop", "egress")
    route = Route("shop", stats, cluster=cluster, table=routing.tables["shop"], clusters=manager)
    return manager, route


def _key(picked: Endpoint | str | None) -> str | None:
    return picked.key if isinstance(picked, Endpoint) else picked


def test_a_route_with_a_table_has_no_fast_path_and_one_without_has() -> None:
    manager, route = _setup()
    assert route.fast is None
    cluster = manager.get("shop")
    assert cluster is not None
    plain = Route("shop", route.stats, cluster=cluster, clusters=manager)
    assert plain.fast is cluster.balancer
    assert _key(plain.pick_stream(lookup_from_mapping({"x-canary": "1"}), None)) is not None


def test_header_match_picks_from_the_subset() -> None:
    _, route = _setup()
    lookup = lookup_from_mapping({"x-canary": "1"})
    assert {_key(route.pick_stream(lookup, None)) for _ in range(20)} == {"10.0.0.3:80"}


def test_no_rule_matched_is_the_no_route_reason() -> None:
    _, route = _setup()
    assert route.pick_stream(lookup_from_mapping({":path": "/other"}), None) == reasons.NO_ROUTE == "no_route"


def test_a_destination_of_another_service_picks_from_its_cluster() -> None:
    _, route = _setup()
    picked = route.pick_stream(lookup_from_mapping({":rpc-method": "refund"}), None)
    assert isinstance(picked, Endpoint) and picked.key == "10.0.1.1:80"
    assert route.extra_for(picked) == b"x-plexus-service: refunds\r\n"
    # an unknown service: no endpoint (the caller answers no_healthy_upstream)
    assert route.pick_stream(lookup_from_mapping({"x-to": "nowhere"}), None) is None


def test_weighted_split_over_subsets() -> None:
    _, route = _setup()
    lookup = lookup_from_mapping({":path": "/api/orders"})
    counts = Counter(_key(route.pick_stream(lookup, None)) for _ in range(10_000))
    v2 = counts["10.0.0.3:80"]
    assert abs(v2 - 2000) < 200, counts
    assert abs(counts["10.0.0.1:80"] - counts["10.0.0.2:80"]) < 200, counts  # round robin inside v1


def test_a_retry_stays_in_the_subset_of_the_endpoint_it_leaves() -> None:
    manager, route = _setup()
    lookup = lookup_from_mapping({":path": "/api/orders"})
    shop = manager.get("shop")
    assert shop is not None
    first_v1 = shop.by_key["10.0.0.1:80"]
    for _ in range(200):  # the weighted draw would send 20% to v2; a retry never leaves v1
        assert _key(route.pick_stream(lookup, first_v1)) == "10.0.0.2:80"
    only_v2 = shop.by_key["10.0.0.3:80"]
    canary = lookup_from_mapping({"x-canary": "1"})
    assert route.pick_stream(canary, only_v2) is only_v2  # nothing else in v2: the balancer's own choice


def test_http1_pick_reads_pseudo_headers_from_the_head() -> None:
    _, route = _setup()

    def head(target: bytes, headers: list[tuple[bytes, bytes]]) -> RequestHead:
        return RequestHead(b"GET", target, "1.1", headers, b"shop", None, False, True, False, None, None)

    assert _key(route.pick(head(b"/", [(b"X-Canary", b"1")]), None)) == "10.0.0.3:80"
    assert route.pick(head(b"/nothing", []), None) == reasons.NO_ROUTE
    picks = {_key(route.pick(head(b"/api/x", []), None)) for _ in range(200)}
    assert picks == {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}
    lookup = lookup_from_head(head(b"/api?q=1", [(b"Host", b"shop")]))
    assert (lookup(":method"), lookup(":path"), lookup(":authority"), lookup("host")) == (
        "GET",
        "/api?q=1",
        "shop",
        "shop",
    )


def test_consistent_hash_inside_a_subset_uses_the_rules_header() -> None:
    routes = ROUTES + ("  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n")
    routing = compile_routing(parse_routes(routes, "r.yaml"))
    manager = ClusterManager()
    manager.set_routing(routing.subsets, routing.policies)
    manager.update(
        "shop", [Instance("shop", f"10.0.0.{n}:80", version="v1" if n <= 6 else "v2") for n in range(1, 10)]
    )
    cluster = manager.get("shop")
    assert cluster is not None and cluster.lb_policy == "ring_hash"
    route = Route(
        "shop",
        DataPlaneStats().service("shop", "egress"),
        cluster=cluster,
        table=routing.tables["shop"],
        clusters=manager,
    )
    for user in ("alice", "bob", "carol"):
        lookup = lookup_from_mapping({":path": "/api", "x-user": user})
        picks = {_key(route.pick_stream(lookup, None)) for _ in range(60)}
        # the weighted draw picks the subset; inside it the user always lands on the same endpoint
        in_v1 = {p for p in picks if p is not None and int(p.split(".")[3].split(":")[0]) <= 6}
        assert len(in_v1) == 1 and len(picks - in_v1) == 1, (user, picks)

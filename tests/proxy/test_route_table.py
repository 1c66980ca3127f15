"""Route tables (pure): first match wins, header/uri/method matches on the stream shape, weighted draws."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from plexus.config.route_config import parse_routes
from plexus.proxy.route_table import Destination, RouteTable, compile_routing
from plexus.proxy.stream import lookup_from_mapping, lookup_from_pairs

ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: orders}
spec:
  hosts: [orders, com.acme.OrderService]
  http:
  - name: canary-header
    match:
    - headers: {x-canary: {exact: "1"}}
    route: [{destination: {host: orders, subset: v2}}]
  - name: admin-api
    match:
    - uri: {prefix: /admin}
      method: {exact: POST}
    - uri: {regex: "/internal/[0-9]+"}
    route: [{destination: {host: orders-admin}}]
  - name: grpc-get
    match:
    - headers:
        ":service": {exact: com.acme.OrderService}
        ":rpc-method": {regex: "get[A-Z][A-Za-z]*"}
    route: [{destination: {host: orders, subset: v1}}]
  - name: bolt-version
    match:
    - headers:
        ":rpc-version": {prefix: "2."}
    route: [{destination: {host: orders, subset: v2}}]
  - name: user-prefix
    match:
    - headers: {x-user: {prefix: "test-"}}
    route: [{destination: {host: orders, subset: v2}}]
  - name: split
    route:
    - {destination: {host: orders, subset: v1}, weight: 80}
    - {destination: {host: orders, subset: v2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pay}
spec:
  hosts: [pay]
  http:
  - match: [{headers: {x-tenant: {exact: a}}}]
    route:
    - {destination: {host: pay, subset: a}, weight: 50}
    - {destination: {host: pay, subset: b}, weight: 30}
    - {destination: {host: pay, subset: c}, weight: 20}
    - {destination: {host: pay, subset: d}, weight: 0}
  - match: [{headers: {x-even: {exact: "1"}}}]
    route:
    - {destination: {host: pay, subset: a}}
    - {destination: {host: pay, subset: b}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: orders}
spec:
  host: orders
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pay}
spec:
  host: pay
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
  subsets: [{name: a}, {name: b}, {name: c}, {name: d}]
"""

V1 = Destination("orders", "v1")
V2 = Destination("orders", "v2")


def _tables(seed: int = 7) -> dict[str, RouteTable]:
    return dict(compile_routing(parse_routes(ROUTES, "routes.yaml"), random.Random(seed)).tables)


def _http(method: str, path: str, **headers: str) -> dict[str, str]:
    return {":method": method, ":path": path, **{k.replace("_", "-"): v for k, v in headers.items()}}


@pytest.mark.parametrize(
    ("request_headers", "rule"),
    [
        (_http("GET", "/", x_canary="1"), "canary-header"),
        (_http("POST", "/admin/users", x_canary="1"), "canary-header"),  # first match wins
        (_http("POST", "/admin/users"), "admin-api"),
        (_http("GET", "/admin/users"), "split"),  # both conditions of one match entry must hold
        (_http("GET", "/internal/42?verbose=1"), "admin-api"),  # a uri regex sees the path without its query
        (_http("GET", "/internal/42x"), "split"),  # regexes match the whole value
        (_http("GET", "/", x_canary="10"), "split"),  # exact is exact
        (_http("GET", "/", x_user="test-bob"), "user-prefix"),
        (_http("GET", "/", x_user="bob-test-"), "split"),
        # gRPC and Bolt/Dubbo requests carry pseudo-headers
        ({":service": "com.acme.OrderService", ":rpc-method": "getOrder", ":path": "/x"}, "grpc-get"),
        ({":service": "com.acme.OrderService", ":rpc-method": "putOrder"}, "split"),
        ({":service": "com.acme.Other", ":rpc-method": "getOrder"}, "split"),
        ({":service": "com.acme.OrderService", ":rpc-version": "2.1.0"}, "bolt-version"),
        ({":service": "com.acme.OrderService", ":rpc-version": "1.0"}, "split"),
    ],
)
def test_first_matching_rule_wins(request_headers: dict[str, str], rule: str) -> None:
    table = _tables()["orders"]
    matched = table.match(lookup_from_mapping(request_headers))
    assert matched is not None and matched.name == rule


def test_a_table_is_compiled_for_every_host_of_its_virtual_service() -> None:
    tables = _tables()
    assert set(tables) == {"orders", "com.acme.OrderService", "pay"}
    rpc = lookup_from_mapping({":service": "com.acme.OrderService", ":rpc-method": "getOrder"})
    assert tables["com.acme.OrderService"].choose(rpc) == V1


def test_header_lookups_from_http_pairs_are_case_insensitive() -> None:
    table = _tables()["orders"]
    lookup = lookup_from_pairs([(b"X-Canary", b"1")], {":method": "GET", ":path": "/"})
    assert table.choose(lookup) == V2


def test_nothing_matched_is_none() -> None:
    table = _tables()["pay"]
    assert table.choose(lookup_from_mapping({":path": "/", "x-tenant": "zz"})) is None
    assert table.match(lookup_from_mapping({})) is None


def test_an_absent_header_never_matches_even_a_permissive_regex() -> None:
    routes = ROUTES.replace('x-user: {prefix: "test-"}', 'x-user: {regex: ".*"}')
    table = compile_routing(parse_routes(routes, "r.yaml")).tables["orders"]
    rule = table.match(lookup_from_mapping({":path": "/"}))
    assert rule is not None and rule.name == "split"
    rule = table.match(lookup_from_mapping({":path": "/", "x-user": ""}))
    assert rule is not None and rule.name == "user-prefix"


def _draws(table: RouteTable, headers: dict[str, str], n: int = 10_000) -> Counter[Destination | None]:
    lookup = lookup_from_mapping(headers)
    return Counter(table.choose(lookup) for _ in range(n))


def test_weights_split_80_20_within_tolerance() -> None:
    counts = _draws(_tables(seed=1)["orders"], _http("GET", "/"))
    assert set(counts) == {V1, V2}
    # 10,000 draws of p=0.2: sd = 40; 5 sd either side
    assert abs(counts[V2] - 2000) < 200, counts


def test_four_way_weights_and_a_zero_weight_destination() -> None:
    counts = _draws(_tables(seed=2)["pay"], {"x-tenant": "a"})
    expected = {"a": 5000, "b": 3000, "c": 2000}
    assert Destination("pay", "d") not in counts  # weight 0: never chosen
    for subset, want in expected.items():
        got = counts[Destination("pay", subset)]
        assert abs(got - want) < 250, counts


def test_no_weights_split_evenly() -> None:
    counts = _draws(_tables(seed=3)["pay"], {"x-even": "1"})
    assert abs(counts[Destination("pay", "a")] - 5000) < 250, counts


def test_same_seed_same_draws() -> None:
    a, b = _tables(seed=9)["orders"], _tables(seed=9)["orders"]
    lookup = lookup_from_mapping(_http("GET", "/"))
    draws = [a.choose(lookup) for _ in range(200)]
    assert draws == [b.choose(lookup) for _ in range(200)]
    assert set(draws) == {V1, V2}


def test_a_single_destination_takes_everything_without_a_draw() -> None:
    table = _tables()["orders"]
    assert _draws(table, {"x-canary": "1"}, 500) == Counter({V2: 500})


def test_compiled_routing_carries_subsets_and_policies() -> None:
    routing = compile_routing(parse_routes(ROUTES, "routes.yaml"))
    assert routing.subsets["orders"] == {"v1": {"version": "v1"}, "v2": {"version": "v2"}}
    assert routing.subsets["pay"]["a"] == {}
    assert routing.policies == {"pay": ("ring_hash", "x-user")}
    view = routing.view()
    assert view["file"] == "routes.yaml"
    assert [r["name"] for r in view["services"]["orders"]["rules"]][-1] == "split"
    assert view["services"]["orders"]["rules"][-1]["destinations"][1] == {
        "host": "orders",
        "subset": "v2",
        "weight_bound": 100,
    }

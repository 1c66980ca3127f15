"""parse_resources (every kind, every problem in one pass), split_resources, and PolicySet's set algebra,
cross-resource checks, per-sidecar scoping and deterministic JSON."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from random import Random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plexus.config.policy_kinds import (
    AdaptiveLimit,
    Failover,
    GlobalRateLimit,
    LocalRateLimit,
    RateLimitPolicy,
    ShiftStep,
    TrafficShift,
    UnitRouting,
)
from plexus.config.resources import (
    ALL_KINDS,
    PolicySet,
    RawResource,
    ResourceRef,
    StressShare,
    kind_named,
    parse_resources,
    split_resources,
)
from plexus.config.route_config import (
    ConnectionPool,
    DestinationRule,
    HttpFault,
    HttpMatch,
    HttpRetry,
    HttpRoute,
    LoadBalancerSettings,
    Mirror,
    OutlierDetection,
    RetryBudget,
    RouteConfigError,
    RouteDestination,
    StringMatch,
    Subset,
    VirtualService,
)

MESH = textwrap.dedent(
    """\
    # the shop's policy
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: orders, namespace: shop}
    spec:
      hosts: [orders]
      http:
      - match: [{headers: {x-canary: {exact: "1"}}}]
        route: [{destination: {host: orders, subset: v2}}]
        mirror: {host: audit}
      - route: [{destination: {host: orders, subset: v1}}]
        retries: {attempts: 2}
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: orders, namespace: shop}
    spec:
      host: orders
      trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3}}
      subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: checkout}
    spec:
      hosts: [checkout]
      http: [{route: [{destination: {host: payments}}]}]
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: payments}
    spec:
      host: payments
      trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}}
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: audit}
    spec: {host: audit}
    ---
    apiVersion: plexus.io/v1
    kind: RateLimitPolicy
    metadata: {name: orders}
    spec:
      host: orders
      local: [{name: all, tokens: 10, fillPerSecond: 10}]
    ---
    apiVersion: plexus.io/v1
    kind: RateLimitPolicy
    metadata: {name: payments}
    spec:
      host: payments
      adaptive: {maxConcurrency: 50}
    ---
    apiVersion: plexus.io/v1
    kind: UnitRouting
    metadata: {name: orders-cells}
    spec: {hosts: [orders]}
    ---
    apiVersion: plexus.io/v1
    kind: UnitRouting
    metadata: {name: payments-zones}
    spec: {hosts: [payments], scope: zone}
    ---
    apiVersion: plexus.io/v1
    kind: TrafficShift
    metadata: {name: orders-move}
    spec: {host: orders, weights: {u1: 30, u2: 70}}
    ---
    """
)


def _mesh() -> PolicySet:
    return parse_resources(MESH, "mesh.yaml")


def _problems(text: str) -> list[str]:
    with pytest.raises(RouteConfigError) as info:
        parse_resources(text, "m.yaml")
    return [str(p) for p in info.value.problems]


def test_a_file_of_every_kind_parses_into_one_policy_set() -> None:
    policy = _mesh()
    assert policy.file == "mesh.yaml"
    assert [r.kind for r in policy.refs()] == [
        "VirtualService",
        "VirtualService",
        "DestinationRule",
        "DestinationRule",
        "DestinationRule",
        "RateLimitPolicy",
        "RateLimitPolicy",
        "UnitRouting",
        "UnitRouting",
        "TrafficShift",
    ]
    # each kind in (namespace, name) order, whatever the file's order
    assert [r.name for r in policy.refs()[:2]] == ["checkout", "orders"]
    orders = policy.get(ResourceRef("VirtualService", "shop", "orders"))
    assert orders is not None and orders.source == "mesh.yaml:2"
    assert policy.get(ResourceRef("VirtualService", "default", "orders")) is None
    assert policy.get(ResourceRef("Gateway", "shop", "orders")) is None
    assert policy.check() == []
    assert policy.foreign_destinations() == {"payments", "audit"}


def test_every_problem_of_every_kind_is_reported_in_one_pass_in_line_order() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: a}
        spec:
          hosts: [svc]
          http:
          - route: [{destination: {host: svc, subset: v9}}]
            timeout: 1d
            mirror: {host: svc, subset: v8}
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: b}
        spec:
          hosts: [svc]
          http: [{route: [{destination: {host: svc}}]}]
        ---
        apiVersion: plexus.io/v1
        kind: RateLimitPolicy
        metadata: {name: r1}
        spec: {host: svc, adaptive: {}}
        ---
        apiVersion: plexus.io/v1
        kind: RateLimitPolicy
        metadata: {name: r2}
        spec: {host: svc, adaptive: {cpuThreshold: 2}}
        ---
        apiVersion: plexus.io/v1
        kind: RateLimitPolicy
        metadata: {name: r3}
        spec: {host: svc, adaptive: {}}
        ---
        apiVersion: plexus.io/v1
        kind: TrafficShift
        metadata: {name: t1}
        spec: {host: svc, weights: {u1: 100}}
        ---
        apiVersion: plexus.io/v1
        kind: TrafficShift
        metadata: {name: t1}
        spec: {host: svc, weights: {u1: 50, u2: 40}}
        ---
        apiVersion: plexus.io/v1
        kind: TrafficShift
        metadata: {name: t2}
        spec: {host: svc, weights: {u1: 100}}
        ---
        apiVersion: plexus.io/v1
        kind: UnitRouting
        metadata: {name: u1}
        spec: {hosts: ["*"]}
        ---
        apiVersion: plexus.io/v1
        kind: UnitRouting
        metadata: {name: u2}
        spec: {hosts: [svc, "*"]}
        ---
        apiVersion: plexus.io/v1
        kind: UnitRouting
        metadata: {name: u3}
        spec: {hosts: [svc]}
        ---
        apiVersion: plexus.io/v1
        kind: UnitRouting
        metadata: {name: u4}
        spec: {hosts: [other, svc]}
        """
    )
    problems = _problems(text)
    expected = (
        "m.yaml:7: VirtualService a: spec.http[0].route[0].destination.subset: subset 'v9' of 'svc' "
        "is not defined (no DestinationRule defines any)",
        "m.yaml:8: VirtualService a: spec.http[0].timeout: '1d' is not a duration such as '1s', '0.5s', "
        "'100ms', '2m', '1h'",
        "m.yaml:9: VirtualService a: spec.http[0].mirror.subset: subset 'v8' of 'svc' is not defined "
        "(no DestinationRule defines any)",
        "m.yaml:11: VirtualService b: spec.hosts: 'svc' already has a VirtualService (at m.yaml:1)",
        "m.yaml:26: RateLimitPolicy r2: spec.adaptive.cpuThreshold: 2 must be above 0 and at most 1",
        "m.yaml:28: RateLimitPolicy r3: spec.host: 'svc' already has a RateLimitPolicy (at m.yaml:18)",
        "m.yaml:41: TrafficShift t1: spec.weights: weights sum to 90, not 100",
        "m.yaml:43: TrafficShift t2: spec.host: 'svc' already has a TrafficShift (at m.yaml:33)",
        'm.yaml:56: UnitRouting u2: spec.hosts: "*" already names every service: give it alone',
        # u3 and "*" are no clash: the UnitRouting naming a service overrides the one for "*"
        "m.yaml:63: UnitRouting u4: spec.hosts: 'svc' already has a UnitRouting (at m.yaml:58)",
    )
    assert problems == list(expected), problems


def test_a_resource_defined_twice_in_one_file_is_an_error_at_its_second_name() -> None:
    doc = "apiVersion: plexus.io/v1\nkind: UnitRouting\nmetadata:\n  name: u\nspec: {hosts: [a]}\n"
    other = doc.replace("[a]", "[b]")
    problems = _problems(doc + "---\n" + other)
    assert problems == [
        "m.yaml:10: UnitRouting u: metadata.name: UnitRouting default/u is defined twice in this file "
        "(first at m.yaml:1)"
    ]


def test_invalid_yaml_is_one_problem_with_its_line() -> None:
    (problem,) = _problems("apiVersion: plexus.io/v1\nkind: [\n")
    assert problem.startswith("m.yaml:3: (file): not valid YAML: "), problem


def test_an_empty_file_is_an_empty_set() -> None:
    assert parse_resources("", "e.yaml") == PolicySet(file="e.yaml")
    assert parse_resources("---\n# nothing\n---\n", "e.yaml").refs() == []


# -- split_resources ---------------------------------------------------------------------------------


def test_split_gives_each_documents_own_text_identity_and_line() -> None:
    raws = split_resources(MESH, "mesh.yaml")
    assert [(r.ref, r.source) for r in raws[:3]] == [
        (ResourceRef("VirtualService", "shop", "orders"), "mesh.yaml:2"),
        (ResourceRef("DestinationRule", "shop", "orders"), "mesh.yaml:14"),
        (ResourceRef("VirtualService", "default", "checkout"), "mesh.yaml:24"),
    ]
    assert len(raws) == 10
    first = raws[0].text
    assert first.startswith("apiVersion: networking.istio.io/v1\nkind: VirtualService\n")
    assert first.endswith("retries: {attempts: 2}\n") and "---" not in first
    # each stored text re-reads alone, from its own file line, into the same resource with the same source
    with pytest.raises(RouteConfigError, match="subset 'v2' of 'orders' is not defined"):
        parse_resources(raws[0].text, *raws[0].location())  # its subsets are in another document
    whole = parse_resources(MESH, "mesh.yaml")
    for raw in raws:
        again = parse_resources(raw.text, *raw.location(), across=False)
        assert again.get(raw.ref) == whole.get(raw.ref)


def test_split_reads_a_flow_document_after_its_marker_and_reports_lines_from_a_stored_text() -> None:
    text = "--- {apiVersion: plexus.io/v1, kind: UnitRouting, metadata: {name: u}, spec: {hosts: [a]}}\n"
    (raw,) = split_resources(text, "f.yaml")
    assert raw == RawResource(
        ResourceRef("UnitRouting", "default", "u"),
        "{apiVersion: plexus.io/v1, kind: UnitRouting, metadata: {name: u}, spec: {hosts: [a]}}\n",
        "f.yaml:1",
    )
    stored = RawResource(
        raw.ref,
        "apiVersion: plexus.io/v1\nkind: UnitRouting\nmetadata: {name: u}\nspec: {hosts: ['*', a]}\n",
        "f.yaml:40",
    )
    with pytest.raises(RouteConfigError) as info:
        parse_resources(stored.text, *stored.location(), across=False)
    assert str(info.value).startswith("f.yaml:43: UnitRouting u: spec.hosts:")


def test_split_refuses_documents_without_kind_or_name() -> None:
    with pytest.raises(RouteConfigError) as info:
        split_resources("kind: UnitRouting\nmetadata: {}\n---\n- a\n", "s.yaml")
    assert [str(p) for p in info.value.problems] == [
        "s.yaml:1: document 1: needs kind and metadata.name",
        "s.yaml:4: document 2: needs kind and metadata.name",
    ]


# -- PolicySet algebra, checks, scoping and JSON ----------------------------------------------------


def test_merged_replaces_same_refs_and_keeps_the_rest() -> None:
    policy = _mesh()
    update = parse_resources(
        "apiVersion: plexus.io/v1\nkind: TrafficShift\nmetadata: {name: orders-move}\n"
        "spec: {host: orders, weights: {u1: 0, u2: 100}}\n---\n"
        "apiVersion: plexus.io/v1\nkind: TrafficShift\nmetadata: {name: checkout-move}\n"
        "spec: {host: checkout, by: zone, weights: {z1: 100}}\n",
        "shift.yaml",
    )
    merged = policy.merged(update)
    assert len(merged.refs()) == len(policy.refs()) + 1
    moved = merged.get(ResourceRef("TrafficShift", "default", "orders-move"))
    assert isinstance(moved, TrafficShift) and moved.weights == (("u1", 0), ("u2", 100))
    assert moved.source == "shift.yaml:1"
    assert merged.virtual_services == policy.virtual_services and merged.file == "mesh.yaml"
    assert merged.check() == []
    # merging is idempotent and the same set in any order is the same object and the same JSON
    assert merged.merged(update) == merged
    assert update.merged(policy) == PolicySet(file="shift.yaml").merged(update).merged(policy)


def test_without_removes_one_ref_and_check_finds_what_the_removal_breaks() -> None:
    policy = _mesh()
    ref = ResourceRef("DestinationRule", "shop", "orders")
    smaller = policy.without(ref)
    assert smaller.get(ref) is None and len(smaller.refs()) == len(policy.refs()) - 1
    assert smaller.check() == [
        "mesh.yaml:2: VirtualService orders: spec.http[0].route[0].destination.subset: subset 'v2' of "
        "'orders' is not defined (no DestinationRule defines any)",
        "mesh.yaml:2: VirtualService orders: spec.http[1].route[0].destination.subset: subset 'v1' of "
        "'orders' is not defined (no DestinationRule defines any)",
    ]
    assert policy.without(ResourceRef("DestinationRule", "default", "nope")) == policy
    assert policy.without(ResourceRef("Gateway", "shop", "orders")) == policy


def test_check_finds_two_virtual_services_for_one_host_across_applies() -> None:
    other = parse_resources(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: orders-2}\n"
        "spec: {hosts: [orders], http: [{route: [{destination: {host: orders}}]}]}\n",
        "second.yaml",
    )
    assert other.check() == []
    merged = _mesh().merged(other)
    assert merged.check(changed=other.refs()) == [
        "second.yaml:1: VirtualService orders-2: spec.hosts: 'orders' already has a VirtualService "
        "(at mesh.yaml:2)"
    ]
    # without knowing which is new, the later in (namespace, name) order is reported
    assert merged.check() == [
        "mesh.yaml:2: VirtualService orders: spec.hosts: 'orders' already has a VirtualService "
        "(at second.yaml:1)"
    ]


def test_scoped_gives_one_sidecar_what_it_calls_and_what_it_serves() -> None:
    policy = _mesh().with_stress(StressShare("payments", "10.0.0.7:8080", 5.0))
    caller = policy.scoped(consumes=["orders"], provides=["web"])
    assert [str(r) for r in caller.refs()] == [
        "VirtualService shop/orders",
        "DestinationRule default/audit",  # its routes mirror to audit
        "DestinationRule shop/orders",
        "UnitRouting default/orders-cells",
        "TrafficShift default/orders-move",
    ]
    assert caller.stress == () and caller.foreign_destinations() == {"audit"}
    checkout = policy.scoped(consumes=["checkout"], provides=["orders"])
    assert [str(r) for r in checkout.refs()] == [
        "VirtualService default/checkout",
        "DestinationRule default/payments",  # checkout's routes send to payments
        "RateLimitPolicy default/orders",  # it serves orders
        "UnitRouting default/payments-zones",
    ]
    assert checkout.stress == (StressShare("payments", "10.0.0.7:8080", 5.0),)
    nothing = policy.scoped(consumes=[], provides=[])
    assert nothing.refs() == [] and nothing.file == policy.file
    everywhere = parse_resources(
        "apiVersion: plexus.io/v1\nkind: UnitRouting\nmetadata: {name: all}\nspec: {hosts: ['*']}\n", "u.yaml"
    )
    assert everywhere.scoped(["x"], []).refs() == [ResourceRef("UnitRouting", "default", "all")]
    assert everywhere.scoped([], ["x"]).refs() == []


def test_json_round_trips_to_an_equal_set_and_is_deterministic() -> None:
    policy = _mesh().with_stress(StressShare("orders", "10.0.0.1:80", 12.5))
    text = policy.to_json()
    again = PolicySet.from_json(text)
    assert again == policy and again.to_json() == text
    # the same resources in another order: the same JSON
    shuffled = PolicySet(
        virtual_services=tuple(reversed(policy.virtual_services)),
        destination_rules=tuple(reversed(policy.destination_rules)),
        rate_limits=policy.rate_limits,
        unit_routings=tuple(reversed(policy.unit_routings)),
        traffic_shifts=policy.traffic_shifts,
        stress=policy.stress,
        file=policy.file,
    )
    assert shuffled == policy and shuffled.to_json() == text
    assert (
        policy.without_stress("orders").stress == ()
        and PolicySet.from_json(PolicySet().to_json()) == PolicySet()
    )


def test_kind_names_as_the_cli_takes_them() -> None:
    assert [
        kind_named(k) for k in ("vs", "DestinationRules", "RateLimitPolicies", "UR", "trafficshifts")
    ] == [
        "VirtualService",
        "DestinationRule",
        "RateLimitPolicy",
        "UnitRouting",
        "TrafficShift",
    ]
    assert set(ALL_KINDS) == {kind_named(k) for k in ALL_KINDS}
    with pytest.raises(ValueError, match="unknown kind 'gateway'; Plexus takes VirtualService"):
        kind_named("gateway")


def test_the_serving_side_reads_a_snapshot_without_mapping_pyyaml() -> None:
    text = _mesh().to_json()
    code = (
        "import sys\n"
        "from plexus.config.resources import PolicySet\n"
        "p = PolicySet.from_json(sys.stdin.read())\n"
        "assert 'yaml' not in sys.modules, 'PyYAML was imported'\n"
        "print(len(p.refs()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "10"


# -- property: any set survives JSON, and order never changes its JSON ---------------------------------

_names = st.sampled_from(["a", "b", "orders", "v1", "x-y"])
_percent = st.floats(0, 100, allow_nan=False)
_seconds = st.one_of(st.none(), st.floats(0.001, 86400, allow_nan=False))
_string_match = st.builds(StringMatch, st.sampled_from(["exact", "prefix"]), st.sampled_from(["", "/a", "ü"]))
_match = st.builds(
    HttpMatch,
    headers=st.lists(st.tuples(_names, _string_match), max_size=2).map(tuple),
    uri=st.one_of(st.none(), _string_match, st.just(StringMatch("regex", "/a/[0-9]+"))),
    method=st.one_of(st.none(), _string_match),
    name=st.one_of(st.none(), _names),
)
_rule = st.builds(
    HttpRoute,
    name=st.one_of(st.none(), _names),
    match=st.lists(_match, max_size=2).map(tuple),
    route=st.lists(
        st.builds(
            RouteDestination, _names, st.one_of(st.none(), _names), st.one_of(st.none(), st.integers(0, 100))
        ),
        min_size=1,
        max_size=3,
    ).map(tuple),
    timeout=_seconds,
    retries=st.one_of(
        st.none(), st.builds(HttpRetry, st.integers(0, 5), _seconds, st.lists(_names, max_size=3).map(tuple))
    ),
    fault=st.one_of(
        st.none(),
        st.builds(
            HttpFault, _seconds, _percent, st.one_of(st.none(), st.integers(200, 599)), st.none(), _percent
        ),
    ),
    mirror=st.one_of(st.none(), st.builds(Mirror, _names, st.one_of(st.none(), _names), _percent)),
)
_vs = st.builds(
    VirtualService,
    _names,
    _names,
    st.lists(_names, min_size=1, max_size=2).map(tuple),
    st.lists(_rule, min_size=1, max_size=2).map(tuple),
    _names,
)
_dr = st.builds(
    DestinationRule,
    _names,
    _names,
    _names,
    st.lists(
        st.builds(Subset, _names, st.lists(st.tuples(_names, _names), max_size=2).map(tuple)), max_size=2
    ).map(tuple),
    st.one_of(st.none(), st.builds(LoadBalancerSettings, st.sampled_from(["round_robin", "random"]))),
    _names,
    connection_pool=st.one_of(st.none(), st.builds(ConnectionPool, st.integers(1, 10**6), _seconds)),
    outlier_detection=st.one_of(st.none(), st.builds(OutlierDetection)),
    retry_budget=st.one_of(st.none(), st.builds(RetryBudget, _percent, st.integers(0, 10))),
)
_rlp = st.builds(
    RateLimitPolicy,
    _names,
    _names,
    _names,
    st.lists(
        st.builds(
            LocalRateLimit,
            _names,
            st.integers(1, 1000),
            st.floats(0.1, 1e6),
            st.lists(_match, max_size=1).map(tuple),
        ),
        max_size=2,
    ).map(tuple),
    st.lists(
        st.builds(GlobalRateLimit, _names, st.integers(1, 1000), st.sampled_from(["second", "minute"])),
        max_size=2,
    ).map(tuple),
    st.one_of(st.none(), st.builds(AdaptiveLimit)),
    source=_names,
)
_ur = st.builds(
    UnitRouting,
    _names,
    _names,
    st.lists(_names, min_size=1, max_size=2).map(tuple),
    st.sampled_from(["unit", "zone"]),
    st.lists(
        st.builds(Failover, _names, st.lists(_names, min_size=1, max_size=2).map(tuple)), max_size=2
    ).map(tuple),
    st.lists(_names, max_size=2).map(tuple),
    _names,
)
_ts = st.builds(
    TrafficShift,
    _names,
    _names,
    _names,
    st.sampled_from(["unit", "zone", "version"]),
    st.lists(st.tuples(_names, st.integers(0, 100)), max_size=2).map(tuple),
    st.lists(
        st.builds(
            ShiftStep,
            st.integers(0, 1439),
            st.lists(st.tuples(_names, st.integers(0, 100)), max_size=2).map(tuple),
        ),
        max_size=2,
    ).map(tuple),
    st.one_of(st.none(), st.floats(0, 4e9)),
    _names,
)
_sets = st.builds(
    PolicySet,
    st.lists(_vs, max_size=3).map(tuple),
    st.lists(_dr, max_size=3).map(tuple),
    st.lists(_rlp, max_size=2).map(tuple),
    st.lists(_ur, max_size=2).map(tuple),
    st.lists(_ts, max_size=2).map(tuple),
    st.lists(st.builds(StressShare, _names, _names, _percent), max_size=2).map(tuple),
    st.one_of(st.none(), _names),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_sets, st.randoms())
def test_any_policy_set_round_trips_and_its_json_ignores_order(policy: PolicySet, rnd: Random) -> None:
    text = policy.to_json()
    again = PolicySet.from_json(text)
    assert again == policy and again.to_json() == text

    def shuffled(items: tuple[Any, ...]) -> tuple[Any, ...]:
        out = list(items)
        rnd.shuffle(out)
        return tuple(out)

    other = PolicySet(
        shuffled(policy.virtual_services),
        shuffled(policy.destination_rules),
        shuffled(policy.rate_limits),
        shuffled(policy.unit_routings),
        shuffled(policy.traffic_shifts),
        shuffled(policy.stress),
        policy.file,
    )
    kinds = (policy.virtual_services, policy.destination_rules, policy.rate_limits, policy.unit_routings)
    unique = all(len({(r.namespace, r.name) for r in items}) == len(items) for items in kinds)
    if unique and len({(t.namespace, t.name) for t in policy.traffic_shifts}) == len(policy.traffic_shifts):
        # a valid set has one resource per ref; each kind's order then never shows in the JSON
        assert other == policy and other.to_json() == text


def test_the_unit_routing_naming_a_service_overrides_the_one_for_every_service() -> None:
    text = (
        "apiVersion: plexus.io/v1\nkind: UnitRouting\nmetadata: {name: all}\n"
        "spec: {hosts: ['*'], scope: zone}\n---\n"
        "apiVersion: plexus.io/v1\nkind: UnitRouting\nmetadata: {name: orders}\n"
        "spec: {hosts: [orders], drain: [u2]}\n"
    )
    policy = parse_resources(text, "u.yaml")
    assert policy.check() == []
    named, every = policy.unit_routing_for("orders"), policy.unit_routing_for("payments")
    assert named is not None and named.name == "orders" and named.drain == ("u2",)
    assert every is not None and every.name == "all" and every.scope == "zone"
    assert PolicySet().unit_routing_for("orders") is None
    # both reach a sidecar calling orders; only "*" one calling payments
    assert [r.name for r in policy.scoped(["orders"], []).refs()] == ["all", "orders"]
    assert [r.name for r in policy.scoped(["payments"], []).refs()] == ["all"]

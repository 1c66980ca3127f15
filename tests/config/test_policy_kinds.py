"""Plexus's own kinds (RateLimitPolicy, UnitRouting, TrafficShift): every field parsed, every error placed."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

import pytest

from plexus.config.policy_kinds import (
    CALLER_HEADER,
    LOAD_TEST_HEADER,
    AdaptiveLimit,
    Failover,
    GlobalRateLimit,
    LocalRateLimit,
    RateLimitPolicy,
    ShiftStep,
    TrafficShift,
    UnitRouting,
)
from plexus.config.resources import PolicySet, parse_resources
from plexus.config.route_config import HttpMatch, RouteConfigError, StringMatch

KINDS = textwrap.dedent(
    """\
    apiVersion: plexus.io/v1
    kind: RateLimitPolicy
    metadata: {name: orders-limits, namespace: shop}
    spec:
      host: orders
      local:
      - name: create
        match: [{headers: {":rpc-method": {exact: create}}}, {uri: {prefix: /orders}}]
        perCaller: true
        callerHeader: X-Tenant
        tokens: 100
        fillPerSecond: 12.5
      - {name: rest, tokens: 1000, fillPerSecond: 1000}
      global:
      - name: all
        requestsPerUnit: 6000
        unit: minute
        fallbackPerSecond: 50
      - {name: per-caller, perCaller: true, requestsPerUnit: 10}
      adaptive: {cpuThreshold: 0.7, loadThreshold: 1.5, maxConcurrency: 200, loadTestHeader: X-Stress}
    ---
    apiVersion: plexus.io/v1
    kind: RateLimitPolicy
    metadata: {name: shed-only}
    spec:
      host: ratings
      adaptive: {}
    ---
    apiVersion: plexus.io/v1
    kind: UnitRouting
    metadata: {name: cells}
    spec:
      hosts: [orders, ratings]
      scope: zone
      failover:
      - {from: east, to: [west, north]}
      - {from: west, to: [east]}
      drain: [north]
    ---
    apiVersion: plexus.io/v1
    kind: UnitRouting
    metadata: {name: everything}
    spec:
      hosts: ["*"]
    ---
    apiVersion: plexus.io/v1
    kind: TrafficShift
    metadata: {name: nightly}
    spec:
      host: orders
      by: unit
      weights: {u1: 20, u2: 80}
      schedule:
      - at: "22:00"
        weights: {u1: 0, u2: 100}
      - at: 06:30
        weights: {u1: 50, u2: 50}
      start: 2026-11-26T22:00:00+01:00
    ---
    apiVersion: plexus.io/v1
    kind: TrafficShift
    metadata: {name: canary}
    spec:
      host: ratings
      by: version
      weights: {v1: 90, v2: 10}
    """
)


def test_rate_limit_policies_parse_every_field() -> None:
    policies = parse_resources(KINDS, "k.yaml")
    shed, limits = policies.rate_limits  # sorted by (namespace, name)
    assert limits == RateLimitPolicy(
        "orders-limits",
        "shop",
        "orders",
        local=(
            LocalRateLimit(
                "create",
                100,
                12.5,
                (
                    HttpMatch(headers=((":rpc-method", StringMatch("exact", "create")),)),
                    HttpMatch(uri=StringMatch("prefix", "/orders")),
                ),
                per_caller=True,
                caller_header="x-tenant",  # header names are lower-cased, as lookups are
            ),
            LocalRateLimit("rest", 1000, 1000.0),
        ),
        global_=(
            GlobalRateLimit("all", 6000, "minute", fallback_per_second=50.0),
            GlobalRateLimit("per-caller", 10, "second", per_caller=True, caller_header=CALLER_HEADER),
        ),
        adaptive=AdaptiveLimit(0.7, 1.5, 200, "x-stress"),
        source="k.yaml:1",
    )
    assert shed.adaptive == AdaptiveLimit(0.8, None, None, LOAD_TEST_HEADER)  # the defaults
    assert shed.local == () and shed.global_ == ()


def test_unit_routings_parse_every_field() -> None:
    cells, everything = parse_resources(KINDS, "k.yaml").unit_routings
    assert cells == UnitRouting(
        "cells",
        "default",
        ("orders", "ratings"),
        "zone",
        (Failover("east", ("west", "north")), Failover("west", ("east",))),
        ("north",),
        "k.yaml:29",
    )
    assert cells.applies_to("orders") and not cells.applies_to("payments")
    assert everything.scope == "unit" and everything.applies_to("payments")


def test_traffic_shifts_parse_every_field_with_the_schedule_in_time_of_day_order() -> None:
    canary, nightly = parse_resources(KINDS, "k.yaml").traffic_shifts  # sorted by name
    assert nightly == TrafficShift(
        "nightly",
        "default",
        "orders",
        "unit",
        (("u1", 20), ("u2", 80)),
        (ShiftStep(6 * 60 + 30, (("u1", 50), ("u2", 50))), ShiftStep(22 * 60, (("u1", 0), ("u2", 100)))),
        datetime(2026, 11, 26, 21, 0, tzinfo=UTC).timestamp(),
        "k.yaml:46",
    )
    assert canary.by == "version" and canary.weights == (("v1", 90), ("v2", 10)) and canary.start is None


def test_plexus_kinds_round_trip_through_json_with_their_regexes() -> None:
    text = KINDS.replace("{uri: {prefix: /orders}}", "{uri: {regex: '/orders/[0-9]+'}}")
    policies = parse_resources(text, "k.yaml")
    again = PolicySet.from_json(policies.to_json())
    assert again == policies and again.to_json() == policies.to_json()
    uri = again.rate_limits[1].local[0].match[1].uri
    assert uri is not None and uri.matches("/orders/42") and not uri.matches("/orders/x")


HEAD = "apiVersion: plexus.io/v1\nkind: {kind}\nmetadata: {{name: p}}\nspec:\n"


def _problems(text: str) -> list[str]:
    with pytest.raises(RouteConfigError) as info:
        parse_resources(text, "p.yaml")
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "  local: [{name: a, tokens: 1, fillPerSecond: 1}]\n",
            "p.yaml:5: RateLimitPolicy p: spec.host: missing",
        ),
        ("  host: 'a b'\n  adaptive: {}\n", "p.yaml:5: RateLimitPolicy p: spec.host: 'a b' is not a service"),
        ("  host: svc\n", "p.yaml:5: RateLimitPolicy p: spec: give local, global or adaptive"),
        ("  host: svc\n  local: {}\n", "p.yaml:6: RateLimitPolicy p: spec.local: must be a list"),
        ("  host: svc\n  local: []\n  global: []\n", "p.yaml:5: RateLimitPolicy p: spec: no limits"),
        (
            "  host: svc\n  local:\n  - {tokens: 1, fillPerSecond: 1}\n",
            "p.yaml:7: RateLimitPolicy p: spec.local[0].name: missing",
        ),
        (
            "  host: svc\n  local:\n  - {name: a, fillPerSecond: 1}\n",
            "p.yaml:7: RateLimitPolicy p: spec.local[0].tokens: missing",
        ),
        (
            "  host: svc\n  local:\n  - {name: a, tokens: 1}\n",
            "p.yaml:7: RateLimitPolicy p: spec.local[0].fillPerSecond: missing",
        ),
        (
            "  host: svc\n  local:\n  - {name: a, tokens: 0, fillPerSecond: 1}\n",
            "p.yaml:7: RateLimitPolicy p: spec.local[0].tokens: 0 is not in 1..",
        ),
        (
            "  host: svc\n  local:\n  - {name: a, tokens: 1.5, fillPerSecond: 1}\n",
            "p.yaml:7: RateLimitPolicy p: spec.local[0].tokens: must be an integer",
        ),
        (
            "  host: svc\n  local:\n  - {name: a, tokens: 1, fillPerSecond: 0}\n",
            "p.yaml:7: RateLimitPolicy p: spec.local[0].fillPerSecond: 0 must be above 0",
        ),
        (
            "  host: svc\n  local:\n  - {name: a, tokens: 1, fillPerSecond: fast}\n",
            "p.yaml:7: RateLimitPolicy p: spec.local[0].fillPerSecond: must be a number",
        ),
        (
            "  host: svc\n  local:\n  - {name: a, tokens: 1, fillPerSecond: 1, perCaller: yes please}\n",
            "p.yaml:7: RateLimitPolicy p: spec.local[0].perCaller: must be true or false",
        ),
        (
            "  host: svc\n  local:\n  - {name: a, tokens: 1, fillPerSecond: 1, perCaller: true,"
            " callerHeader: ':path'}\n",
            "p.yaml:7: RateLimitPolicy p: spec.local[0].callerHeader: ':path' is not a header name",
        ),
        (
            "  host: svc\n  local:\n  - {name: a, tokens: 1, fillPerSecond: 1, callerHeader: x-a}\n",
            "p.yaml:7: RateLimitPolicy p: spec.local[0].callerHeader: only used with perCaller: true",
        ),
        (
            "  host: svc\n  local:\n  - {name: a, tokens: 1, fillPerSecond: 1, match: [{port: 80}]}\n",
            "p.yaml:7: RateLimitPolicy p: spec.local[0].match[0].port: not supported by Plexus",
        ),
        (
            "  host: svc\n  local:\n  - {name: a, tokens: 1, fillPerSecond: 1, burst: 2}\n",
            "p.yaml:7: RateLimitPolicy p: spec.local[0].burst: unknown field",
        ),
        (
            "  host: svc\n  local:\n  - {name: a, tokens: 1, fillPerSecond: 1}\n"
            "  global:\n  - {name: a, requestsPerUnit: 1}\n",
            "p.yaml:9: RateLimitPolicy p: spec.global[0].name: rule 'a' is defined twice "
            "(first at spec.local[0])",
        ),
        (
            "  host: svc\n  global:\n  - {name: g}\n",
            "p.yaml:7: RateLimitPolicy p: spec.global[0].requestsPerUnit: missing",
        ),
        (
            "  host: svc\n  global:\n  - {name: g, requestsPerUnit: 5, unit: hour}\n",
            "p.yaml:7: RateLimitPolicy p: spec.global[0].unit: 'hour' is not one of second, minute",
        ),
        (
            "  host: svc\n  global:\n  - {name: g, requestsPerUnit: 5, fallbackPerSecond: -1}\n",
            "p.yaml:7: RateLimitPolicy p: spec.global[0].fallbackPerSecond: -1 is not in 0..",
        ),
        (
            "  host: svc\n  adaptive: {cpuThreshold: 1.2}\n",
            "p.yaml:6: RateLimitPolicy p: spec.adaptive.cpuThreshold: 1.2 must be above 0 and at most 1",
        ),
        (
            "  host: svc\n  adaptive: {cpuThreshold: 0}\n",
            "p.yaml:6: RateLimitPolicy p: spec.adaptive.cpuThreshold: 0 must be above 0",
        ),
        (
            "  host: svc\n  adaptive: {loadThreshold: -2}\n",
            "p.yaml:6: RateLimitPolicy p: spec.adaptive.loadThreshold: -2 must be above 0",
        ),
        (
            "  host: svc\n  adaptive: {maxConcurrency: 0}\n",
            "p.yaml:6: RateLimitPolicy p: spec.adaptive.maxConcurrency: 0 is not in 1..",
        ),
        (
            "  host: svc\n  adaptive: {cpuThreshold: null}\n",
            "p.yaml:6: RateLimitPolicy p: spec.adaptive: give cpuThreshold, loadThreshold or maxConcurrency",
        ),
        (
            "  host: svc\n  adaptive: {loadTestHeader: 'a b'}\n",
            "p.yaml:6: RateLimitPolicy p: spec.adaptive.loadTestHeader: 'a b' is not a header name",
        ),
    ],
)
def test_each_rate_limit_policy_error_names_its_line_and_path(spec: str, expected: str) -> None:
    problems = _problems(HEAD.format(kind="RateLimitPolicy") + spec)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("  scope: unit\n", "p.yaml:5: UnitRouting p: spec.hosts: missing"),
        ("  hosts: []\n", "p.yaml:5: UnitRouting p: spec.hosts: empty"),
        ("  hosts: orders\n", "p.yaml:5: UnitRouting p: spec.hosts: must be a list"),
        ("  hosts: ['*', orders]\n", 'p.yaml:5: UnitRouting p: spec.hosts: "*" already names every service'),
        ("  hosts: [orders, orders]\n", "p.yaml:5: UnitRouting p: spec.hosts[1]: 'orders' is listed twice"),
        ("  hosts: ['no way']\n", "p.yaml:5: UnitRouting p: spec.hosts[0]: 'no way' is not a service name"),
        (
            "  hosts: [a]\n  scope: region\n",
            "p.yaml:6: UnitRouting p: spec.scope: 'region' is not one of unit, zone",
        ),
        (
            "  hosts: [a]\n  failover: [{to: [u2]}]\n",
            "p.yaml:6: UnitRouting p: spec.failover[0].from: missing",
        ),
        ("  hosts: [a]\n  failover: [{from: u1}]\n", "p.yaml:6: UnitRouting p: spec.failover[0].to: missing"),
        (
            "  hosts: [a]\n  failover: [{from: u1, to: []}]\n",
            "p.yaml:6: UnitRouting p: spec.failover[0].to: empty",
        ),
        (
            "  hosts: [a]\n  failover: [{from: u1, to: [u2, u1]}]\n",
            "p.yaml:6: UnitRouting p: spec.failover[0].to: 'u1' fails over to itself",
        ),
        (
            "  hosts: [a]\n  failover: [{from: u1, to: [u2, u2]}]\n",
            "p.yaml:6: UnitRouting p: spec.failover[0].to[1]: 'u2' is listed twice",
        ),
        (
            "  hosts: [a]\n  failover:\n  - {from: u1, to: [u2]}\n  - {from: u1, to: [u3]}\n",
            "p.yaml:8: UnitRouting p: spec.failover[1].from: 'u1' already has a failover (spec.failover[0])",
        ),
        (
            "  hosts: [a]\n  scope: zone\n  failover: [{from: 'east/1', to: [west]}]\n",
            "p.yaml:7: UnitRouting p: spec.failover[0].from: 'east/1' is not a zone name",
        ),
        ("  hosts: [a]\n  drain: [u1, u1]\n", "p.yaml:6: UnitRouting p: spec.drain[1]: 'u1' is listed twice"),
        ("  hosts: [a]\n  drain: u1\n", "p.yaml:6: UnitRouting p: spec.drain: must be a list"),
        ("  hosts: [a]\n  cells: [u1]\n", "p.yaml:6: UnitRouting p: spec.cells: unknown field"),
    ],
)
def test_each_unit_routing_error_names_its_line_and_path(spec: str, expected: str) -> None:
    problems = _problems(HEAD.format(kind="UnitRouting") + spec)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("  weights: {u1: 100}\n", "p.yaml:5: TrafficShift p: spec.host: missing"),
        ("  host: svc\n", "p.yaml:5: TrafficShift p: spec.weights: missing"),
        (
            "  host: svc\n  by: rack\n  weights: {u1: 100}\n",
            "p.yaml:6: TrafficShift p: spec.by: 'rack' is not one of",
        ),
        (
            "  host: svc\n  weights: {u1: 60, u2: 30}\n",
            "p.yaml:6: TrafficShift p: spec.weights: weights sum to 90, not 100",
        ),
        (
            "  host: svc\n  weights: {u1: 120, u2: -20}\n",
            "p.yaml:6: TrafficShift p: spec.weights.u1: 120 is not in 0..100",
        ),
        (
            "  host: svc\n  weights: {u1: half}\n",
            "p.yaml:6: TrafficShift p: spec.weights.u1: must be an integer",
        ),
        ("  host: svc\n  weights: {}\n", "p.yaml:6: TrafficShift p: spec.weights: empty"),
        ("  host: svc\n  weights: [u1]\n", "p.yaml:6: TrafficShift p: spec.weights: must be a mapping"),
        ("  host: svc\n  weights: {u1: 50, u1: 50}\n", "p.yaml:6: TrafficShift p: spec.weights.u1: repeated"),
        ("  host: svc\n  schedule: []\n", "p.yaml:6: TrafficShift p: spec.schedule: empty"),
        (
            "  host: svc\n  schedule:\n  - {weights: {u1: 100}}\n",
            "p.yaml:7: TrafficShift p: spec.schedule[0].at: missing",
        ),
        (
            "  host: svc\n  schedule:\n  - {at: '06:00'}\n",
            "p.yaml:7: TrafficShift p: spec.schedule[0].weights: missing",
        ),
        (
            "  host: svc\n  schedule:\n  - {at: '24:00', weights: {u1: 100}}\n",
            "p.yaml:7: TrafficShift p: spec.schedule[0].at: '24:00' is not a time of day",
        ),
        (
            "  host: svc\n  schedule:\n  - {at: '6pm', weights: {u1: 100}}\n",
            "p.yaml:7: TrafficShift p: spec.schedule[0].at: '6pm' is not a time of day",
        ),
        (
            "  host: svc\n  schedule:\n  - {at: '06:00', weights: {u1: 10}}\n",
            "p.yaml:7: TrafficShift p: spec.schedule[0].weights: weights sum to 10, not 100",
        ),
        (
            "  host: svc\n  schedule:\n  - {at: '06:00', weights: {u1: 100}}\n"
            "  - {at: '06:00', weights: {u2: 100}}\n",
            "p.yaml:8: TrafficShift p: spec.schedule[1].at: same time as spec.schedule[0]",
        ),
        (
            "  host: svc\n  weights: {u1: 100}\n  start: '2026-11-26 22:00'\n",
            "p.yaml:7: TrafficShift p: spec.start: '2026-11-26 22:00' is not an RFC 3339 date-time",
        ),
        (
            "  host: svc\n  weights: {u1: 100}\n  start: '2026-11-26T22:00:00'\n",
            "p.yaml:7: TrafficShift p: spec.start: '2026-11-26T22:00:00' has no offset",
        ),
        (
            "  host: svc\n  weights: {u1: 100}\n  start: tomorrow\n",
            "p.yaml:7: TrafficShift p: spec.start: 'tomorrow' is not an RFC 3339 date-time",
        ),
        (
            "  host: svc\n  weights: {'u 1': 100}\n",
            "p.yaml:6: TrafficShift p: spec.weights.u 1: 'u 1' is not a unit name",
        ),
    ],
)
def test_each_traffic_shift_error_names_its_line_and_path(spec: str, expected: str) -> None:
    problems = _problems(HEAD.format(kind="TrafficShift") + spec)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "apiVersion: networking.istio.io/v1\nkind: TrafficShift\nmetadata: {name: t}\n"
            "spec: {host: a, weights: {u1: 100}}\n",
            "p.yaml:1: document 1: apiVersion: 'networking.istio.io/v1' is not one of plexus.io/v1: "
            "TrafficShift is a Plexus kind",
        ),
        (
            "apiVersion: plexus.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: a}\n",
            "p.yaml:1: document 1: apiVersion: 'plexus.io/v1' is not one of networking.istio.io/v1, "
            "networking.istio.io/v1alpha3, networking.istio.io/v1beta1: DestinationRule is an Istio kind",
        ),
        (
            "apiVersion: plexus.io/v1\nkind: RolloutPlan\nmetadata: {name: r}\nspec: {}\n",
            "p.yaml:2: document 1: kind: unknown kind 'RolloutPlan'; this file takes VirtualService, "
            "DestinationRule, RateLimitPolicy, UnitRouting, TrafficShift",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec: {}\n",
            "p.yaml:2: document 1: kind: Sidecar is not supported by Plexus (yet); this file takes",
        ),
        (
            "apiVersion: plexus.io/v2\nkind: UnitRouting\nmetadata: {name: u}\nspec: {hosts: [a]}\n",
            "p.yaml:1: document 1: apiVersion: 'plexus.io/v2' is not one of plexus.io/v1",
        ),
    ],
)
def test_kind_and_api_version_mismatches_are_named(text: str, expected: str) -> None:
    problems = _problems(text)
    assert any(p.startswith(expected) for p in problems), problems

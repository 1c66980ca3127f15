"""Routing resources (VirtualService, DestinationRule): typed parse, and every error with its file:line."""

from __future__ import annotations

import textwrap

import pytest

from plexus.config.bootstrap import resolve_bootstrap
from plexus.config.route_config import (
    MAX_REGEX_CHARS,
    DestinationRule,
    LoadBalancerSettings,
    RouteConfigError,
    RoutingConfig,
    StringMatch,
    Subset,
    parse_routes,
)
from plexus.config.sidecar_settings import ResolvedSettings

GOOD = textwrap.dedent(
    """\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata:
      name: reviews-route
      namespace: shop
    spec:
      hosts: [reviews]
      http:
      - name: canary
        match:
        - headers:
            x-canary: {exact: "1"}
            X-User: {prefix: "test-"}
          uri: {prefix: /api}
          method: {exact: GET}
        - headers:
            ":rpc-method": {regex: "get[A-Z][a-z]+"}
        route:
        - destination: {host: reviews, subset: v2}
      - route:
        - destination: {host: reviews, subset: v1}
          weight: 80
        - destination: {host: reviews, subset: v2}
          weight: 20
    ---
    apiVersion: networking.istio.io/v1beta1
    kind: DestinationRule
    metadata: {name: reviews-dr}
    spec:
      host: reviews
      trafficPolicy:
        loadBalancer:
          consistentHash: {httpHeaderName: X-User}
      subsets:
      - name: v1
        labels: {version: v1}
      - name: v2
        labels: {version: v2, zone: east}
    ---
    apiVersion: networking.istio.io/v1alpha3
    kind: DestinationRule
    metadata: {name: ratings}
    spec:
      host: ratings
      trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
    """
)


def test_good_documents_become_typed_objects() -> None:
    config = parse_routes(GOOD, "routes.yaml")
    (vs,) = config.virtual_services
    assert (vs.name, vs.namespace, vs.hosts, vs.source) == (
        "reviews-route",
        "shop",
        ("reviews",),
        "routes.yaml:1",
    )
    canary, split = vs.http
    assert canary.name == "canary" and len(canary.match) == 2
    first = canary.match[0]
    # header names are lower-cased, values kept as written
    assert first.headers == (
        ("x-canary", StringMatch("exact", "1")),
        ("x-user", StringMatch("prefix", "test-")),
    )
    assert first.uri == StringMatch("prefix", "/api") and first.method == StringMatch("exact", "GET")
    rpc = canary.match[1].headers[0]
    assert rpc[0] == ":rpc-method" and rpc[1].matches("getUser") and not rpc[1].matches("getUserX1")
    assert [(d.host, d.subset, d.weight) for d in split.route] == [
        ("reviews", "v1", 80),
        ("reviews", "v2", 20),
    ]
    reviews, ratings = config.destination_rules
    assert reviews == DestinationRule(
        "reviews-dr",
        "default",
        "reviews",
        (Subset("v1", (("version", "v1"),)), Subset("v2", (("version", "v2"), ("zone", "east")))),
        LoadBalancerSettings(hash_header="x-user"),
        "routes.yaml:26",
    )
    assert reviews.load_balancer is not None and reviews.load_balancer.lb_policy == "ring_hash"
    assert ratings.load_balancer == LoadBalancerSettings(simple="least_request")
    assert ratings.subsets == ()


def test_round_trips_through_json_for_the_serving_process() -> None:
    config = parse_routes(GOOD, "routes.yaml")
    again = RoutingConfig.from_json(config.to_json())
    assert again == config
    regex = again.virtual_services[0].http[0].match[1].headers[0][1]
    assert regex.regex is not None and regex.matches("getReviews")


def test_an_empty_file_is_no_routing() -> None:
    assert parse_routes("", "empty.yaml") == RoutingConfig(file="empty.yaml")
    assert parse_routes("---\n---\n", "empty.yaml").virtual_services == ()


VS_HEAD = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: [svc]
"""
DR = """\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr}
spec:
  host: svc
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(RouteConfigError) as info:
        parse_routes(text, "r.yaml")
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("http", "expected"),
    [
        # fields Istio has and Plexus does not implement yet
        (
            "  - route: [{destination: {host: svc}}]\n    retries: {attempts: 3}\n",
            "r.yaml:8: VirtualService vs: spec.http[0].retries: not supported by Plexus",
        ),
        (
            "  - route: [{destination: {host: svc}}]\n    timeout: 1s\n",
            "r.yaml:8: VirtualService vs: spec.http[0].timeout: not supported by Plexus",
        ),
        (
            "  - route: [{destination: {host: svc}}]\n    fault: {abort: {httpStatus: 500}}\n",
            "r.yaml:8: VirtualService vs: spec.http[0].fault: not supported by Plexus",
        ),
        (
            "  - route: [{destination: {host: svc}}]\n    mirror: {host: svc}\n",
            "r.yaml:8: VirtualService vs: spec.http[0].mirror: not supported by Plexus",
        ),
        (
            "  - route: [{destination: {host: svc, port: {number: 80}}}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].route[0].destination.port: not supported by Plexus",
        ),
        (
            "  - match: [{queryParams: {a: {exact: b}}}]\n    route: [{destination: {host: svc}}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].match[0].queryParams: not supported by Plexus",
        ),
        # fields Istio does not have
        (
            "  - route: [{destination: {host: svc}}]\n    retry: {}\n",
            "r.yaml:8: VirtualService vs: spec.http[0].retry: unknown field",
        ),
        (
            "  - route: [{destination: {host: svc}, weigth: 100}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].route[0].weigth: unknown field",
        ),
        # weights
        (
            "  - route:\n    - {destination: {host: svc, subset: v1}, weight: 70}\n"
            "    - {destination: {host: svc, subset: v2}, weight: 20}\n",
            "r.yaml:8: VirtualService vs: spec.http[0].route: weights sum to 90, not 100",
        ),
        (
            "  - route:\n    - {destination: {host: svc, subset: v1}, weight: 100}\n"
            "    - {destination: {host: svc, subset: v2}}\n",
            "r.yaml:8: VirtualService vs: spec.http[0].route: give a weight to every destination, or to none",
        ),
        (
            "  - route: [{destination: {host: svc}, weight: 101}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].route[0].weight: 101 is not in 0..100",
        ),
        (
            "  - route: [{destination: {host: svc}, weight: half}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].route[0].weight: must be an integer",
        ),
        # subsets
        (
            "  - route: [{destination: {host: svc, subset: v3}}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].route[0].destination.subset: "
            "subset 'v3' of 'svc' is not "
            "defined (defined: v1, v2)",
        ),
        (
            "  - route: [{destination: {host: other, subset: v1}}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].route[0].destination.subset: "
            "subset 'v1' of 'other' is not "
            "defined (no DestinationRule defines any)",
        ),
        # matches
        (
            "  - match: [{headers: {x-a: {exact: a, prefix: b}}}]\n    route: [{destination: {host: svc}}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].match[0].headers.x-a: "
            "give exactly one of exact, prefix, "
            "regex",
        ),
        (
            "  - match: [{headers: {x-a: {suffix: a}}}]\n    route: [{destination: {host: svc}}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].match[0].headers.x-a.suffix: unknown field",
        ),
        (
            "  - match: [{uri: {regex: '(a'}}]\n    route: [{destination: {host: svc}}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].match[0].uri.regex: not a valid RE2 regex: missing )",
        ),
        (
            "  - match: [{uri: {regex: '(a)\\1'}}]\n    route: [{destination: {host: svc}}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].match[0].uri.regex: "
            "not a valid RE2 regex: invalid escape",
        ),
        (
            "  - match: [{uri: {regex: 'a(?!b)'}}]\n    route: [{destination: {host: svc}}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].match[0].uri.regex: "
            "not a valid RE2 regex: invalid perl",
        ),
        (
            f"  - match: [{{uri: {{regex: '{'a' * (MAX_REGEX_CHARS + 1)}'}}}}]\n"
            "    route: [{destination: {host: svc}}]\n",
            f"r.yaml:7: VirtualService vs: spec.http[0].match[0].uri.regex: regex of {MAX_REGEX_CHARS + 1} "
            f"characters; at most {MAX_REGEX_CHARS}",
        ),
        (
            "  - match: [{headers: {'bad header': {exact: a}}}]\n    route: [{destination: {host: svc}}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].match[0].headers.bad header: "
            "'bad header' is not a header",
        ),
        # shapes
        ("  - route: []\n", "r.yaml:7: VirtualService vs: spec.http[0].route: empty"),
        ("  - name: x\n", "r.yaml:7: VirtualService vs: spec.http[0].route: missing"),
        (
            "  - route: [{destination: {host: 'not a name'}}]\n",
            "r.yaml:7: VirtualService vs: spec.http[0].route[0].destination.host: "
            "'not a name' is not a service",
        ),
        (
            "  - route: [{destination: {host: svc}}]\n    route: [{destination: {host: svc}}]\n",
            "r.yaml:8: VirtualService vs: spec.http[0].route: repeated field",
        ),
    ],
)
def test_each_virtual_service_error_names_its_line_and_path(http: str, expected: str) -> None:
    problems = _problems(VS_HEAD + "  http:\n" + http + DR)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}\n",
            "r.yaml:6: DestinationRule dr: spec.trafficPolicy.connectionPool: not supported by Plexus",
        ),
        (
            "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 1}\n",
            "r.yaml:7: DestinationRule dr: spec.trafficPolicy.outlierDetection: not supported by Plexus",
        ),
        (
            "  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n",
            "r.yaml:7: DestinationRule dr: spec.trafficPolicy.tls: not supported by Plexus",
        ),
        (
            "  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}\n",
            "r.yaml:6: DestinationRule dr: spec.trafficPolicy.loadBalancer.simple: "
            "'PASSTHROUGH': Plexus supports",
        ),
        (
            "  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}\n",
            "r.yaml:6: DestinationRule dr: spec.trafficPolicy.loadBalancer.consistentHash.useSourceIp: not "
            "supported by Plexus",
        ),
        (
            "  subsets:\n  - {name: v1, labels: {version: v1}, trafficPolicy: {}}\n",
            "r.yaml:7: DestinationRule dr: spec.subsets[0].trafficPolicy: not supported by Plexus",
        ),
        (
            "  subsets:\n  - {name: v1}\n  - {name: v1}\n",
            "r.yaml:8: DestinationRule dr: spec.subsets[1].name: subset 'v1' is defined twice",
        ),
        ("  subsets:\n  - {labels: {a: b}}\n", "r.yaml:7: DestinationRule dr: spec.subsets[0].name: missing"),
        ("  hostz: x\n", "r.yaml:6: DestinationRule dr: spec.hostz: unknown field"),
    ],
)
def test_each_destination_rule_error_names_its_line_and_path(spec: str, expected: str) -> None:
    text = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr}\n"
        "spec:\n  host: svc\n"
    )
    problems = _problems(text + spec)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: a}\nspec: {}\n",
            "r.yaml:1: document 1: apiVersion: 'networking.istio.io/v2' is not one of",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: a}\nspec: {}\n",
            "r.yaml:2: document 1: kind: Gateway is not supported by Plexus",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Frobnicator\nmetadata: {name: a}\nspec: {}\n",
            "r.yaml:2: document 1: kind: unknown kind 'Frobnicator'",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {}\n",
            "r.yaml:1: document 1: metadata.name: missing",
        ),
        (
            "kind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [svc]\n"
            "  http: [{route: [{destination: "
            "{host: svc}}]}]\nextra: 1\n",
            "r.yaml:1: document 1: apiVersion: missing",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\n"
            "spec:\n  hosts: [svc]\n"
            "  tcp: []\n  http: [{route: [{destination: {host: svc}}]}]\n",
            "r.yaml:6: VirtualService a: spec.tcp: not supported by Plexus",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  http: "
            "[{route: [{destination: {host: svc}}]}]\n",
            "r.yaml:5: VirtualService a: spec.hosts: missing",
        ),
        ("a: [1, 2\n", "r.yaml:2: (file): not valid YAML"),
        ("- 1\n- 2\n", "r.yaml:1: document 1: must be a mapping"),
    ],
)
def test_document_level_errors(text: str, expected: str) -> None:
    problems = _problems(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_every_problem_is_reported_in_one_pass_in_line_order() -> None:
    text = (
        VS_HEAD
        + textwrap.dedent(
            """\
          http:
          - retries: {attempts: 2}
            route:
            - {destination: {host: svc, subset: v9}, weight: 60}
            - {destination: {host: svc, subset: v1}, weight: 30}
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: again}
        spec:
          hosts: [svc]
          http: [{route: [{destination: {host: svc}}], timeout: 2s}]
        """
        )
        + DR
    )
    problems = _problems(text)
    assert [p.split(": ", 1)[0] for p in problems] == [
        "r.yaml:7",
        "r.yaml:9",
        "r.yaml:9",
        "r.yaml:12",
        "r.yaml:17",
    ], problems
    joined = "\n".join(problems)
    for needle in (
        "retries: not supported",
        "weights sum to 90",
        "subset 'v9' of 'svc' is not defined",
        "'svc' already has a VirtualService (at r.yaml:1)",
        "timeout: not supported",
    ):
        assert needle in joined, joined


def test_error_message_names_the_file_line_and_path() -> None:
    with pytest.raises(RouteConfigError) as info:
        parse_routes(
            VS_HEAD + "  http:\n  - route: [{destination: {host: svc}}]\n    mirror: {}\n", "/etc/r.yaml"
        )
    assert (
        str(info.value)
        == "/etc/r.yaml:8: VirtualService vs: spec.http[0].mirror: not supported by Plexus (yet)"
    )
    assert info.value.where == "/etc/r.yaml:8: VirtualService vs: spec.http[0].mirror"


def test_the_routes_file_is_a_sidecar_setting_from_flag_env_or_file() -> None:
    from_file = resolve_bootstrap({}, {}, "routes: /etc/plexus/routes.yaml\n", "side.yaml")
    assert from_file.config.routes == "/etc/plexus/routes.yaml" and from_file.sources["routes"] == "file"
    from_env = resolve_bootstrap({}, {"PLEXUS_ROUTES": "env.yaml"}, "routes: file.yaml\n", "side.yaml")
    assert from_env.config.routes == "env.yaml" and from_env.sources["routes"] == "env"
    from_flag = resolve_bootstrap({"routes": "flag.yaml"}, {"PLEXUS_ROUTES": "env.yaml"})
    plain = ResolvedSettings.from_json(from_flag.settings().to_json())
    assert plain.settings.routes == "flag.yaml" and plain.sources["routes"] == "flag"
    assert resolve_bootstrap({}, {}).config.routes is None


def test_regexes_are_re2_linear_time_even_for_patterns_that_backtrack_in_python_re() -> None:
    text = VS_HEAD + "  http:\n  - match: [{headers: {x-a: {regex: '(a|a)*x'}, x-b: {regex: '(a+)+b'}}}]\n"
    config = parse_routes(text + "    route: [{destination: {host: svc}}]\n", "r.yaml")
    (a, matcher), (_, nested) = config.virtual_services[0].http[0].match[0].headers
    assert a == "x-a"
    # Python's re takes seconds on 24 characters here; RE2 answers at once for a 60 KiB header
    assert not matcher.matches("a" * 60_000) and matcher.matches("a" * 1000 + "x")
    assert not nested.matches("a" * 60_000 + "c") and nested.matches("aaab")

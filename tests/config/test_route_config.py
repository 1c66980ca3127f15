"""Routing resources (VirtualService, DestinationRule): typed parse, and every error with its file:line."""

from __future__ import annotations

import textwrap

import pytest

from plexus.config._durations import format_duration, parse_duration
from plexus.config.bootstrap import resolve_bootstrap
from plexus.config.route_config import (
    DEFAULT_RETRY_ATTEMPTS,
    DEFAULT_RETRY_ON,
    MAX_REGEX_CHARS,
    ConnectionPool,
    DestinationRule,
    HttpFault,
    HttpRetry,
    LoadBalancerSettings,
    Mirror,
    OutlierDetection,
    RetryBudget,
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
            "  - route: [{destination: {host: svc}}]\n    redirect: {uri: /v2}\n",
            "r.yaml:8: VirtualService vs: spec.http[0].redirect: not supported by Plexus",
        ),
        (
            "  - route: [{destination: {host: svc}}]\n    rewrite: {uri: /v2}\n",
            "r.yaml:8: VirtualService vs: spec.http[0].rewrite: not supported by Plexus",
        ),
        (
            "  - route: [{destination: {host: svc}}]\n    corsPolicy: {allowOrigins: []}\n",
            "r.yaml:8: VirtualService vs: spec.http[0].corsPolicy: not supported by Plexus",
        ),
        (
            "  - route: [{destination: {host: svc}}]\n    mirrors: [{destination: {host: svc}}]\n",
            "r.yaml:8: VirtualService vs: spec.http[0].mirrors: not supported by Plexus",
        ),
        (
            "  - route: [{destination: {host: svc}}]\n    headers: {request: {set: {a: b}}}\n",
            "r.yaml:8: VirtualService vs: spec.http[0].headers: not supported by Plexus",
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
            "  trafficPolicy: {connectionPool: {tcp: {tcpKeepalive: {time: 7200s}}}}\n",
            "r.yaml:6: DestinationRule dr: spec.trafficPolicy.connectionPool.tcp.tcpKeepalive: "
            "not supported by Plexus",
        ),
        (
            "  trafficPolicy:\n    outlierDetection: {minHealthPercent: 50}\n",
            "r.yaml:7: DestinationRule dr: spec.trafficPolicy.outlierDetection.minHealthPercent: "
            "not supported by Plexus",
        ),
        (
            "  trafficPolicy:\n    portLevelSettings: []\n",
            "r.yaml:7: DestinationRule dr: spec.trafficPolicy.portLevelSettings: not supported by Plexus",
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
          - retries: {attempts: 2, retryOn: bogus}
            route:
            - {destination: {host: svc, subset: v9}, weight: 60}
            - {destination: {host: svc, subset: v1}, weight: 30}
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: again}
        spec:
          hosts: [svc]
          http: [{route: [{destination: {host: svc}}], timeout: 2x}]
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
        "retries.retryOn: unknown retry condition 'bogus'",
        "weights sum to 90",
        "subset 'v9' of 'svc' is not defined",
        "'svc' already has a VirtualService (at r.yaml:1)",
        "timeout: '2x' is not a duration",
    ):
        assert needle in joined, joined


def test_error_message_names_the_file_line_and_path() -> None:
    with pytest.raises(RouteConfigError) as info:
        parse_routes(
            VS_HEAD + "  http:\n  - route: [{destination: {host: svc}}]\n    redirect: {}\n", "/etc/r.yaml"
        )
    assert (
        str(info.value)
        == "/etc/r.yaml:8: VirtualService vs: spec.http[0].redirect: not supported by Plexus (yet)"
    )
    assert info.value.where == "/etc/r.yaml:8: VirtualService vs: spec.http[0].redirect"


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


# -- timeout, retries, fault, mirror; connection pool, outlier detection, retry budget ---------------

RESILIENT = textwrap.dedent(
    """\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: vs}
    spec:
      hosts: [svc]
      http:
      - name: guarded
        timeout: 2.5s
        retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx, reset,503,unavailable"}
        fault:
          delay: {fixedDelay: 1m, percentage: {value: 12.5}}
          abort: {httpStatus: 503, percentage: {value: 1}}
        mirror: {host: shadow, subset: v1}
        mirrorPercentage: {value: 25}
        route: [{destination: {host: svc, subset: v1}}]
      - timeout: 0s
        retries: {}
        fault: {abort: {grpcStatus: unavailable}}
        mirror: {host: shadow}
        route: [{destination: {host: svc}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: dr}
    spec:
      host: svc
      trafficPolicy:
        connectionPool:
          tcp: {maxConnections: 100, connectTimeout: 250ms}
          http:
            http1MaxPendingRequests: 10
            http2MaxRequests: 1000
            maxRetries: 3
            maxRequestsPerConnection: 0
        outlierDetection:
          consecutiveErrors: 7
          consecutiveGatewayErrors: 2
          interval: 1s
          baseEjectionTime: 1h
          maxEjectionPercent: 50
        retryBudget: {percent: {value: 30}, minRetryConcurrency: 1}
      subsets: [{name: v1, labels: {version: v1}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: shadow}
    spec:
      host: shadow
      trafficPolicy: {outlierDetection: {}, connectionPool: {}}
      subsets: [{name: v1, labels: {version: v1}}]
    """
)


def test_timeouts_retries_faults_and_mirrors_become_typed_policy() -> None:
    config = parse_routes(RESILIENT, "r.yaml")
    guarded, plain = config.virtual_services[0].http
    assert guarded.timeout == 2.5
    assert guarded.retries == HttpRetry(3, 0.5, ("5xx", "reset", "503", "unavailable"))
    assert guarded.fault == HttpFault(delay=60.0, delay_percent=12.5, abort_status=503, abort_percent=1.0)
    assert guarded.mirror == Mirror("shadow", "v1", 25.0)
    # Istio's defaults: 0s is no timeout, bare retries are 2 attempts on its default conditions,
    # a fault or mirror with no percentage applies to every request
    assert plain.timeout is None
    assert plain.retries == HttpRetry(DEFAULT_RETRY_ATTEMPTS, None, DEFAULT_RETRY_ON)
    assert plain.fault == HttpFault(abort_grpc_status="UNAVAILABLE")
    assert plain.mirror == Mirror("shadow", None, 100.0)
    assert config.foreign_destinations() == {"shadow"}  # a mirror's host is watched like a route's


def test_connection_pool_outlier_detection_and_retry_budget_become_typed_policy() -> None:
    config = parse_routes(RESILIENT, "r.yaml")
    dr, shadow = config.destination_rules
    # Istio's 0 for a pool limit means "not set": no limit
    assert dr.connection_pool == ConnectionPool(100, 0.25, 10, 1000, 3, None)
    assert dr.outlier_detection == OutlierDetection(7, 2, 1.0, 3600.0, 50)
    assert dr.retry_budget == RetryBudget(30.0, 1)
    assert shadow.outlier_detection == OutlierDetection() and shadow.connection_pool == ConnectionPool()
    assert shadow.retry_budget is None


def test_policy_fields_round_trip_through_json() -> None:
    config = parse_routes(RESILIENT, "r.yaml")
    assert RoutingConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("timeout: -1s", "spec.http[0].timeout: '-1s' is negative"),
        ("timeout: 5", "spec.http[0].timeout: '5' has no unit: write e.g. '5s'"),
        ("timeout: 5 s", "spec.http[0].timeout: '5 s' is not a duration"),
        ("timeout: 2d", "spec.http[0].timeout: '2d' is not a duration"),
        ("timeout: 25h", "spec.http[0].timeout: '25h' is longer than 24h"),
        ("timeout: 10us", "spec.http[0].timeout: '10us' is too short: at least 1ms"),
        ("timeout: [1s]", "spec.http[0].timeout: must be a string"),
        ("retries: {attempts: -1}", "spec.http[0].retries.attempts: -1 is not in 0..100"),
        ("retries: {attempts: 101}", "spec.http[0].retries.attempts: 101 is not in 0..100"),
        ("retries: {attempts: two}", "spec.http[0].retries.attempts: must be an integer"),
        ("retries: {perTryTimeout: 0s}", "spec.http[0].retries.perTryTimeout: '0s' is zero: at least 1ms"),
        ("retries: {retryOn: '5xx,oops'}", "spec.http[0].retries.retryOn: unknown retry condition 'oops'"),
        ("retries: {retryOn: '5xx,,reset'}", "spec.http[0].retries.retryOn: '5xx,,reset' has an empty"),
        ("retries: {retryOn: '700'}", "spec.http[0].retries.retryOn: '700' is not an HTTP status"),
        ("retries: {retryOn: 5XX}", "spec.http[0].retries.retryOn: unknown retry condition '5XX'"),
        ("retries: {backoff: 1s}", "spec.http[0].retries.backoff: not supported by Plexus"),
        ("retries: {tries: 1}", "spec.http[0].retries.tries: unknown field"),
        ("fault: {}", "spec.http[0].fault: give delay, abort or both"),
        ("fault: {delay: {percentage: {value: 5}}}", "spec.http[0].fault.delay.fixedDelay: missing"),
        ("fault: {delay: {fixedDelay: 0s}}", "spec.http[0].fault.delay.fixedDelay: '0s' is zero"),
        (
            "fault: {delay: {exponentialDelay: 1s}}",
            "spec.http[0].fault.delay.exponentialDelay: not supported by Plexus",
        ),
        ("fault: {delay: {fixedDelay: 1s, percent: 5}}", "spec.http[0].fault.delay.percent: not supported"),
        (
            "fault: {delay: {fixedDelay: 1s, percentage: {value: 101}}}",
            "spec.http[0].fault.delay.percentage.value: 101 is not in 0..100",
        ),
        (
            "fault: {delay: {fixedDelay: 1s, percentage: {value: .nan}}}",
            "spec.http[0].fault.delay.percentage.value: must be a finite number",
        ),
        (
            "fault: {delay: {fixedDelay: 1s, percentage: {}}}",
            "spec.http[0].fault.delay.percentage.value: missing",
        ),
        ("fault: {abort: {}}", "spec.http[0].fault.abort: give httpStatus or grpcStatus"),
        ("fault: {abort: {httpStatus: 99}}", "spec.http[0].fault.abort.httpStatus: 99 is not in 200..599"),
        (
            "fault: {abort: {grpcStatus: OK}}",
            "spec.http[0].fault.abort.grpcStatus: 'OK' is not a gRPC status",
        ),
        (
            "fault: {abort: {httpStatus: 503, grpcStatus: UNAVAILABLE}}",
            "spec.http[0].fault.abort: give httpStatus or grpcStatus, not both",
        ),
        ("fault: {abort: {http2Error: x}}", "spec.http[0].fault.abort.http2Error: not supported by Plexus"),
        (
            "fault: {abort: {httpStatus: 500, percentage: {value: -0.5}}}",
            "spec.http[0].fault.abort.percentage.value: -0.5 is not in 0..100",
        ),
        ("mirror: {subset: v1}", "spec.http[0].mirror.host: missing"),
        ("mirror: {host: svc, port: {number: 80}}", "spec.http[0].mirror.port: not supported by Plexus"),
        ("mirror: {host: 'a b'}", "spec.http[0].mirror.host: 'a b' is not a service name"),
        (
            "mirror: {host: svc, subset: v7}",
            "spec.http[0].mirror.subset: subset 'v7' of 'svc' is not defined (defined: v1, v2)",
        ),
        ("mirrorPercentage: {value: 5}", "spec.http[0].mirrorPercentage: without mirror"),
        (
            "mirrorPercentage: {value: 200}\n    mirror: {host: svc}",
            "spec.http[0].mirrorPercentage.value: 200 is not in 0..100",
        ),
        ("mirrorPercent: 5", "spec.http[0].mirrorPercent: not supported by Plexus"),
    ],
)
def test_each_request_policy_error_names_its_line_and_path(rule: str, expected: str) -> None:
    text = VS_HEAD + "  http:\n  - route: [{destination: {host: svc}}]\n    " + rule + "\n" + DR
    problems = _problems(text)
    assert any(p.startswith(f"r.yaml:8: VirtualService vs: {expected}") for p in problems), problems


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("connectionPool: {tcp: {maxConnections: -1}}", "connectionPool.tcp.maxConnections: -1 is not in"),
        (
            "connectionPool: {tcp: {maxConnections: 5000000000}}",
            "connectionPool.tcp.maxConnections: 5000000000",
        ),
        ("connectionPool: {tcp: {connectTimeout: 0s}}", "connectionPool.tcp.connectTimeout: '0s' is zero"),
        ("connectionPool: {tcp: {connectTimeout: 2h}}", "connectionPool.tcp.connectTimeout: '2h' is longer"),
        ("connectionPool: {tcp: {idleTimeout: 1s}}", "connectionPool.tcp.idleTimeout: not supported"),
        ("connectionPool: {http: {http2MaxRequests: many}}", "connectionPool.http.http2MaxRequests: must be"),
        ("connectionPool: {http: {maxRetries: -3}}", "connectionPool.http.maxRetries: -3 is not in"),
        (
            "connectionPool: {http: {h2UpgradePolicy: UPGRADE}}",
            "connectionPool.http.h2UpgradePolicy: not supp",
        ),
        ("connectionPool: {http: {maxPending: 1}}", "connectionPool.http.maxPending: unknown field"),
        ("connectionPool: {udp: {}}", "connectionPool.udp: unknown field"),
        ("outlierDetection: {consecutive5xxErrors: -1}", "outlierDetection.consecutive5xxErrors: -1 is not"),
        (
            "outlierDetection: {consecutive5xxErrors: 1, consecutiveErrors: 1}",
            "outlierDetection.consecutiveErrors: give consecutive5xxErrors only",
        ),
        ("outlierDetection: {interval: 0s}", "outlierDetection.interval: '0s' is zero"),
        (
            "outlierDetection: {baseEjectionTime: -30s}",
            "outlierDetection.baseEjectionTime: '-30s' is negative",
        ),
        ("outlierDetection: {maxEjectionPercent: 101}", "outlierDetection.maxEjectionPercent: 101 is not in"),
        ("outlierDetection: {splitExternalLocalOriginErrors: true}", "outlierDetection.splitExternal"),
        ("retryBudget: {percent: {value: 0}}", "retryBudget.percent.value: 0 allows no retry"),
        ("retryBudget: {percent: 20}", "retryBudget.percent: must be a mapping"),
        ("retryBudget: {minRetryConcurrency: -1}", "retryBudget.minRetryConcurrency: -1 is not in"),
    ],
)
def test_each_traffic_policy_error_names_its_line_and_path(policy: str, expected: str) -> None:
    text = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr}\n"
        f"spec:\n  host: svc\n  trafficPolicy:\n    {policy}\n"
    )
    problems = _problems(text)
    assert any(
        p.startswith(f"r.yaml:7: DestinationRule dr: spec.trafficPolicy.{expected}") for p in problems
    ), problems


def test_plexus_kinds_in_a_routes_file_point_to_plexus_apply() -> None:
    text = "apiVersion: plexus.io/v1\nkind: TrafficShift\nmetadata: {name: t}\nspec: {}\n"
    (problem,) = [p for p in _problems(text) if "kind:" in p]
    assert problem.startswith("r.yaml:2: document 1: kind: TrafficShift is a Plexus policy kind"), problem


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("0.5s", 0.5),
        ("100ms", 0.1),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        (".25s", 0.25),
        ("1500us", 0.0015),
        ("+3s", None),
    ],
)
def test_durations_in_istio_and_go_forms(text: str, seconds: float | None) -> None:
    if seconds is None:
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(text)
        return
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_a_rule_without_route_still_has_its_policy_checked_in_the_same_pass() -> None:
    problems = _problems(VS_HEAD + "  http:\n  - timeout: 1w\n    retries: {attempts: 1000}\n" + DR)
    assert [p.split(": ", 2)[2] for p in problems] == [
        "spec.http[0].timeout: '1w' is not a duration such as '1s', '0.5s', '100ms', '2m', '1h'",
        "spec.http[0].route: missing: give at least one destination",
        "spec.http[0].retries.attempts: 1000 is not in 0..100",
    ], problems


@pytest.mark.parametrize("name", ["a/b", "a b", "", "-x"])
def test_resource_names_are_names(name: str) -> None:
    text = (
        VS_HEAD.replace("{name: vs}", f"{{name: '{name}'}}")
        + "  http: [{route: [{destination: {host: svc}}]}]\n"
    )
    problems = _problems(text)
    assert any(
        p.startswith("r.yaml:3: document 1: metadata.name: ") and "is not a resource name" in p
        for p in problems
    ), problems

"""Rule policies compiled from VirtualService rules: retry conditions, fault draws, mirror draws, defaults."""

from __future__ import annotations

import random

import pytest

from plexus.config.route_config import (
    RETRY_ON,
    ConnectionPool,
    HttpFault,
    HttpRetry,
    HttpRoute,
    Mirror,
    OutlierDetection,
    RetryBudget,
    RouteDestination,
    VirtualService,
    parse_routes,
)
from plexus.core.errors import ConfigError
from plexus.proxy.resilience import (
    DEFAULT_RETRY_ON,
    FaultPolicy,
    MirrorPolicy,
    RetryOn,
    RulePolicy,
    compile_rule_policy,
    grpc_status_code,
)
from plexus.proxy.route_table import compile_routing, compile_table

DRAWS = 20_000


def _route(**kwargs: object) -> HttpRoute:
    return HttpRoute("r", (), (RouteDestination("orders"),), **kwargs)  # type: ignore[arg-type]


# -- RetryOn -----------------------------------------------------------------------------------------


def test_5xx_retries_every_5xx_and_every_local_failure() -> None:
    on = RetryOn(["5xx"])
    assert on.connect_failure and on.reset and on.refused_stream
    assert all(on.status(code) for code in range(500, 600))
    assert not on.status(409) and not on.status(200) and not on.status(499)
    assert not on.grpc(14)


def test_gateway_error_retries_only_502_503_504() -> None:
    on = RetryOn(["gateway-error"])
    assert [c for c in range(400, 600) if on.status(c)] == [502, 503, 504]
    assert on.connect_failure and on.reset


def test_single_conditions_set_only_their_own_flag() -> None:
    on = RetryOn(["connect-failure"])
    assert on.connect_failure and not on.reset and not on.refused_stream and not on.status(503)
    on = RetryOn(["refused-stream"])
    assert on.refused_stream and not on.connect_failure and not on.reset
    on = RetryOn(["reset"])
    assert on.reset and on.connect_failure and not on.status(503)
    on = RetryOn(["reset-before-request"])
    assert on.connect_failure and not on.reset


def test_retriable_4xx_is_409_and_bare_codes_are_retriable_status_codes() -> None:
    on = RetryOn(["retriable-4xx"])
    assert [c for c in range(100, 600) if on.status(c)] == [409]
    on = RetryOn(["retriable-status-codes", "503", "429"])
    assert [c for c in range(100, 600) if on.status(c)] == [429, 503]
    assert not on.connect_failure


def test_grpc_conditions_map_to_their_status_codes() -> None:
    on = RetryOn(["cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"])
    assert [c for c in range(17) if on.grpc(c)] == [1, 4, 8, 13, 14]
    assert not on.status(503) and not on.connect_failure


def test_istio_default_retry_on() -> None:
    assert DEFAULT_RETRY_ON.connect_failure and DEFAULT_RETRY_ON.refused_stream
    assert not DEFAULT_RETRY_ON.reset  # a reset after sending is not retried by Istio's default
    assert [c for c in range(100, 600) if DEFAULT_RETRY_ON.status(c)] == [503]
    assert [c for c in range(17) if DEFAULT_RETRY_ON.grpc(c)] == [1, 14]


def test_conditions_that_never_hold_in_plexus_are_accepted() -> None:
    on = RetryOn(["envoy-ratelimited", "retriable-headers", "http3-post-connect-failure"])
    assert not (on.connect_failure or on.reset or on.refused_stream)
    assert not any(on.status(c) for c in range(100, 600))


@pytest.mark.parametrize("bad", ["5xxx", "600", "099", "teapot"])
def test_unknown_conditions_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="retryOn"):
        RetryOn(["5xx", bad])


def test_every_condition_config_accepts_is_known_here() -> None:
    RetryOn(sorted(RETRY_ON))  # raises for one the parser lets through and this module does not know


# -- FaultPolicy and MirrorPolicy ----------------------------------------------------------------------


@pytest.mark.parametrize("percent", [0.0, 1.0, 10.0, 50.0, 99.0, 100.0])
def test_abort_draws_hold_their_percentage(percent: float) -> None:
    fault = FaultPolicy(HttpFault(abort_status=503, abort_percent=percent), random.Random(7))
    hits = sum(fault.abort() == 503 for _ in range(DRAWS))
    assert abs(hits / DRAWS * 100 - percent) <= 1.5  # 20k draws: the standard error is at most 0.36 %
    assert fault.delay() == 0.0  # no delay configured: never delays
    if percent in (0.0, 100.0):
        assert hits == DRAWS * percent / 100


@pytest.mark.parametrize("percent", [0.0, 5.0, 50.0, 100.0])
def test_delay_draws_hold_their_percentage(percent: float) -> None:
    fault = FaultPolicy(HttpFault(delay=0.25, delay_percent=percent), random.Random(11))
    delays = [fault.delay() for _ in range(DRAWS)]
    assert set(delays) <= {0.0, 0.25}
    assert abs(delays.count(0.25) / DRAWS * 100 - percent) <= 1.5
    assert fault.abort() is None  # no abort configured


def test_delay_and_abort_draw_independently() -> None:
    fault = FaultPolicy(
        HttpFault(delay=0.1, delay_percent=50.0, abort_status=500, abort_percent=50.0), random.Random(3)
    )
    both = sum(1 for _ in range(DRAWS) if fault.delay() and fault.abort() is not None)
    assert abs(both / DRAWS - 0.25) <= 0.02


def test_grpc_abort_gives_the_code_and_its_http_equivalent() -> None:
    fault = FaultPolicy(HttpFault(abort_grpc_status="UNAVAILABLE"), random.Random())
    assert fault.grpc_status == 14 and fault.abort() == 503
    fault = FaultPolicy(HttpFault(abort_grpc_status="RESOURCE_EXHAUSTED"), random.Random())
    assert fault.grpc_status == 8 and fault.abort() == 429
    fault = FaultPolicy(HttpFault(abort_grpc_status="INTERNAL"), random.Random())
    assert fault.grpc_status == 13 and fault.abort() == 500
    assert FaultPolicy(HttpFault(abort_status=418), random.Random()).grpc_status is None
    assert grpc_status_code("unavailable") == 14 and grpc_status_code("4") == 4
    with pytest.raises(ConfigError, match="grpcStatus"):
        grpc_status_code("NOPE")


def test_mirror_draws_hold_their_percentage() -> None:
    mirror = MirrorPolicy(Mirror("shadow", "v2", 20.0), random.Random(5))
    assert (mirror.service, mirror.subset) == ("shadow", "v2")
    taken = sum(mirror.take() for _ in range(DRAWS))
    assert abs(taken / DRAWS * 100 - 20.0) <= 1.5
    assert all(MirrorPolicy(Mirror("shadow"), random.Random()).take() for _ in range(100))
    assert not any(MirrorPolicy(Mirror("shadow", percent=0.0), random.Random()).take() for _ in range(100))


# -- compile_rule_policy -------------------------------------------------------------------------------


def test_a_rule_without_resilience_compiles_to_none() -> None:
    assert compile_rule_policy(_route()) is None


def test_a_rule_without_retries_gets_istios_default() -> None:
    policy = compile_rule_policy(_route(timeout=2.5))
    assert isinstance(policy, RulePolicy)
    assert policy.timeout == 2.5 and policy.retries == 2 and policy.per_try_timeout is None
    assert policy.retry_on is DEFAULT_RETRY_ON
    assert policy.fault is None and policy.mirror is None


def test_retries_compile_with_their_conditions() -> None:
    policy = compile_rule_policy(_route(retries=HttpRetry(3, 0.5, ("5xx", "unavailable"))))
    assert policy is not None
    assert policy.timeout is None and policy.retries == 3 and policy.per_try_timeout == 0.5
    assert policy.retry_on.status(500) and policy.retry_on.grpc(14) and policy.retry_on.reset


def test_zero_attempts_turn_retries_off() -> None:
    policy = compile_rule_policy(_route(retries=HttpRetry(0, None, ("5xx",))))
    assert policy is not None and policy.retries == 0
    assert not policy.retry_on.status(503) and not policy.retry_on.connect_failure


def test_fault_and_mirror_compile() -> None:
    policy = compile_rule_policy(
        _route(fault=HttpFault(abort_status=503, abort_percent=100.0), mirror=Mirror("shadow")),
        random.Random(1),
    )
    assert policy is not None and policy.fault is not None and policy.mirror is not None
    assert policy.fault.abort() == 503 and policy.mirror.take()
    assert policy.retries == 2  # Istio's default still applies to the rule
    assert policy.view()["fault"] == {"delay": 0.0, "abort": 503, "grpc_status": None}


def test_bad_conditions_fail_the_compile() -> None:
    with pytest.raises(ConfigError):
        compile_rule_policy(_route(retries=HttpRetry(2, None, ("bogus",))))
    with pytest.raises(ConfigError):
        compile_rule_policy(_route(fault=HttpFault(abort_grpc_status="BOGUS")))


YAML = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: orders}
spec:
  hosts: [orders]
  http:
  - name: flaky
    match: [{uri: {prefix: /flaky}}]
    timeout: 3s
    retries: {attempts: 4, perTryTimeout: 500ms, retryOn: "gateway-error,reset,409"}
    route: [{destination: {host: orders}}]
  - name: chaos
    match: [{uri: {prefix: /chaos}}]
    fault:
      abort: {httpStatus: 418, percentage: {value: 100}}
      delay: {fixedDelay: 1s, percentage: {value: 0}}
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: orders}}]
  - name: plain
    route: [{destination: {host: orders}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: orders}
spec:
  host: orders
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 250ms}
      http: {http1MaxPendingRequests: 5, http2MaxRequests: 20, maxRetries: 3}
    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 30}
"""


def test_compiled_routing_carries_rule_policies_and_destination_rule_parts() -> None:
    compiled = compile_routing(parse_routes(YAML, "routes.yaml"), random.Random(2))
    flaky, chaos, plain = compiled.tables["orders"].rules
    assert flaky.policy is not None and chaos.policy is not None and plain.policy is None
    assert flaky.policy.timeout == 3.0 and flaky.policy.retries == 4 and flaky.policy.per_try_timeout == 0.5
    assert [c for c in range(400, 600) if flaky.policy.retry_on.status(c)] == [409, 502, 503, 504]
    assert chaos.policy.fault is not None and chaos.policy.fault.abort() == 418
    assert chaos.policy.fault.delay() == 0.0
    assert chaos.policy.mirror is not None and chaos.policy.mirror.service == "shadow"
    pool = compiled.pools["orders"]
    assert pool == ConnectionPool(
        max_connections=10, connect_timeout=0.25, max_pending=5, max_requests=20, max_retries=3
    )
    outlier = compiled.outliers["orders"]
    assert isinstance(outlier, OutlierDetection)
    assert (outlier.consecutive_errors, outlier.interval, outlier.base_ejection_time) == (5, 1.0, 2.0)
    assert outlier.max_ejection_percent == 30
    assert compiled.budgets == {}  # none given: the clusters keep Envoy's default budget
    view = compiled.view()
    assert view["services"]["orders"]["rules"][0]["policy"]["retries"] == 4
    assert view["connection_pools"]["orders"]["max_requests"] == 20


def test_retry_budget_compiles_from_the_destination_rule() -> None:
    budget = "    retryBudget: {percent: {value: 10}, minRetryConcurrency: 1}\n"
    text = YAML.replace("    outlierDetection:", budget + "    outlierDetection:")
    compiled = compile_routing(parse_routes(text, "routes.yaml"))
    assert compiled.budgets["orders"] == RetryBudget(10.0, 1)


def test_a_bad_rule_policy_names_its_resource_and_rule() -> None:
    vs = VirtualService(
        "orders-vs",
        "default",
        ("orders",),
        (_route(), _route(retries=HttpRetry(2, None, ("bogus",)))),
        "routes.yaml:3",
    )
    with pytest.raises(ConfigError) as info:
        compile_table("orders", vs)
    assert info.value.where == "routes.yaml:3: VirtualService orders-vs: spec.http[1].retries.retryOn"

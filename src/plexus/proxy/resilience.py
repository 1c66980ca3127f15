"""Request resilience compiled once from policy: retry conditions, fault injection, mirroring, circuit
breaking.

Theory of operation: a VirtualService rule's ``timeout``, ``retries``, ``fault`` and ``mirror`` compile into
one ``RulePolicy`` (``compile_rule_policy``) that the route table keeps on the rule (``Rule.policy``); every
protocol's transport reads it once per request and asks its small objects the per-request questions
(``retry_on.status(503)``, ``fault.abort()``, ``mirror.take()``). A DestinationRule's ``connectionPool`` and
``retryBudget`` compile into the limits of the cluster's ``CircuitBreaker``, which the transports ask before
they start a request, wait for a connection or retry (``start_*``; False: answer 503 ``upstream_overflow``,
or for a retry: return the failure as it is).

Everything here is pure and allocation-free per request: ``__slots__`` classes, plain-int counters, random
draws from an injected ``rng`` (tests seed it). Nothing is installed when no policy is: the transports keep
their built-in behaviour for ``Route.policy is None``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Final

from plexus.config.route_config import (
    GRPC_STATUS,
    ConnectionPool,
    HttpFault,
    HttpRetry,
    HttpRoute,
    Mirror,
    RetryBudget,
)
from plexus.core.errors import ConfigError

# -- retry conditions ----------------------------------------------------------------------------------

GATEWAY_STATUSES: Final = frozenset({502, 503, 504})  # Envoy's gateway-error
RETRIABLE_4XX: Final = frozenset({409})  # Envoy's retriable-4xx: a conflict may succeed when tried again
FIVE_XX: Final = frozenset(range(500, 600))
# gRPC's retry-on names (Envoy's x-envoy-retry-grpc-on) → the status each retries.
GRPC_RETRY_ON: Final[dict[str, int]] = {
    "cancelled": GRPC_STATUS["CANCELLED"],
    "deadline-exceeded": GRPC_STATUS["DEADLINE_EXCEEDED"],
    "internal": GRPC_STATUS["INTERNAL"],
    "resource-exhausted": GRPC_STATUS["RESOURCE_EXHAUSTED"],
    "unavailable": GRPC_STATUS["UNAVAILABLE"],
}
HTTP_RETRY_ON: Final = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "connect-failure",
        "refused-stream",
        "retriable-4xx",
        "retriable-status-codes",
        "reset-before-request",
        # Accepted (Istio passes them through) but never hold in Plexus: no x-envoy-ratelimited header, no
        # retriable request headers configurable in Istio's retries, no HTTP/3.
        "envoy-ratelimited",
        "retriable-headers",
        "http3-post-connect-failure",
    }
)
_NEVER_HOLD: Final = frozenset({"envoy-ratelimited", "retriable-headers", "http3-post-connect-failure"})
RETRY_ON_NAMES: Final = HTTP_RETRY_ON | frozenset(GRPC_RETRY_ON)  # plus bare HTTP statuses, e.g. "503"
# Istio's default when a rule gives no retries (or retries without retryOn): 2 retries on these, with the
# retriable status codes [503] (pilot/pkg/networking/core/route/retry: DefaultPolicy).
ISTIO_DEFAULT_RETRIES: Final = 2
ISTIO_DEFAULT_RETRY_ON: Final = (
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
    "503",
)


class RetryOn:
    """Which failures a retry may follow, from Envoy's ``retry_on`` names (as Istio's ``retryOn`` gives them).

    ``connect_failure``: no connection could be made; ``reset``: the upstream closed or reset before a full
    response (timeouts of one try included); ``refused_stream``: HTTP/2 REFUSED_STREAM. ``5xx`` and
    ``gateway-error`` include all three, as in Envoy (a reset is answered 503 by Envoy itself).
    ``status(code)`` and ``grpc(code)`` answer whether a response's status is retriable."""

    __slots__ = ("connect_failure", "grpc_codes", "names", "refused_stream", "reset", "statuses")

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self.connect_failure = False
        self.reset = False
        self.refused_stream = False
        statuses: set[int] = set()
        grpc_codes: set[int] = set()
        for raw in self.names:
            name = raw.strip().lower()
            if name.isdigit():
                code = int(name)
                if not 100 <= code <= 599:
                    raise ConfigError("retries.retryOn", f"{raw!r} is not an HTTP status code (100-599)")
                statuses.add(code)  # Istio adds bare codes to retriable_status_codes
            elif name in ("5xx", "gateway-error", "reset"):
                self.connect_failure = self.reset = self.refused_stream = True
                if name != "reset":
                    statuses |= FIVE_XX if name == "5xx" else GATEWAY_STATUSES
            elif name == "connect-failure":
                self.connect_failure = True
            elif name == "reset-before-request":
                self.connect_failure = self.refused_stream = True  # nothing of the request was sent yet
            elif name == "refused-stream":
                self.refused_stream = True
            elif name == "retriable-4xx":
                statuses |= RETRIABLE_4XX
            elif name == "retriable-status-codes" or name in _NEVER_HOLD:
                pass  # the bare codes listed beside it are the codes
            elif name in GRPC_RETRY_ON:
                grpc_codes.add(GRPC_RETRY_ON[name])
            else:
                raise ConfigError(
                    "retries.retryOn",
                    f"{raw!r} is not a retry condition Plexus knows ({', '.join(sorted(RETRY_ON_NAMES))}, "
                    "or an HTTP status code)",
                )
        self.statuses = frozenset(statuses)
        self.grpc_codes = frozenset(grpc_codes)

    def status(self, code: int) -> bool:
        """Whether an HTTP response with status ``code`` may be retried."""
        return code in self.statuses

    def grpc(self, code: int) -> bool:
        """Whether a gRPC call that ended with ``grpc-status: code`` may be retried."""
        return code in self.grpc_codes

    def __repr__(self) -> str:
        return f"RetryOn({','.join(self.names)})"


DEFAULT_RETRY_ON: Final = RetryOn(ISTIO_DEFAULT_RETRY_ON)
NO_RETRY_ON: Final = RetryOn(())


# -- fault injection and mirroring -------------------------------------------------------------------

# A gRPC status to the HTTP status a non-gRPC caller sees for it (Envoy's Grpc::Utility::grpcToHttpStatus).
_HTTP_FOR_GRPC: Final[dict[int, int]] = {
    0: 200,  # OK
    GRPC_STATUS["CANCELLED"]: 499,
    GRPC_STATUS["INVALID_ARGUMENT"]: 400,
    GRPC_STATUS["DEADLINE_EXCEEDED"]: 504,
    GRPC_STATUS["NOT_FOUND"]: 404,
    GRPC_STATUS["ALREADY_EXISTS"]: 409,
    GRPC_STATUS["PERMISSION_DENIED"]: 403,
    GRPC_STATUS["RESOURCE_EXHAUSTED"]: 429,
    GRPC_STATUS["FAILED_PRECONDITION"]: 400,
    GRPC_STATUS["ABORTED"]: 409,
    GRPC_STATUS["OUT_OF_RANGE"]: 400,
    GRPC_STATUS["UNIMPLEMENTED"]: 501,
    GRPC_STATUS["UNAVAILABLE"]: 503,
    GRPC_STATUS["UNAUTHENTICATED"]: 401,
}
HTTP_FOR_OTHER_GRPC: Final = 500  # UNKNOWN, INTERNAL, DATA_LOSS


def http_status_for_grpc(code: int) -> int:
    """The HTTP status a gRPC status stands for (Envoy's grpcToHttpStatus): UNAVAILABLE → 503, ..."""
    return _HTTP_FOR_GRPC.get(code, HTTP_FOR_OTHER_GRPC)


def grpc_status_code(name: str) -> int:
    """``UNAVAILABLE`` (or ``14``) → 14; ConfigError for a name gRPC does not define."""
    text = name.strip()
    if text.isdigit() and 0 <= int(text) <= max(GRPC_STATUS.values()):
        return int(text)
    code = GRPC_STATUS.get(text.upper())
    if code is None:
        raise ConfigError(
            "fault.abort.grpcStatus", f"{name!r} is not a gRPC status ({', '.join(GRPC_STATUS)})"
        )
    return code


def _chance(percent: float, draw: Callable[[], float]) -> Callable[[], bool]:
    """A draw that holds ``percent`` % of the time; no random call at 0 or 100."""
    if percent >= 100.0:
        return lambda: True
    if percent <= 0.0:
        return lambda: False
    threshold = percent / 100.0
    return lambda: draw() < threshold


class FaultPolicy:
    """A rule's fault injection: ``delay()`` seconds to hold this request (0.0: not this time), ``abort()``
    the HTTP status to answer instead of calling the upstream (None: not this time). ``grpc_status`` is the
    numeric gRPC status when the rule aborts with ``grpcStatus``: gRPC transports answer it (trailers-only),
    others answer ``abort()``, its HTTP equivalent. Delay and abort draw independently, as in Envoy."""

    __slots__ = ("_abort_hit", "_delay_hit", "abort_status", "delay_seconds", "grpc_status")

    def __init__(self, fault: HttpFault, rng: random.Random) -> None:
        self.delay_seconds = fault.delay if fault.delay is not None and fault.delay > 0 else 0.0
        self.grpc_status = (
            grpc_status_code(fault.abort_grpc_status) if fault.abort_grpc_status is not None else None
        )
        status = fault.abort_status
        if status is None and self.grpc_status is not None:
            status = http_status_for_grpc(self.grpc_status)
        self.abort_status = status
        never = _chance(0.0, rng.random)
        self._delay_hit = _chance(fault.delay_percent, rng.random) if self.delay_seconds else never
        self._abort_hit = _chance(fault.abort_percent, rng.random) if status is not None else never

    def delay(self) -> float:
        return self.delay_seconds if self._delay_hit() else 0.0

    def abort(self) -> int | None:
        return self.abort_status if self._abort_hit() else None

    def view(self) -> dict[str, object]:
        return {"delay": self.delay_seconds, "abort": self.abort_status, "grpc_status": self.grpc_status}

    def __repr__(self) -> str:
        return f"FaultPolicy(delay={self.delay_seconds}, abort={self.abort_status}, grpc={self.grpc_status})"


class MirrorPolicy:
    """A rule's mirror: a copy of ``take()``-chosen requests goes to ``service`` (``subset``); its answer is
    dropped and never delays or fails the original."""

    __slots__ = ("_take", "percent", "service", "subset")

    def __init__(self, mirror: Mirror, rng: random.Random) -> None:
        self.service = mirror.host
        self.subset = mirror.subset
        self.percent = mirror.percent
        self._take = _chance(mirror.percent, rng.random)

    def take(self) -> bool:
        return self._take()

    def __repr__(self) -> str:
        return f"MirrorPolicy({self.service}/{self.subset}, {self.percent}%)"


# -- the rule's policy ---------------------------------------------------------------------------------


class RulePolicy:
    """What one VirtualService rule asks of every request it routes. ``timeout``: the whole request, retries
    included (None: none); ``retries``: how many retries after the first try; ``per_try_timeout``: one try
    (None: the whole request's timeout only); ``retry_on``: which failures may be retried."""

    __slots__ = ("fault", "mirror", "per_try_timeout", "retries", "retry_on", "timeout")

    def __init__(
        self,
        *,
        timeout: float | None = None,
        retries: int = ISTIO_DEFAULT_RETRIES,
        per_try_timeout: float | None = None,
        retry_on: RetryOn = DEFAULT_RETRY_ON,
        fault: FaultPolicy | None = None,
        mirror: MirrorPolicy | None = None,
    ) -> None:
        self.timeout = timeout
        self.retries = retries
        self.per_try_timeout = per_try_timeout
        self.retry_on = retry_on
        self.fault = fault
        self.mirror = mirror

    def view(self) -> dict[str, object]:
        fault, mirror = self.fault, self.mirror
        return {
            "timeout": self.timeout,
            "retries": self.retries,
            "per_try_timeout": self.per_try_timeout,
            "retry_on": list(self.retry_on.names),
            "fault": None if fault is None else fault.view(),
            "mirror": None
            if mirror is None
            else {"service": mirror.service, "subset": mirror.subset, "percent": mirror.percent},
        }

    def __repr__(self) -> str:
        return f"RulePolicy({self.view()})"


def _retry_on(retry: HttpRetry) -> RetryOn:
    return RetryOn(retry.retry_on) if retry.retry_on else DEFAULT_RETRY_ON


def compile_rule_policy(route: HttpRoute, rng: random.Random | None = None) -> RulePolicy | None:
    """The RulePolicy of one ``http[]`` rule; None when it sets none of timeout, retries, fault, mirror (the
    transports then keep their built-in behaviour). A rule without ``retries`` gets Istio's default (2 on
    connect-failure, refused-stream, unavailable, cancelled and 503). Raises ConfigError for a retry
    condition or gRPC status Plexus does not know."""
    if route.timeout is None and route.retries is None and route.fault is None and route.mirror is None:
        return None
    rng = rng or random.Random()
    retry = route.retries
    if retry is None:
        retries, per_try, retry_on = ISTIO_DEFAULT_RETRIES, None, DEFAULT_RETRY_ON
    else:
        if retry.attempts < 0:
            raise ConfigError("retries.attempts", f"{retry.attempts} is negative")
        retries, per_try = retry.attempts, retry.per_try_timeout
        retry_on = _retry_on(retry) if retry.attempts > 0 else NO_RETRY_ON
    return RulePolicy(
        timeout=route.timeout,
        retries=retries,
        per_try_timeout=per_try,
        retry_on=retry_on,
        fault=FaultPolicy(route.fault, rng) if route.fault is not None else None,
        mirror=MirrorPolicy(route.mirror, rng) if route.mirror is not None else None,
    )


# -- circuit breaking ----------------------------------------------------------------------------------

OVERFLOW_KINDS: Final = ("connections", "pending", "requests", "retries")
DEFAULT_BUDGET: Final = RetryBudget()  # Envoy's retry budget default: 20 % of requests in flight, at least 3


class CircuitBreaker:
    """A cluster's connection-pool limits (DestinationRule ``connectionPool``) and retry budget.

    Transports call ``start_request()`` when a request to the cluster begins and ``end_request()`` when it is
    answered (once per downstream request, not per try); ``start_pending()``/``end_pending()`` around waiting
    for a connection (the pool is at ``max_connections``); ``start_retry()``/``end_retry()`` around each retry
    try. A False from ``start_*`` means over the limit: answer 503 ``upstream_overflow`` (for a retry: do not
    retry, return the failure as it is); nothing was counted, so no ``end_*`` follows.

    Retries in flight are limited by ``max_retries`` and by the budget: at most ``budget_percent`` % of the
    requests in flight and pending (at least ``min_retry_concurrency``), as Envoy's ``retry_budget`` — so a
    failing upstream sees about 20 % extra load, not (attempts + 1) times. All limits are unlimited (None)
    by default except the budget, which always applies. ``limited`` is False when no connectionPool limit is
    set: a transport may then skip ``start_request``/``end_request`` for requests that cannot retry."""

    __slots__ = (
        "budget_exhausted",
        "budget_percent",
        "connect_timeout",
        "limited",
        "max_connections",
        "max_pending",
        "max_requests",
        "max_requests_per_connection",
        "max_retries",
        "min_retry_concurrency",
        "overflows",
        "pending",
        "requests",
        "retries",
    )

    def __init__(self, pool: ConnectionPool | None = None, budget: RetryBudget | None = None) -> None:
        self.requests = 0  # in flight
        self.pending = 0  # waiting for a connection
        self.retries = 0  # retry tries in flight
        self.overflows: dict[str, int] = dict.fromkeys(OVERFLOW_KINDS, 0)
        self.budget_exhausted = 0  # retries refused by the budget (not by max_retries)
        self.max_connections: int | None = None
        self.max_pending: int | None = None
        self.max_requests: int | None = None
        self.max_retries: int | None = None
        self.max_requests_per_connection: int | None = None
        self.connect_timeout: float | None = None
        self.budget_percent = DEFAULT_BUDGET.percent
        self.min_retry_concurrency = DEFAULT_BUDGET.min_retry_concurrency
        self.limited = False
        self.configure(pool, budget)

    def configure(self, pool: ConnectionPool | None, budget: RetryBudget | None) -> None:
        """Set the limits in place (requests in flight keep their counts); None: unlimited / the default."""
        pool = pool or ConnectionPool()
        budget = budget or DEFAULT_BUDGET
        self.max_connections = pool.max_connections
        self.max_pending = pool.max_pending
        self.max_requests = pool.max_requests
        self.max_retries = pool.max_retries
        self.max_requests_per_connection = pool.max_requests_per_connection
        self.connect_timeout = pool.connect_timeout
        self.budget_percent = budget.percent
        self.min_retry_concurrency = budget.min_retry_concurrency
        self.limited = (
            pool.max_connections is not None
            or pool.max_pending is not None
            or pool.max_requests is not None
            or pool.max_retries is not None
        )

    def start_request(self) -> bool:
        limit = self.max_requests
        if limit is not None and self.requests >= limit:
            self.overflows["requests"] += 1
            return False
        self.requests += 1
        return True

    def end_request(self) -> None:
        if self.requests > 0:
            self.requests -= 1

    def start_pending(self) -> bool:
        limit = self.max_pending
        if limit is not None and self.pending >= limit:
            self.overflows["pending"] += 1
            return False
        self.pending += 1
        return True

    def end_pending(self) -> None:
        if self.pending > 0:
            self.pending -= 1

    def retry_allowance(self) -> float:
        """How many retries may be in flight now under the budget."""
        share = (self.requests + self.pending) * self.budget_percent / 100.0
        return max(float(self.min_retry_concurrency), share)

    def start_retry(self) -> bool:
        limit = self.max_retries
        if limit is not None and self.retries >= limit:
            self.overflows["retries"] += 1
            return False
        if self.retries >= self.retry_allowance():
            self.budget_exhausted += 1
            return False
        self.retries += 1
        return True

    def end_retry(self) -> None:
        if self.retries > 0:
            self.retries -= 1

    def connection_overflow(self) -> None:
        """Count a connection the pool could not open because of ``max_connections`` (for metrics)."""
        self.overflows["connections"] += 1

    def view(self) -> dict[str, object]:
        return {
            "max_connections": self.max_connections,
            "max_pending": self.max_pending,
            "max_requests": self.max_requests,
            "max_retries": self.max_retries,
            "max_requests_per_connection": self.max_requests_per_connection,
            "connect_timeout": self.connect_timeout,
            "retry_budget_percent": self.budget_percent,
            "min_retry_concurrency": self.min_retry_concurrency,
            "requests": self.requests,
            "pending": self.pending,
            "retries": self.retries,
            "overflows": dict(self.overflows),
            "budget_exhausted": self.budget_exhausted,
        }

"""Reason codes: why a hop failed a request.

The same code appears in the local reply's ``x-plexus-error`` header, the log line and the counter
``plexus_local_replies_total{reason=...}``, so an operator can follow one failure across all three.
"""

from __future__ import annotations

from typing import Final

ERROR_HEADER: Final = "x-plexus-error"
# The hop that wrote a local reply names itself, so a caller can tell which sidecar failed the request.
HOP_HEADER: Final = "x-plexus-hop"

NO_HEALTHY_UPSTREAM: Final = "no_healthy_upstream"  # the service exists but has no usable endpoint
UNKNOWN_SERVICE: Final = "unknown_service"  # no such service is known to this sidecar
UPSTREAM_CONNECT_FAILED: Final = "upstream_connect_failed"  # every connect attempt failed
UPSTREAM_CONNECT_TIMEOUT: Final = "upstream_connect_timeout"
UPSTREAM_REQUEST_TIMEOUT: Final = "upstream_request_timeout"
UPSTREAM_RESET: Final = "upstream_reset"  # the upstream closed or reset before a full response
UPSTREAM_PROTOCOL_ERROR: Final = "upstream_protocol_error"  # the upstream's response broke HTTP
LOCAL_APP_UNAVAILABLE: Final = "local_app_unavailable"  # ingress: the sidecar's own app does not answer
DOWNSTREAM_PROTOCOL_ERROR: Final = "downstream_protocol_error"
REQUEST_HEADERS_TOO_LARGE: Final = "request_headers_too_large"
REQUEST_BODY_TOO_LARGE: Final = "request_body_too_large"
NOT_IMPLEMENTED: Final = "not_implemented"
NO_ROUTE: Final = "no_route"  # the service has a route table (VirtualService) and no rule of it matched
# Policy (control plane): each also names Envoy's response flag it matches.
UPSTREAM_OVERFLOW: Final = "upstream_overflow"  # UO: a connectionPool limit (circuit breaker) is full: 503
UPSTREAM_PER_TRY_TIMEOUT: Final = "upstream_per_try_timeout"  # UT: one try exceeded retries.perTryTimeout
FAULT_INJECTED: Final = "fault_injected"  # FI: a VirtualService fault abort answered instead of an upstream
RATE_LIMITED: Final = "rate_limited"  # RL: a local or global RateLimitPolicy bucket was empty: 429
LOAD_SHED: Final = "load_shed"  # an adaptive RateLimitPolicy shed the request under load: 503
RETRY_BUDGET_EXHAUSTED: Final = "retry_budget_exhausted"  # a retry was due, the budget was spent (log)

# Failures that happen before any byte of the request reached an app: safe to retry on another endpoint.
# A provider sidecar answering unknown_service has just withdrawn that service (the app unpublished first):
# the request never reached an app, so another endpoint may take it.
RETRIABLE_BEFORE_SEND: Final = frozenset(
    {
        UPSTREAM_CONNECT_FAILED,
        UPSTREAM_CONNECT_TIMEOUT,
        LOCAL_APP_UNAVAILABLE,
        NO_HEALTHY_UPSTREAM,
        UNKNOWN_SERVICE,
    }
)


def error_header_value(reason: str, service: str | None = None) -> str:
    """``no_healthy_upstream; service=orders`` — the value of the ``x-plexus-error`` header."""
    return reason if not service else f"{reason}; service={service}"


def parse_error_header(value: str) -> str:
    """The reason code of an ``x-plexus-error`` value (everything before the first ``;``)."""
    return value.split(";", 1)[0].strip()

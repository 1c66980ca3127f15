"""Outlier detection: Istio's ``outlierDetection`` (Envoy's consecutive-5xx and consecutive-gateway checks).

Theory of operation: the transports report every answer from an endpoint of a cluster that has a detector:
``success(endpoint)`` or ``failure(endpoint, gateway)`` (a 5xx, or a connect failure, reset or timeout, which
Envoy counts as a 503; ``gateway`` for 502/503/504 and those local-origin errors). The counts in a row live
on the Endpoint (one attribute write per answer). The failure that reaches ``consecutive_errors`` (or
``consecutive_gateway_errors``) ejects the endpoint at once: the cluster rebuilds its balancers without it.
``tick(now)`` runs a sweep every ``interval`` seconds: an endpoint ejected for ``base_ejection_time`` *
(times ejected in a row, capped at MAX_EJECTION_TIME) comes back; an endpoint healthy through a sweep has its
multiplier lowered by one.

Never more than ``max_ejection_percent`` % of the endpoints are ejected at once, but one may always be (as
Envoy: with 10 % of 5 hosts, the first is still ejected). When every endpoint of the cluster (or of a subset)
is ejected the balancers keep them all (Envoy's panic mode: better a bad host than none). The clock is
injected; the transport drives ``tick`` from its loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from plexus.config.route_config import OutlierDetection
from plexus.proxy.resilience import GATEWAY_STATUSES, http_status_for_grpc

if TYPE_CHECKING:
    from plexus.proxy.cluster import Cluster
    from plexus.proxy.endpoint import Endpoint

MAX_EJECTION_TIME: Final = 300.0  # seconds; Envoy's max_ejection_time default caps the growing multiplier


class OutlierDetector:
    """One cluster's detector. Counters for metrics: ``ejections_total``, ``ejections_consecutive_5xx``,
    ``ejections_gateway``, ``ejections_overflow`` (an ejection the cap refused), ``unejections_total``."""

    __slots__ = (
        "_clock",
        "_next_sweep",
        "cluster",
        "config",
        "consecutive_errors",
        "consecutive_gateway_errors",
        "ejections_consecutive_5xx",
        "ejections_gateway",
        "ejections_overflow",
        "ejections_total",
        "unejections_total",
    )

    def __init__(
        self, cluster: Cluster, config: OutlierDetection, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cluster = cluster
        self._clock = clock
        self.ejections_total = 0
        self.ejections_consecutive_5xx = 0
        self.ejections_gateway = 0
        self.ejections_overflow = 0
        self.unejections_total = 0
        self.config = config
        self.consecutive_errors = 0
        self.consecutive_gateway_errors = 0
        self._next_sweep = 0.0
        self.configure(config)

    def configure(self, config: OutlierDetection) -> None:
        self.config = config
        # 0 (or None) turns a detector off; a threshold no count reaches does the same without a test.
        self.consecutive_errors = config.consecutive_errors or 1 << 62
        self.consecutive_gateway_errors = config.consecutive_gateway_errors or 1 << 62
        self._next_sweep = self._clock() + config.interval

    # -- per answer (hot path while a DestinationRule asks for detection) --

    def success(self, endpoint: Endpoint) -> None:
        endpoint.errors_in_row = 0
        endpoint.gateway_errors_in_row = 0

    def failure(self, endpoint: Endpoint, gateway: bool) -> None:
        errors = endpoint.errors_in_row = endpoint.errors_in_row + 1
        if gateway:
            gateway_errors = endpoint.gateway_errors_in_row = endpoint.gateway_errors_in_row + 1
        else:
            gateway_errors = endpoint.gateway_errors_in_row = 0  # Envoy: another 5xx breaks the gateway run
        if endpoint.ejected or endpoint.removed:
            return
        if errors >= self.consecutive_errors:
            if self._eject(endpoint):
                self.ejections_consecutive_5xx += 1
        elif gateway_errors >= self.consecutive_gateway_errors and self._eject(endpoint):
            self.ejections_gateway += 1

    def observe(self, endpoint: Endpoint, status: int) -> None:
        """An HTTP answer from ``endpoint``: a 5xx is a failure (502/503/504 gateway ones), else a success."""
        if status >= 500:
            self.failure(endpoint, status in GATEWAY_STATUSES)
        else:
            self.success(endpoint)

    def observe_grpc(self, endpoint: Endpoint, grpc_status: int) -> None:
        """A gRPC call's end: its status counts as the HTTP status Envoy maps it to (UNAVAILABLE is a 503,
        DEADLINE_EXCEEDED a 504, INTERNAL/UNKNOWN/DATA_LOSS a 500; OK and caller errors are successes)."""
        self.observe(endpoint, http_status_for_grpc(grpc_status))

    def _eject(self, endpoint: Endpoint) -> bool:
        endpoints = self.cluster.endpoints
        ejected = sum(1 for e in endpoints if e.ejected)
        if ejected and 100.0 * (ejected + 1) / len(endpoints) > self.config.max_ejection_percent:
            self.ejections_overflow += 1
            return False
        endpoint.ejected = True
        endpoint.ejected_at = self._clock()
        endpoint.ejections += 1
        # Counted afresh after it returns (Envoy resets the counters of an ejected host).
        endpoint.errors_in_row = endpoint.gateway_errors_in_row = 0
        self.ejections_total += 1
        self.cluster.rebuild_balancers()
        return True

    # -- periodic --

    def tick(self, now: float) -> None:
        """Sweep when ``interval`` has passed since the last sweep: bring back endpoints whose ejection time
        is over; lower the multiplier of endpoints that stayed in."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.config.interval
        base = self.config.base_ejection_time
        back = False
        for endpoint in self.cluster.endpoints:
            if endpoint.ejected:
                hold = min(base * endpoint.ejections, max(MAX_EJECTION_TIME, base))
                if now >= endpoint.ejected_at + hold:
                    endpoint.ejected = False
                    endpoint.errors_in_row = endpoint.gateway_errors_in_row = 0
                    self.unejections_total += 1
                    back = True
            elif endpoint.ejections > 0 and now >= endpoint.ejected_at + base * endpoint.ejections + base:
                endpoint.ejections -= 1  # healthy for a while after its last ejection: forgive one
        if back:
            self.cluster.rebuild_balancers()

    @property
    def ejected_now(self) -> int:
        return sum(1 for e in self.cluster.endpoints if e.ejected)

    def view(self) -> dict[str, object]:
        c = self.config
        return {
            "consecutive_errors": c.consecutive_errors,
            "consecutive_gateway_errors": c.consecutive_gateway_errors,
            "interval": c.interval,
            "base_ejection_time": c.base_ejection_time,
            "max_ejection_percent": c.max_ejection_percent,
            "ejected": [e.key for e in self.cluster.endpoints if e.ejected],
            "ejections_total": self.ejections_total,
            "ejections_consecutive_5xx": self.ejections_consecutive_5xx,
            "ejections_gateway": self.ejections_gateway,
            "ejections_overflow": self.ejections_overflow,
            "unejections_total": self.unejections_total,
        }

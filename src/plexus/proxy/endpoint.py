"""An upstream endpoint and its live counters (plain ints, touched on the hot path)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plexus.core.address import HostPort, parse_host_port
from plexus.discovery.model import Instance

if TYPE_CHECKING:
    from plexus.proxy.outlier import OutlierDetector


class Endpoint:
    __slots__ = (
        "active",
        "address",
        "ejected",
        "ejected_at",
        "ejections",
        "errors_in_row",
        "failures",
        "gateway_errors_in_row",
        "idle",
        "instance",
        "key",
        "outlier",
        "removed",
        "total",
        "weight",
    )

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.address: HostPort = parse_host_port(instance.address, "address")
        self.key = instance.address
        self.weight = instance.weight
        self.active = 0  # requests in flight
        self.total = 0  # requests started
        self.failures = 0  # connect failures, resets, timeouts, protocol errors
        self.removed = False  # withdrawn from its cluster: finish in-flight work, start nothing new
        # Idle keep-alive connections to it, newest last: kept here by the transport's pool so a request
        # finds them with one attribute read instead of a lookup by address.
        self.idle: list[Any] = []
        # Outlier detection (plexus.proxy.outlier), kept here so a result costs one attribute write:
        # 5xx / gateway errors in a row, whether it is ejected now, since when, and how many times in a row
        # it was ejected (the ejection time's multiplier).
        self.errors_in_row = 0
        self.gateway_errors_in_row = 0
        self.ejected = False
        self.ejected_at = 0.0
        self.ejections = 0
        # Its cluster's outlier detector, None without one: a transport reports each answer with one test,
        # ``if endpoint.outlier is not None: endpoint.outlier.observe(endpoint, status)``.
        self.outlier: OutlierDetector | None = None

    def view(self) -> dict[str, object]:
        return {
            "address": self.key,
            "weight": self.weight,
            "healthy": not self.removed and not self.ejected,
            "active_requests": self.active,
            "total_requests": self.total,
            "failures": self.failures,
            "ejected": self.ejected,
            "ejections": self.ejections,
            "version": self.instance.version,
            "zone": self.instance.zone,
        }

    def __repr__(self) -> str:
        return f"Endpoint({self.key})"

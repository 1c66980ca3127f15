"""An upstream endpoint and its live counters (plain ints, touched on the hot path)."""

from __future__ import annotations

from typing import Any

from plexus.core.address import HostPort, parse_host_port
from plexus.discovery.model import Instance


class Endpoint:
    __slots__ = ("active", "address", "failures", "idle", "instance", "key", "removed", "total", "weight")

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

    def view(self) -> dict[str, object]:
        return {
            "address": self.key,
            "weight": self.weight,
            "healthy": not self.removed,
            "active_requests": self.active,
            "total_requests": self.total,
            "failures": self.failures,
            "version": self.instance.version,
            "zone": self.instance.zone,
        }

    def __repr__(self) -> str:
        return f"Endpoint({self.key})"

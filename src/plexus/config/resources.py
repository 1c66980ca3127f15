"""Every policy resource kind in one place: parse a file of them, hold a validated set, scope it to a sidecar.

``parse_resources(text, file_name)`` takes Istio's ``VirtualService`` and ``DestinationRule`` and Plexus's
``RateLimitPolicy``, ``UnitRouting`` and ``TrafficShift`` (see plexus.config.policy_kinds), in any mix, and
reports every problem in one pass as ``file:line: kind name: field path: message`` (raising
``RouteConfigError``). A ``PolicySet`` is what the control plane stores, compiles per sidecar
(``scoped``) and pushes as JSON; the sidecar rebuilds it with ``from_json`` and installs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from plexus.config.policy_kinds import RateLimitPolicy, TrafficShift, UnitRouting
from plexus.config.route_config import DestinationRule, RoutingConfig, VirtualService


@dataclass(frozen=True, slots=True)
class StressShare:
    """A running single-machine stress test (made by ``plexus stress-test``, never applied from a file):
    callers of ``host`` send ``percent`` % of its traffic to the instance published as ``address``."""

    host: str
    address: str
    percent: float


@dataclass(frozen=True, slots=True)
class PolicySet:
    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    rate_limits: tuple[RateLimitPolicy, ...] = ()
    unit_routings: tuple[UnitRouting, ...] = ()
    traffic_shifts: tuple[TrafficShift, ...] = ()
    stress: tuple[StressShare, ...] = ()
    file: str | None = None

    def routing(self) -> RoutingConfig:
        return RoutingConfig(self.virtual_services, self.destination_rules, self.file)

    def scoped(self, consumes: Iterable[str], provides: Iterable[str]) -> PolicySet:
        """What one sidecar needs: routing, resilience, unit routing and shifts of the services it calls
        (and of the destinations their routes name), rate limits of the services it provides."""
        raise NotImplementedError  # CONFIG helper

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError  # CONFIG helper

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicySet:
        raise NotImplementedError  # CONFIG helper

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PolicySet:
        return cls.from_dict(json.loads(text))


def parse_resources(text: str, file_name: str = "<policy>") -> PolicySet:
    """Every resource of a YAML file, validated; raises RouteConfigError listing every problem."""
    raise NotImplementedError  # CONFIG helper

"""Plexus's own policy kinds, where Istio has none: ``RateLimitPolicy``, ``UnitRouting``, ``TrafficShift``.

Typed, immutable and pure; parsed from YAML by ``plexus.config.resources.parse_resources`` (apiVersion
``plexus.io/v1``), serialised with the rest of a ``PolicySet``. Durations are seconds, shares are percents.

YAML shapes (every field optional unless marked)::

    kind: RateLimitPolicy            # enforced by the sidecar of each instance of `host` (its ingress)
    spec:
      host: orders                   # required: the service protected
      local:                         # a token bucket per sidecar
      - name: create                 # required, unique in the policy
        match: [{headers: {":rpc-method": {exact: create}}}]   # Istio HTTPMatchRequest shape; none: all
        perCaller: false             # one bucket per value of callerHeader
        callerHeader: x-plexus-caller
        tokens: 100                  # required: bucket size (the burst)
        fillPerSecond: 100           # required: refill rate
      global:                        # one budget shared by every sidecar of `host`, kept by the control plane
      - name: all
        match: [...]
        perCaller: false
        callerHeader: x-plexus-caller
        requestsPerUnit: 1000        # required
        unit: second                 # second | minute
        fallbackPerSecond: 50        # per sidecar while the token service cannot be reached (none: admit all)
      adaptive:                      # Sentinel-style load shedding
        cpuThreshold: 0.8            # fraction of the machine's CPUs busy (sampled each second)
        loadThreshold: 2.0           # 1-minute load average per CPU (none: not checked)
        maxConcurrency: 200          # in-flight requests per interface before shedding, whatever the load
        loadTestHeader: x-plexus-load-test   # requests with this header (any value) are shed first

    kind: UnitRouting                # enforced by callers' sidecars
    spec:
      hosts: [orders]                # required; "*" for every service
      scope: unit                    # unit | zone: traffic stays in the caller's own
      failover:                      # where to go when the caller's own has no healthy endpoint, in order;
      - from: u1                     # unlisted: every other one
        to: [u2, u3]
      drain: [u3]                    # units (zones) that receive no traffic while others can take it

    kind: TrafficShift               # enforced by callers' sidecars
    spec:
      host: orders                   # required
      by: unit                       # unit | zone | version
      weights: {u1: 20, u2: 80}      # required unless schedule: share per group, summing to 100
      schedule:                      # time-sharing: the weights in force from each time of day (UTC) on
      - at: "22:00"
        weights: {u1: 0, u2: 100}
      - at: "06:00"
        weights: {u1: 50, u2: 50}
      start: "2026-11-26T22:00:00Z"  # RFC 3339: weights apply from this instant (none: now)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from plexus.config.route_config import HttpMatch

PLEXUS_API_VERSIONS: Final = frozenset({"plexus.io/v1"})
PLEXUS_KINDS: Final = ("RateLimitPolicy", "UnitRouting", "TrafficShift")
CALLER_HEADER: Final = "x-plexus-caller"  # consumer sidecars set it to their workload on every request
LOAD_TEST_HEADER: Final = "x-plexus-load-test"

Scope = Literal["unit", "zone"]
ShiftBy = Literal["unit", "zone", "version"]
RateUnit = Literal["second", "minute"]


@dataclass(frozen=True, slots=True)
class LocalRateLimit:
    name: str
    tokens: int
    fill_per_second: float
    match: tuple[HttpMatch, ...] = ()
    per_caller: bool = False
    caller_header: str = CALLER_HEADER


@dataclass(frozen=True, slots=True)
class GlobalRateLimit:
    name: str
    requests_per_unit: int
    unit: RateUnit = "second"
    match: tuple[HttpMatch, ...] = ()
    per_caller: bool = False
    caller_header: str = CALLER_HEADER
    fallback_per_second: float | None = None


@dataclass(frozen=True, slots=True)
class AdaptiveLimit:
    cpu_threshold: float | None = 0.8
    load_threshold: float | None = None
    max_concurrency: int | None = None
    load_test_header: str = LOAD_TEST_HEADER


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    name: str
    namespace: str
    host: str
    local: tuple[LocalRateLimit, ...] = ()
    global_: tuple[GlobalRateLimit, ...] = ()
    adaptive: AdaptiveLimit | None = None
    source: str = ""


@dataclass(frozen=True, slots=True)
class Failover:
    from_: str
    to: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnitRouting:
    name: str
    namespace: str
    hosts: tuple[str, ...]
    scope: Scope = "unit"
    failover: tuple[Failover, ...] = ()
    drain: tuple[str, ...] = ()
    source: str = ""

    def applies_to(self, service: str) -> bool:
        return "*" in self.hosts or service in self.hosts


@dataclass(frozen=True, slots=True)
class ShiftStep:
    at_minute: int  # minutes after 00:00 UTC
    weights: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class TrafficShift:
    name: str
    namespace: str
    host: str
    by: ShiftBy = "unit"
    weights: tuple[tuple[str, int], ...] = ()
    schedule: tuple[ShiftStep, ...] = ()
    start: float | None = None  # epoch seconds
    source: str = ""

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
        callerHeader: x-plexus-caller   # (only with perCaller: true); header names are lower-cased
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
      hosts: [orders]                # required; ["*"] for every service (one naming a service overrides it)
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
                                     # (kept sorted by time; times distinct; each step sums to 100)
      - at: "22:00"
        weights: {u1: 0, u2: 100}
      - at: "06:00"
        weights: {u1: 50, u2: 50}
      start: "2026-11-26T22:00:00Z"  # RFC 3339: weights apply from this instant (none: now)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from plexus.config.route_config import HttpMatch, match_dict, match_from

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
    weights: tuple[tuple[str, int], ...]  # by group name


@dataclass(frozen=True, slots=True)
class TrafficShift:
    name: str
    namespace: str
    host: str
    by: ShiftBy = "unit"
    weights: tuple[tuple[str, int], ...] = ()
    schedule: tuple[ShiftStep, ...] = ()  # in at_minute order
    start: float | None = None  # epoch seconds
    source: str = ""


# -- to and from plain dicts (PolicySet.to_dict / from_dict; trusted input: written by to_dict) -------


def rate_limit_dict(p: RateLimitPolicy) -> dict[str, Any]:
    adaptive = p.adaptive
    return {
        "name": p.name,
        "namespace": p.namespace,
        "host": p.host,
        "source": p.source,
        "local": [
            {
                "name": r.name,
                "tokens": r.tokens,
                "fill_per_second": r.fill_per_second,
                "match": [match_dict(m) for m in r.match],
                "per_caller": r.per_caller,
                "caller_header": r.caller_header,
            }
            for r in p.local
        ],
        "global": [
            {
                "name": r.name,
                "requests_per_unit": r.requests_per_unit,
                "unit": r.unit,
                "match": [match_dict(m) for m in r.match],
                "per_caller": r.per_caller,
                "caller_header": r.caller_header,
                "fallback_per_second": r.fallback_per_second,
            }
            for r in p.global_
        ],
        "adaptive": None
        if adaptive is None
        else {
            "cpu_threshold": adaptive.cpu_threshold,
            "load_threshold": adaptive.load_threshold,
            "max_concurrency": adaptive.max_concurrency,
            "load_test_header": adaptive.load_test_header,
        },
    }


def rate_limit_from(d: Mapping[str, Any]) -> RateLimitPolicy:
    adaptive = d["adaptive"]
    return RateLimitPolicy(
        d["name"],
        d["namespace"],
        d["host"],
        tuple(
            LocalRateLimit(
                r["name"],
                r["tokens"],
                r["fill_per_second"],
                tuple(match_from(m) for m in r["match"]),
                r["per_caller"],
                r["caller_header"],
            )
            for r in d["local"]
        ),
        tuple(
            GlobalRateLimit(
                r["name"],
                r["requests_per_unit"],
                r["unit"],
                tuple(match_from(m) for m in r["match"]),
                r["per_caller"],
                r["caller_header"],
                r["fallback_per_second"],
            )
            for r in d["global"]
        ),
        None if adaptive is None else AdaptiveLimit(**adaptive),
        d["source"],
    )


def unit_routing_dict(u: UnitRouting) -> dict[str, Any]:
    return {
        "name": u.name,
        "namespace": u.namespace,
        "hosts": list(u.hosts),
        "scope": u.scope,
        "failover": [{"from": f.from_, "to": list(f.to)} for f in u.failover],
        "drain": list(u.drain),
        "source": u.source,
    }


def unit_routing_from(d: Mapping[str, Any]) -> UnitRouting:
    return UnitRouting(
        d["name"],
        d["namespace"],
        tuple(d["hosts"]),
        d["scope"],
        tuple(Failover(f["from"], tuple(f["to"])) for f in d["failover"]),
        tuple(d["drain"]),
        d["source"],
    )


def traffic_shift_dict(t: TrafficShift) -> dict[str, Any]:
    return {
        "name": t.name,
        "namespace": t.namespace,
        "host": t.host,
        "by": t.by,
        "weights": [list(w) for w in t.weights],
        "schedule": [{"at_minute": s.at_minute, "weights": [list(w) for w in s.weights]} for s in t.schedule],
        "start": t.start,
        "source": t.source,
    }


def traffic_shift_from(d: Mapping[str, Any]) -> TrafficShift:
    return TrafficShift(
        d["name"],
        d["namespace"],
        d["host"],
        d["by"],
        tuple((g, w) for g, w in d["weights"]),
        tuple(ShiftStep(s["at_minute"], tuple((g, w) for g, w in s["weights"])) for s in d["schedule"]),
        d["start"],
        d["source"],
    )

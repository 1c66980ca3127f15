"""Locality: where in the fleet a caller's requests go — its own unit or zone, a traffic shift, a stress test.

Theory of operation. Each policy becomes a balancer *wrapper* with the ``LoadBalancer`` shape
(``rebuild(endpoints)``, ``pick(exclude, hash_key)``), so the data path does not change: a cluster whose
service has locality policy simply holds a wrapper instead of its plain balancer (``Cluster.set_locality``).
A wrapper splits the endpoints into groups (by unit, zone or version, or "the stress-tested instance" and
"the rest") and keeps one inner balancer per group, made by the factory it is given, so the cluster's own
policy (round robin, least request, ring hash, ...) still picks within a group. Wrappers nest: a stress
share over a traffic shift over unit routing over the cluster's policy::

    StressShare ─► TrafficShift ─► UnitRouting ─► round_robin (one per group)

- ``UnitBalancer`` (UnitRouting): the caller's own unit (zone) first; when it has no endpoint to give, the
  configured failover order, then every other group; drained groups come last of all (they receive nothing
  while any other can take the request). The order is computed on ``rebuild``; a pick walks it.
- ``ShiftBalancer`` (TrafficShift): one random draw over the weights in force; groups without endpoints
  are left out of the draw, so their share spreads over the rest in proportion. The weights in force come
  from ``weights`` or from the schedule step of the current time of day (UTC), and apply only from
  ``start``; the next instant they change is precomputed and compared on each pick (no timers). A shift
  with both ``weights`` and a ``schedule`` follows the schedule (its steps cover the whole day).
- ``StressBalancer`` (StressShare): ``percent`` % of picks go to the one endpoint at ``address``, the rest
  are balanced over the others.

Retries: a pick with ``exclude`` never answers ``exclude`` while any other endpoint can be given (within the
group first, then in the next group), and answers it only when it is the only endpoint left, as the plain
balancers do. Health is what the inner balancers say: a group "has a healthy endpoint" when its balancer
gives one.

Pure: the clock (``time.time``) and the random source are injected for tests.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from plexus.config.policy_kinds import ShiftStep, TrafficShift, UnitRouting
from plexus.config.resources import PolicySet, StressShare
from plexus.core.errors import ConfigError
from plexus.proxy.endpoint import Endpoint
from plexus.proxy.lb import LoadBalancer

__all__ = [
    "Locality",
    "LocalityPlan",
    "ShiftBalancer",
    "StressBalancer",
    "UnitBalancer",
    "compile_locality",
    "group_key",
    "weights_at",
]

SECONDS_PER_DAY: Final = 86400
NEVER: Final = math.inf  # a "next switch" that never comes

MakeBalancer = Callable[[], LoadBalancer]
Wrap = Callable[[MakeBalancer], LoadBalancer]
KeyOf = Callable[[Endpoint], str]


def _unit(endpoint: Endpoint) -> str:
    return endpoint.instance.unit


def _zone(endpoint: Endpoint) -> str:
    return endpoint.instance.zone


def _version(endpoint: Endpoint) -> str:
    instance = endpoint.instance
    return instance.version or instance.labels.get("version", "")


_KEYS: Final[dict[str, KeyOf]] = {"unit": _unit, "zone": _zone, "version": _version}


def group_key(by: str) -> KeyOf:
    """What endpoints are grouped by: ``unit``, ``zone`` or ``version`` (the instance's release label)."""
    return _KEYS[by]


class _Groups:
    """Endpoints by group, one inner balancer per group; balancers of groups that stay are reused (their
    round-robin position survives an endpoint update)."""

    __slots__ = ("balancers", "key_of", "make")

    def __init__(self, key_of: KeyOf, make: MakeBalancer) -> None:
        self.key_of = key_of
        self.make = make
        self.balancers: dict[str, LoadBalancer] = {}

    def rebuild(self, endpoints: Sequence[Endpoint]) -> dict[str, LoadBalancer]:
        grouped: dict[str, list[Endpoint]] = {}
        key_of = self.key_of
        for endpoint in endpoints:
            grouped.setdefault(key_of(endpoint), []).append(endpoint)
        old = self.balancers
        fresh: dict[str, LoadBalancer] = {}
        for key, members in grouped.items():
            balancer = old.get(key)
            if balancer is None:
                balancer = self.make()
            balancer.rebuild(members)
            fresh[key] = balancer
        self.balancers = fresh
        return fresh


def _first_of(
    order: Sequence[LoadBalancer], exclude: Endpoint | None, hash_key: bytes | None
) -> Endpoint | None:
    """The first endpoint other than ``exclude`` that the balancers, in order, give; ``exclude`` itself
    when it is the only one any of them has; None when none has any."""
    fallback = None
    for balancer in order:
        chosen = balancer.pick(exclude, hash_key)
        if chosen is None:
            continue
        if chosen is not exclude:
            return chosen
        fallback = chosen
    return fallback


class UnitBalancer:
    """UnitRouting: stay in the caller's own group; fail over in order only when it has nothing to give."""

    __slots__ = ("_failover", "_groups", "_order", "drained", "own")

    def __init__(
        self,
        key_of: KeyOf,
        own: str,
        make: MakeBalancer,
        failover: Sequence[str] = (),
        drained: Iterable[str] = (),
    ) -> None:
        self.own = own
        self._failover = tuple(failover)
        self.drained = frozenset(drained)
        self._groups = _Groups(key_of, make)
        self._order: tuple[LoadBalancer, ...] = ()

    def rebuild(self, endpoints: Sequence[Endpoint]) -> None:
        balancers = self._groups.rebuild(endpoints)
        self._order = tuple(balancers[key] for key in self.order(balancers))

    def order(self, present: Iterable[str]) -> list[str]:
        """The groups in the order a pick tries them: own, failover targets, the others (by name), then
        the drained ones in that same order."""
        present_set = set(present)
        ranked: list[str] = []
        for key in (self.own, *self._failover, *sorted(present_set)):
            if key in present_set and key not in ranked:
                ranked.append(key)
        drained = self.drained
        return [k for k in ranked if k not in drained] + [k for k in ranked if k in drained]

    def pick(self, exclude: Endpoint | None = None, hash_key: bytes | None = None) -> Endpoint | None:
        order = self._order
        if order:
            chosen = order[0].pick(exclude, hash_key)
            if chosen is not None and chosen is not exclude:
                return chosen  # the common case: the caller's own unit has an endpoint
        return _first_of(order, exclude, hash_key)


def weights_at(shift: TrafficShift, now: float) -> tuple[dict[str, int] | None, float]:
    """The weights ``shift`` puts in force at epoch second ``now`` (None: not yet started, no shift) and the
    epoch second they next change (``NEVER`` when they do not)."""
    start = shift.start
    if start is not None and now < start:
        return None, start
    steps = sorted(shift.schedule, key=lambda s: s.at_minute)
    if not steps:
        return dict(shift.weights), NEVER
    return _step_weights(steps, now)


def _step_weights(steps: Sequence[ShiftStep], now: float) -> tuple[dict[str, int], float]:
    """Time-sharing: the step whose time of day (UTC) was passed last is in force (before the day's first
    step, the day's last one from yesterday); the next step's time is the next switch."""
    day_start = now - now % SECONDS_PER_DAY
    minute = int((now - day_start) // 60)
    minutes = [s.at_minute for s in steps]
    i = bisect.bisect_right(minutes, minute) - 1  # -1: before the first step, so the last one (yesterday)
    current = steps[i]
    following = steps[(i + 1) % len(steps)]
    next_switch = day_start + following.at_minute * 60
    if next_switch <= now:
        next_switch += SECONDS_PER_DAY
    return dict(current.weights), next_switch


class ShiftBalancer:
    """TrafficShift: draw a group by the weights in force, then let that group's balancer pick."""

    __slots__ = (
        "_all",
        "_clock",
        "_cumulative",
        "_drawn",
        "_endpoints",
        "_groups",
        "_next_switch",
        "_random",
        "_rest",
        "_total",
        "_weights",
        "shift",
    )

    def __init__(
        self,
        shift: TrafficShift,
        make: MakeBalancer,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.shift = shift
        self._clock = clock
        self._random = (rng or random.Random()).random
        self._groups = _Groups(group_key(shift.by), make)
        self._all = make()  # before ``start``: the endpoints as if there were no shift
        self._endpoints: Sequence[Endpoint] = ()
        self._weights, self._next_switch = weights_at(shift, clock())
        self._cumulative: list[float] = []
        self._drawn: tuple[LoadBalancer, ...] = ()
        self._rest: tuple[LoadBalancer, ...] = ()
        self._total = 0.0

    @property
    def weights(self) -> dict[str, int] | None:
        """The weights in force now (None: the shift has not started)."""
        return self._weights

    @property
    def next_switch(self) -> float:
        return self._next_switch

    def rebuild(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = endpoints
        self._all.rebuild(endpoints)
        self._groups.rebuild(endpoints)
        self._table()

    def _table(self) -> None:
        """The draw over groups that have endpoints and weight; the rest (weight 0 or not named) are tried
        only when no weighted group can give an endpoint, heaviest first."""
        weights = self._weights or {}
        balancers = self._groups.balancers
        weighted = sorted(
            ((weights.get(key, 0), key) for key in balancers if weights.get(key, 0) > 0), reverse=True
        )
        total = 0.0
        cumulative: list[float] = []
        for weight, _ in weighted:
            total += weight
            cumulative.append(total)
        self._cumulative = cumulative
        self._total = total
        self._drawn = tuple(balancers[key] for _, key in weighted)
        self._rest = tuple(balancers[key] for key in sorted(balancers) if weights.get(key, 0) <= 0)

    def _switch(self, now: float) -> None:
        self._weights, self._next_switch = weights_at(self.shift, now)
        self._table()

    def pick(self, exclude: Endpoint | None = None, hash_key: bytes | None = None) -> Endpoint | None:
        next_switch = self._next_switch
        if next_switch < NEVER:
            now = self._clock()
            if now >= next_switch:
                self._switch(now)
        if self._weights is None:
            return self._all.pick(exclude, hash_key)
        drawn = self._drawn
        if drawn:
            i = bisect.bisect_right(self._cumulative, self._random() * self._total)
            first = drawn[min(i, len(drawn) - 1)]
            chosen = first.pick(exclude, hash_key)
            if chosen is not None and chosen is not exclude:
                return chosen
        return _first_of((*drawn, *self._rest), exclude, hash_key)


class StressBalancer:
    """StressShare: ``percent`` % of picks go to the endpoint at ``address``; the others share the rest."""

    __slots__ = ("_others", "_random", "_target", "address", "percent")

    def __init__(
        self, address: str, percent: float, make: MakeBalancer, rng: random.Random | None = None
    ) -> None:
        self.address = address
        self.percent = percent
        self._random = (rng or random.Random()).random
        self._others = make()
        self._target: Endpoint | None = None

    def rebuild(self, endpoints: Sequence[Endpoint]) -> None:
        self._target = next((e for e in endpoints if e.key == self.address), None)
        self._others.rebuild([e for e in endpoints if e.key != self.address])

    def pick(self, exclude: Endpoint | None = None, hash_key: bytes | None = None) -> Endpoint | None:
        target = self._target
        if target is None:
            return self._others.pick(exclude, hash_key)
        if target is not exclude and self._random() * 100.0 < self.percent:
            return target
        chosen = self._others.pick(exclude, hash_key)
        if chosen is None or (chosen is exclude and target is not exclude):
            return target
        return chosen


@dataclass(frozen=True, slots=True)
class LocalityPlan:
    """The locality policy of one service for one sidecar: the wrappers to build around its balancers."""

    service: str
    unit_routing: UnitRouting | None = None
    own: str = ""  # the caller's unit or zone, whichever unit_routing's scope names
    shift: TrafficShift | None = None
    stress: StressShare | None = None
    clock: Callable[[], float] = time.time
    rng: random.Random | None = None

    def wrap(self, make: MakeBalancer) -> LoadBalancer:
        """A balancer for the service: the wrappers around balancers made by ``make``."""
        inner = make
        routing = self.unit_routing
        if routing is not None:
            inner = self._unit(routing, inner)
        if self.shift is not None:
            inner = self._shift(self.shift, inner)
        if self.stress is not None:
            inner = self._stress(self.stress, inner)
        return inner()

    def _unit(self, routing: UnitRouting, make: MakeBalancer) -> MakeBalancer:
        order = [t for f in routing.failover if f.from_ == self.own for t in f.to]
        key_of, own = group_key(routing.scope), self.own
        return lambda: UnitBalancer(key_of, own, make, order, routing.drain)

    def _shift(self, shift: TrafficShift, make: MakeBalancer) -> MakeBalancer:
        clock, rng = self.clock, self.rng
        return lambda: ShiftBalancer(shift, make, clock, rng)

    def _stress(self, stress: StressShare, make: MakeBalancer) -> MakeBalancer:
        rng = self.rng
        return lambda: StressBalancer(stress.address, stress.percent, make, rng)

    def view(self) -> dict[str, object]:
        routing, shift, stress = self.unit_routing, self.shift, self.stress
        return {
            "unit_routing": None
            if routing is None
            else {
                "name": f"{routing.namespace}/{routing.name}",
                "scope": routing.scope,
                "own": self.own,
                "drain": list(routing.drain),
            },
            "traffic_shift": None
            if shift is None
            else {"name": f"{shift.namespace}/{shift.name}", "by": shift.by},
            "stress": None if stress is None else {"address": stress.address, "percent": stress.percent},
        }


class Locality:
    """The locality policy compiled for one sidecar: ``for_service`` answers each service's plan (None for
    a service that has none; its cluster keeps its plain balancer)."""

    __slots__ = ("_plans", "_wildcard")

    def __init__(self, plans: dict[str, LocalityPlan], wildcard: LocalityPlan | None) -> None:
        self._plans = plans
        self._wildcard = wildcard  # a UnitRouting for "*": every service not named otherwise

    def for_service(self, service: str) -> LocalityPlan | None:
        plan = self._plans.get(service)
        if plan is not None:
            return plan
        wildcard = self._wildcard
        if wildcard is None:
            return None
        return replace(wildcard, service=service)

    def wrap_for(self, service: str) -> Wrap | None:
        """What ``Cluster.set_locality`` takes for ``service``."""
        plan = self.for_service(service)
        return plan.wrap if plan is not None else None

    def __bool__(self) -> bool:
        return bool(self._plans) or self._wildcard is not None

    def view(self) -> dict[str, object]:
        out: dict[str, object] = {s: p.view() for s, p in sorted(self._plans.items())}
        if self._wildcard is not None:
            out["*"] = self._wildcard.view()
        return out


def _where(kind: str, namespace: str, name: str, source: str) -> str:
    what = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
    return f"{source}: {what}" if source else what


def _check_shift(shift: TrafficShift) -> None:
    where = _where("TrafficShift", shift.namespace, shift.name, shift.source)
    if shift.by not in _KEYS:
        raise ConfigError(f"{where}: spec.by", f"{shift.by!r} is not one of {sorted(_KEYS)}")
    if not shift.weights and not shift.schedule:
        raise ConfigError(f"{where}: spec", "needs weights or a schedule")
    for i, step in enumerate(shift.schedule):
        if not 0 <= step.at_minute < 24 * 60:
            raise ConfigError(f"{where}: spec.schedule[{i}].at", f"minute {step.at_minute} is not in a day")


def compile_locality(
    policy: PolicySet,
    *,
    unit: str = "",
    zone: str = "",
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
) -> Locality:
    """Compile the UnitRoutings, TrafficShifts and stress shares of ``policy`` for a sidecar in ``unit`` and
    ``zone``. Raises ConfigError (the sidecar NACKs, keeping its last policy) for a UnitRouting whose scope
    this sidecar cannot honour because it was started without that unit or zone.

    Where several resources apply to one service, the one naming the service beats a ``"*"`` UnitRouting,
    and among equals the first by namespace/name wins (the order every sidecar agrees on)."""
    own_of = {"unit": unit, "zone": zone}
    specific: dict[str, tuple[UnitRouting, str]] = {}
    wildcard: tuple[UnitRouting, str] | None = None
    for routing in sorted(policy.unit_routings, key=lambda r: (r.namespace, r.name)):
        where = _where("UnitRouting", routing.namespace, routing.name, routing.source)
        if routing.scope not in own_of:
            raise ConfigError(f"{where}: spec.scope", f"{routing.scope!r} is not one of ['unit', 'zone']")
        own = own_of[routing.scope]
        if not own:
            raise ConfigError(
                f"{where}: spec.scope",
                f"scope {routing.scope} needs the sidecar's {routing.scope}, and this sidecar has none: "
                f"start it with --{routing.scope} (PLEXUS_{routing.scope.upper()})",
            )
        for host in routing.hosts:
            if host == "*":
                if wildcard is None:
                    wildcard = (routing, own)
            else:
                specific.setdefault(host, (routing, own))
    shifts: dict[str, TrafficShift] = {}
    for shift in sorted(policy.traffic_shifts, key=lambda s: (s.namespace, s.name)):
        _check_shift(shift)
        shifts.setdefault(shift.host, shift)
    stresses: dict[str, StressShare] = {}
    for stress in policy.stress:
        if not 0.0 <= stress.percent <= 100.0:
            where = f"stress test of {stress.host} on {stress.address}"
            raise ConfigError(where, f"percent {stress.percent} is not in 0..100")
        stresses.setdefault(stress.host, stress)
    plans: dict[str, LocalityPlan] = {}
    for service in {*specific, *shifts, *stresses}:
        routing_own = specific.get(service) or wildcard
        plans[service] = LocalityPlan(
            service,
            routing_own[0] if routing_own else None,
            routing_own[1] if routing_own else "",
            shifts.get(service),
            stresses.get(service),
            clock,
            rng,
        )
    wildcard_plan = (
        LocalityPlan("*", wildcard[0], wildcard[1], clock=clock, rng=rng) if wildcard is not None else None
    )
    return Locality(plans, wildcard_plan)

"""Locality balancers (pure): unit stickiness, failover order, drain, traffic-shift weights and schedules,
stress shares, retries that move on, and the cluster seam that wraps a cluster's balancers."""

from __future__ import annotations

import calendar
import random
from collections import Counter
from collections.abc import Sequence

import pytest

from plexus.config.policy_kinds import Failover, Scope, ShiftStep, TrafficShift, UnitRouting
from plexus.config.resources import PolicySet, StressShare
from plexus.core.errors import ConfigError
from plexus.discovery.model import Instance
from plexus.proxy import Cluster, ClusterManager, make_balancer
from plexus.proxy.endpoint import Endpoint
from plexus.proxy.locality import (
    ShiftBalancer,
    StressBalancer,
    UnitBalancer,
    compile_locality,
    group_key,
    weights_at,
)


def _ep(n: int, unit: str = "", zone: str = "", version: str = "") -> Endpoint:
    return Endpoint(Instance(service="s", address=f"10.0.0.{n}:80", unit=unit, zone=zone, version=version))


def _fleet() -> dict[str, list[Endpoint]]:
    """Two endpoints in each of u1, u2, u3."""
    return {u: [_ep(10 * i + k, unit=u) for k in (1, 2)] for i, u in enumerate(("u1", "u2", "u3"), 1)}


def _flat(fleet: dict[str, list[Endpoint]], *units: str) -> list[Endpoint]:
    return [e for u in units for e in fleet[u]]


def _units(picks: Sequence[Endpoint | None]) -> Counter[str]:
    return Counter(p.instance.unit if p is not None else "none" for p in picks)


def _rr() -> UnitBalancer:
    return UnitBalancer(group_key("unit"), "u1", lambda: make_balancer("round_robin"))


def _utc(text: str) -> float:
    """Epoch seconds of ``YYYY-MM-DD HH:MM:SS`` UTC."""
    date, clock = text.split()
    y, mo, d = (int(x) for x in date.split("-"))
    h, mi, s = (int(x) for x in clock.split(":"))
    return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- UnitRouting ------------------------------------------------------------------------------------


def test_calls_stay_in_the_callers_unit_and_spread_within_it() -> None:
    fleet = _fleet()
    lb = _rr()
    lb.rebuild(_flat(fleet, "u2", "u1", "u3"))
    picks = [lb.pick() for _ in range(100)]
    assert _units(picks) == Counter({"u1": 100})
    assert Counter(picks) == Counter({fleet["u1"][0]: 50, fleet["u1"][1]: 50})


def test_failover_follows_the_configured_order_then_any_other() -> None:
    fleet = _fleet()
    lb = UnitBalancer(group_key("unit"), "u1", lambda: make_balancer("random"), failover=("u3", "u2"))
    lb.rebuild(_flat(fleet, "u2", "u3"))  # u1 has no endpoint left
    assert _units([lb.pick() for _ in range(50)]) == Counter({"u3": 50})
    lb.rebuild(_flat(fleet, "u2"))
    assert _units([lb.pick() for _ in range(50)]) == Counter({"u2": 50})
    # a unit not named in the failover order still takes the traffic when nothing else can
    lb.rebuild([_ep(99, unit="u9")])
    assert _units([lb.pick() for _ in range(5)]) == Counter({"u9": 5})
    lb.rebuild([])
    assert lb.pick() is None
    # and the caller's own unit wins again as soon as it is back
    lb.rebuild(_flat(fleet, "u1", "u2", "u3"))
    assert _units([lb.pick() for _ in range(20)]) == Counter({"u1": 20})


def test_without_a_failover_order_the_others_are_tried_by_name() -> None:
    fleet = _fleet()
    lb = _rr()
    lb.rebuild(_flat(fleet, "u3", "u2"))
    assert _units([lb.pick() for _ in range(10)]) == Counter({"u2": 10})
    assert lb.order(["u3", "u2", "u1"]) == ["u1", "u2", "u3"]


def test_drained_units_receive_nothing_while_another_can_take_it() -> None:
    fleet = _fleet()
    make = lambda: make_balancer("round_robin")  # noqa: E731
    own_drained = UnitBalancer(group_key("unit"), "u1", make, failover=("u2",), drained=("u1",))
    own_drained.rebuild(_flat(fleet, "u1", "u2", "u3"))
    assert _units([own_drained.pick() for _ in range(30)]) == Counter({"u2": 30})
    # the failover target drained: the next one takes it
    target_drained = UnitBalancer(group_key("unit"), "u1", make, failover=("u2", "u3"), drained=("u2",))
    target_drained.rebuild(_flat(fleet, "u2", "u3"))
    assert _units([target_drained.pick() for _ in range(30)]) == Counter({"u3": 30})
    # only drained units left: they serve rather than fail the call
    target_drained.rebuild(_flat(fleet, "u2"))
    assert _units([target_drained.pick() for _ in range(5)]) == Counter({"u2": 5})


def test_a_retry_moves_to_another_endpoint_of_the_unit_then_to_the_next_unit() -> None:
    fleet = _fleet()
    lb = UnitBalancer(group_key("unit"), "u1", lambda: make_balancer("round_robin"), failover=("u3",))
    lb.rebuild(_flat(fleet, "u1", "u2", "u3"))
    a, b = fleet["u1"]
    for _ in range(10):
        assert lb.pick(exclude=a) is b
        assert lb.pick(exclude=b) is a
    lb.rebuild([a, *fleet["u2"], *fleet["u3"]])  # u1 has one endpoint: a retry leaves the unit
    for _ in range(10):
        retry = lb.pick(exclude=a)
        assert retry is not None and retry.instance.unit == "u3"
    lb.rebuild([a])  # nothing else anywhere: the excluded one is all there is (as plain balancers do)
    assert lb.pick(exclude=a) is a


def test_zone_scope_and_ring_hash_within_the_unit() -> None:
    eps = [_ep(i, zone="z1" if i <= 4 else "z2") for i in range(1, 9)]
    lb = UnitBalancer(group_key("zone"), "z2", lambda: make_balancer("ring_hash"))
    lb.rebuild(eps)
    for key in (b"alice", b"bob", b"carol"):
        first = lb.pick(None, key)
        assert first is not None and first.instance.zone == "z2"
        assert all(lb.pick(None, key) is first for _ in range(5))  # the same key sticks to one endpoint


# -- TrafficShift -----------------------------------------------------------------------------------


def _shift(**kw: object) -> TrafficShift:
    return TrafficShift(name="move", namespace="default", host="s", **kw)  # type: ignore[arg-type]


def test_weights_split_within_bounds_over_many_picks() -> None:
    fleet = _fleet()
    lb = ShiftBalancer(
        _shift(weights=(("u1", 20), ("u2", 80))),
        lambda: make_balancer("round_robin"),
        rng=random.Random(7),
    )
    lb.rebuild(_flat(fleet, "u1", "u2", "u3"))
    counts = _units([lb.pick() for _ in range(10000)])
    # p = 0.2 over 10,000 picks: sd = 40; a 5 sd band. u3 has no weight: nothing.
    assert 1800 <= counts["u1"] <= 2200, counts
    assert counts["u1"] + counts["u2"] == 10000, counts


def test_a_group_without_endpoints_is_skipped_and_its_share_spread_over_the_rest() -> None:
    fleet = _fleet()
    lb = ShiftBalancer(
        _shift(weights=(("u1", 20), ("u2", 30), ("u3", 50))),
        lambda: make_balancer("round_robin"),
        rng=random.Random(3),
    )
    lb.rebuild(_flat(fleet, "u1", "u2"))
    counts = _units([lb.pick() for _ in range(10000)])
    # 20:30 → 40% / 60%: sd ≈ 49; a 5 sd band
    assert 3750 <= counts["u1"] <= 4250, counts
    assert counts["u3"] == 0 and counts["none"] == 0
    # only unweighted groups left: they serve rather than fail the call
    lb.rebuild([_ep(99, unit="u9")])
    assert _units([lb.pick() for _ in range(5)]) == Counter({"u9": 5})


def test_by_version_and_retries_leave_the_excluded_endpoint() -> None:
    v1 = [_ep(1, version="v1")]
    v2 = [_ep(2, version="v2"), _ep(3, version="v2")]
    lb = ShiftBalancer(
        _shift(by="version", weights=(("v1", 50), ("v2", 50))),
        lambda: make_balancer("round_robin"),
        rng=random.Random(1),
    )
    lb.rebuild(v1 + v2)
    for _ in range(200):
        retry = lb.pick(exclude=v1[0])
        assert retry is not None and retry is not v1[0]
        retry = lb.pick(exclude=v2[0])
        assert retry is not None and retry is not v2[0]


def test_schedule_switches_at_the_right_minute() -> None:
    night = ShiftStep(at_minute=22 * 60, weights=(("u1", 0), ("u2", 100)))
    day = ShiftStep(at_minute=6 * 60, weights=(("u1", 50), ("u2", 50)))
    shift = _shift(schedule=(night, day))
    assert weights_at(shift, _utc("2026-11-26 21:59:59")) == (
        {"u1": 50, "u2": 50},
        _utc("2026-11-26 22:00:00"),
    )
    assert weights_at(shift, _utc("2026-11-26 22:00:00"))[0] == {"u1": 0, "u2": 100}
    # after midnight, before the day's first step: yesterday's last step is still in force
    assert weights_at(shift, _utc("2026-11-27 05:59:00")) == (
        {"u1": 0, "u2": 100},
        _utc("2026-11-27 06:00:00"),
    )

    fleet = _fleet()
    clock = Clock(_utc("2026-11-26 21:59:30"))
    lb = ShiftBalancer(shift, lambda: make_balancer("round_robin"), clock, random.Random(5))
    lb.rebuild(_flat(fleet, "u1", "u2"))
    before = _units([lb.pick() for _ in range(2000)])
    assert 800 <= before["u1"] <= 1200, before
    clock.now = _utc("2026-11-26 21:59:59")
    assert lb.weights == {"u1": 50, "u2": 50}
    clock.now = _utc("2026-11-26 22:00:00")  # the next pick sees the switch, no timer needed
    assert _units([lb.pick() for _ in range(500)]) == Counter({"u2": 500})
    assert lb.next_switch == _utc("2026-11-27 06:00:00")
    clock.now = _utc("2026-11-27 06:00:01")
    after = _units([lb.pick() for _ in range(2000)])
    assert 800 <= after["u1"] <= 1200, after


def test_weights_apply_only_from_start() -> None:
    fleet = _fleet()
    start = _utc("2026-11-26 22:00:00")
    clock = Clock(start - 60)
    lb = ShiftBalancer(
        _shift(weights=(("u2", 100),), start=start),
        lambda: make_balancer("round_robin"),
        clock,
        random.Random(2),
    )
    lb.rebuild(_flat(fleet, "u1", "u2"))
    before = _units([lb.pick() for _ in range(40)])
    assert before == Counter({"u1": 20, "u2": 20})  # no shift yet: the plain balancer over everything
    assert lb.weights is None and lb.next_switch == start
    clock.now = start
    assert _units([lb.pick() for _ in range(40)]) == Counter({"u2": 40})


# -- StressShare ------------------------------------------------------------------------------------


def test_stress_share_sends_its_percent_to_the_instance_and_balances_the_rest() -> None:
    eps = [_ep(i) for i in range(1, 5)]
    target = eps[2]
    lb = StressBalancer(target.key, 30.0, lambda: make_balancer("round_robin"), random.Random(11))
    lb.rebuild(eps)
    counts = Counter(lb.pick() for _ in range(10000))
    assert 2800 <= counts[target] <= 3200, counts  # sd ≈ 46
    others = [counts[e] for e in eps if e is not target]
    assert max(others) - min(others) <= 2, others  # round robin over the other three
    for _ in range(50):  # a retry away from the instance goes elsewhere, and vice versa
        assert lb.pick(exclude=target) not in (target, None)
        assert lb.pick(exclude=eps[0]) is not eps[0]
    lb.rebuild([target])
    assert lb.pick() is target
    assert lb.pick(exclude=target) is target  # the only one
    absent = StressBalancer("10.9.9.9:80", 100.0, lambda: make_balancer("round_robin"))
    absent.rebuild(eps)
    assert set(absent.pick() for _ in range(8)) == set(eps)  # the instance is gone: nothing changes


# -- compiling and the cluster seam ------------------------------------------------------------------


def _routing(scope: Scope = "unit", hosts: tuple[str, ...] = ("s",), **kw: object) -> UnitRouting:
    return UnitRouting(
        name="cells",
        namespace="default",
        hosts=hosts,
        scope=scope,
        source="p.yaml:3",
        **kw,  # type: ignore[arg-type]
    )


def test_a_unit_scope_on_a_sidecar_without_a_unit_is_refused_naming_resource_and_flag() -> None:
    policy = PolicySet(unit_routings=(_routing("unit"),))
    with pytest.raises(ConfigError) as err:
        compile_locality(policy, zone="z1")
    assert "UnitRouting default/cells" in str(err.value) and "p.yaml:3" in str(err.value)
    assert "--unit" in str(err.value)
    with pytest.raises(ConfigError, match="--zone"):
        compile_locality(PolicySet(unit_routings=(_routing("zone"),)), unit="u1")
    assert compile_locality(policy, unit="u1").for_service("s") is not None


def test_compiled_plans_compose_and_a_named_host_beats_the_wildcard() -> None:
    policy = PolicySet(
        unit_routings=(
            _routing(hosts=("*",), drain=("u2",)),
            UnitRouting(
                name="a-orders", namespace="default", hosts=("orders",), failover=(Failover("u1", ("u3",)),)
            ),
        ),
        traffic_shifts=(TrafficShift(name="m", namespace="default", host="orders", weights=(("u3", 100),)),),
        stress=(StressShare(host="pay", address="10.0.0.5:80", percent=50.0),),
    )
    locality = compile_locality(policy, unit="u1", rng=random.Random(0))
    assert locality
    orders = locality.for_service("orders")
    assert orders is not None and orders.unit_routing is not None
    assert orders.unit_routing.name == "a-orders" and orders.shift is not None
    anything = locality.for_service("anything")
    assert (
        anything is not None and anything.unit_routing is not None and anything.unit_routing.drain == ("u2",)
    )
    assert not compile_locality(PolicySet())
    assert compile_locality(PolicySet()).wrap_for("s") is None


def test_cluster_set_locality_wraps_its_balancer_and_subsets_and_survives_updates() -> None:
    fleet = _fleet()
    instances = [e.instance for e in _flat(fleet, "u1", "u2")]
    manager = ClusterManager()
    manager.update("s", instances)
    locality = compile_locality(PolicySet(unit_routings=(_routing(),)), unit="u2")
    manager.set_locality(locality.wrap_for)
    cluster = manager.get("s")
    assert isinstance(cluster, Cluster)
    assert _units([cluster.pick() for _ in range(10)]) == Counter({"u2": 10})
    cluster.set_subsets({"odd": {}})
    assert _units([cluster.pick_subset("odd") for _ in range(10)]) == Counter({"u2": 10})
    cluster.configure("random", None)  # a new lb policy keeps the wrapper around it
    assert _units([cluster.pick() for _ in range(10)]) == Counter({"u2": 10})
    cluster.update([e.instance for e in fleet["u1"]])  # u2's instances left: fail over
    assert _units([cluster.pick() for _ in range(10)]) == Counter({"u1": 10})
    manager.update("other", instances)  # a cluster made later gets its plan too
    other = manager.get("other")
    assert other is not None and other.locality is None  # the routing names only "s"
    manager.set_locality(
        compile_locality(PolicySet(unit_routings=(_routing(hosts=("*",)),)), unit="u1").wrap_for
    )
    manager.update("later", instances)  # a "*" routing reaches clusters made after it was installed
    later = manager.get("later")
    assert later is not None and later.locality is not None
    assert _units([later.pick() for _ in range(6)]) == Counter({"u1": 6})
    manager.set_locality(None)
    assert cluster.locality is None
    assert _units([cluster.pick() for _ in range(4)]) == Counter({"u1": 4})

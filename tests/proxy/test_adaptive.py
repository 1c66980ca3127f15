"""Adaptive shedding: BBR capacity per interface, baselines moving each second, load-test traffic first."""

from __future__ import annotations

import pytest

from plexus.config.policy_kinds import AdaptiveLimit, RateLimitPolicy
from plexus.core import reasons
from plexus.proxy import adaptive
from plexus.proxy.adaptive import AdaptiveState, InterfaceState, LoadSignal
from plexus.proxy.ratelimit import Gate, compile_gates
from plexus.proxy.stream import HeaderLookup, lookup_from_mapping


class Clock:
    def __init__(self, now: float = 2000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rpc(method: str, load_test: bool = False) -> HeaderLookup:
    headers = {":rpc-method": method}
    if load_test:
        headers["x-plexus-load-test"] = "1"
    return lookup_from_mapping(headers)


def complete(state: InterfaceState, second: int, count: int, rt: float) -> None:
    for i in range(count):
        state.record(second + i / (count + 1), rt)


def gate_for(limit: AdaptiveLimit, clock: Clock, signal: LoadSignal) -> Gate:
    policy = RateLimitPolicy("shed", "default", "orders", adaptive=limit)
    return compile_gates([policy], None, clock, load=signal)["orders"]


def test_capacity_is_max_rate_times_min_response_time_of_finished_seconds() -> None:
    state = InterfaceState("m")
    assert state.capacity(100.5) is None  # nothing finished yet
    complete(state, 100, 10, 0.1)
    assert state.capacity(100.9) is None  # the current second does not count until it ends
    assert state.capacity(101.2) == pytest.approx(1.0)
    complete(state, 101, 20, 0.3)
    assert state.capacity(102.0) == pytest.approx(20 * 0.1)  # max rate and min rt may come from other seconds


def test_baseline_moves_down_then_back_up_as_seconds_leave_the_window() -> None:
    state = InterfaceState("m")
    complete(state, 200, 40, 0.1)
    for second in range(201, 204):
        complete(state, second, 10, 0.1)
    assert state.capacity(204.0) == pytest.approx(4.0)  # the busy second 200 is still in the window
    for second in range(204, 206):
        complete(state, second, 10, 0.1)
    assert state.capacity(206.0) == pytest.approx(1.0)  # it has left: 10/s * 0.1 s
    complete(state, 206, 30, 0.1)
    assert state.capacity(207.0) == pytest.approx(3.0)


def test_overloaded_interface_admits_only_below_its_capacity() -> None:
    clock = Clock(300.5)
    signal = LoadSignal()
    gate = gate_for(AdaptiveLimit(cpu_threshold=0.8), clock, signal)
    assert gate.uses_load
    assert gate.adaptive is not None
    complete(gate.adaptive.interface(rpc("slow")), 299, 10, 0.2)  # capacity 2: 2.5 with the probe gain
    signal.cpu = 0.5  # below the threshold: nothing is shed
    assert [gate.admit(rpc("slow")) for _ in range(5)] == [None] * 5
    for _ in range(5):
        gate.done(clock.now - 0.2, rpc("slow"))
    signal.cpu = 0.95
    results = [gate.admit(rpc("slow")) for _ in range(5)]
    assert results == [None, None, None, reasons.LOAD_SHED, reasons.LOAD_SHED]
    assert [gate.admit(rpc("fresh")) for _ in range(3)] == [None] * 3  # no estimate yet: not shed
    gate.done(clock.now - 0.2, rpc("slow"))
    assert gate.admit(rpc("slow")) is None  # a slot freed
    assert gate.stats.shed == 2 and gate.stats.shed_load_test == 0


def test_load_average_threshold_also_triggers_shedding() -> None:
    clock = Clock(400.5)
    signal = LoadSignal()
    gate = gate_for(AdaptiveLimit(cpu_threshold=None, load_threshold=2.0), clock, signal)
    signal.cpu = 1.0  # not checked: no cpu threshold
    assert gate.admit(rpc("m", load_test=True)) is None
    signal.load_per_cpu = 3.0
    assert gate.admit(rpc("m", load_test=True)) == reasons.LOAD_SHED


def test_load_test_requests_are_shed_before_any_other() -> None:
    clock = Clock(500.5)
    signal = LoadSignal()
    gate = gate_for(AdaptiveLimit(cpu_threshold=0.8, max_concurrency=4), clock, signal)
    # not loaded: load-test traffic gets half of maxConcurrency, real traffic all of it
    assert gate.admit(rpc("m", load_test=True)) is None
    assert gate.admit(rpc("m", load_test=True)) is None
    assert gate.admit(rpc("m", load_test=True)) == reasons.LOAD_SHED
    assert gate.admit(rpc("m")) is None
    assert gate.admit(rpc("m")) is None
    assert gate.admit(rpc("m")) == reasons.LOAD_SHED  # maxConcurrency, whatever the load
    for _ in range(4):
        gate.done(clock.now, rpc("m"))
    # loaded, no estimate yet: every load-test request is shed, real ones are admitted
    signal.cpu = 0.99
    assert gate.admit(rpc("m", load_test=True)) == reasons.LOAD_SHED
    assert gate.admit(rpc("m")) is None
    assert gate.stats.shed == 3 and gate.stats.shed_load_test == 2


def test_interfaces_are_bounded_and_named_without_the_query() -> None:
    state = AdaptiveState(AdaptiveLimit(), LoadSignal())
    by_path = state.interface(lookup_from_mapping({":path": "/orders?id=3"}))
    assert by_path.name == "/orders"
    assert state.interface(lookup_from_mapping({":path": "/orders?id=4"})) is by_path
    for i in range(adaptive.MAX_INTERFACES * 2):
        state.interface(lookup_from_mapping({":path": f"/p{i}"}))
    assert len(state.interfaces) == adaptive.MAX_INTERFACES + 1
    assert adaptive.OVERFLOW_INTERFACE in state.interfaces


def test_a_policy_push_keeps_in_flight_counts() -> None:
    clock = Clock(600.5)
    signal = LoadSignal()
    policy = RateLimitPolicy("shed", "default", "orders", adaptive=AdaptiveLimit(max_concurrency=2))
    gates = compile_gates([policy], None, clock, load=signal)
    assert gates["orders"].admit(rpc("m")) is None
    assert gates["orders"].admit(rpc("m")) is None
    tighter = RateLimitPolicy("shed", "default", "orders", adaptive=AdaptiveLimit(max_concurrency=3))
    again = compile_gates([tighter], None, clock, load=signal, previous=gates)
    assert again["orders"].admit(rpc("m")) is None
    assert again["orders"].admit(rpc("m")) == reasons.LOAD_SHED
    gates["orders"].done(clock.now, rpc("m"))  # ended on the gate it was admitted by
    assert again["orders"].admit(rpc("m")) is None

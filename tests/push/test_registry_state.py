"""The registry's state machine with a fake clock: leases, debounce, versions, warm-up, restore."""

from __future__ import annotations

from plexus.discovery.model import Instance, ServiceSet, SetState
from plexus.push.registry_state import Effects, RegistryState, Restored


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.us = 1_000_000

    def monotonic(self) -> float:
        return self.now

    def time_us(self) -> int:
        return self.us

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.us += int(seconds * 1_000_000)


def inst(addr: str, service: str = "orders", **kw: object) -> Instance:
    return Instance(service, addr, **kw)  # type: ignore[arg-type]


def make(clock: FakeClock, *, warmup: float = 0.0, restored: Restored | None = None) -> RegistryState:
    return RegistryState(clock=clock, lease_grace=3.0, debounce=0.05, warmup=warmup, restored=restored)


def sets_for(effects: Effects, sub: int) -> list[ServiceSet]:
    return [p.update for p in effects.pushes if p.subscriber == sub]


def addrs(sset: ServiceSet) -> list[str]:
    return [i.address for i in sset.instances]


def run_until(state: RegistryState, clock: FakeClock, until: float) -> Effects:
    """Tick at every deadline up to ``until`` seconds from now, as the server's timer does."""
    end = clock.now + until
    total = Effects()
    while True:
        deadline = state.next_deadline()
        if deadline is None or deadline > end:
            clock.now = end
            return total
        clock.advance(max(deadline - clock.now, 0.0))
        total.extend(state.tick())


def test_subscribe_gets_the_published_set_at_once_and_changes_after_the_debounce() -> None:
    clock = FakeClock()
    state = make(clock)
    state.publisher_seen("p1")
    state.published("p1", [inst("10.0.0.1:80"), inst("10.0.0.2:80")])
    run_until(state, clock, 0.1)
    first = sets_for(state.subscribe(1, ["orders"]), 1)
    assert [addrs(s) for s in first] == [["10.0.0.1:80", "10.0.0.2:80"]]
    state.published("p1", [inst("10.0.0.1:80")])
    assert sets_for(run_until(state, clock, 0.01), 1) == []  # inside the debounce window
    later = sets_for(run_until(state, clock, 0.1), 1)
    assert [addrs(s) for s in later] == [["10.0.0.1:80"]]
    assert later[0].version > first[0].version


def test_a_burst_of_changes_gives_one_push_with_the_last_set() -> None:
    clock = FakeClock()
    state = make(clock)
    state.subscribe(1, ["orders"])
    state.publisher_seen("p1")
    for n in range(1, 30):
        state.published("p1", [inst(f"10.0.0.{n}:80")])
        clock.advance(0.001)
    pushes = sets_for(run_until(state, clock, 1.0), 1)
    assert [addrs(s) for s in pushes] == [["10.0.0.29:80"]]


def test_versions_grow_even_when_the_wall_clock_goes_back() -> None:
    clock = FakeClock()
    state = make(clock)
    state.subscribe(1, ["orders"])
    state.publisher_seen("p1")
    versions = []
    for n in range(1, 5):
        clock.us -= 10_000_000  # NTP stepped the clock back
        state.published("p1", [inst(f"10.0.0.{n}:80")])
        versions += [s.version for s in sets_for(run_until(state, clock, 0.1), 1)]
    assert len(versions) == 4 and versions == sorted(set(versions))


def test_a_lost_publisher_is_removed_after_the_grace_not_before() -> None:
    clock = FakeClock()
    state = make(clock)
    session = state.publisher_seen("p1")
    state.published("p1", [inst("10.0.0.1:80")])
    state.subscribe(1, ["orders"])
    run_until(state, clock, 0.1)
    state.publisher_lost("p1", session)
    assert sets_for(run_until(state, clock, 2.9), 1) == []
    effects = run_until(state, clock, 0.2)
    assert [addrs(s) for s in sets_for(effects, 1)] == [[]]
    assert effects.expired == ["p1"]
    assert state.publisher_count() == 0


def test_a_reconnect_within_the_grace_changes_nothing() -> None:
    clock = FakeClock()
    state = make(clock)
    session = state.publisher_seen("p1")
    state.published("p1", [inst("10.0.0.1:80")])
    state.subscribe(1, ["orders"])
    run_until(state, clock, 0.1)
    state.publisher_lost("p1", session)
    run_until(state, clock, 2.0)
    state.publisher_seen("p1")
    state.published("p1", [inst("10.0.0.1:80")])
    effects = run_until(state, clock, 10.0)
    assert effects.pushes == [] and effects.expired == []


def test_the_late_loss_of_an_old_stream_does_not_end_the_new_one() -> None:
    clock = FakeClock()
    state = make(clock)
    old = state.publisher_seen("p1")
    state.published("p1", [inst("10.0.0.1:80")])
    state.publisher_seen("p1")  # the new stream arrived before the old one was noticed gone
    state.publisher_lost("p1", old)
    state.subscribe(1, ["orders"])
    assert run_until(state, clock, 10.0).expired == []
    assert state.service_set("orders") is not None
    assert addrs(state.service_set("orders")) == ["10.0.0.1:80"]  # type: ignore[arg-type]


def test_an_address_stays_while_any_publisher_holds_it() -> None:
    clock = FakeClock()
    state = make(clock)
    s1 = state.publisher_seen("p1")
    state.published("p1", [inst("10.0.0.1:80", version="v1")])
    state.publisher_seen("p2")
    state.published("p2", [inst("10.0.0.1:80", version="v2")])
    run_until(state, clock, 0.1)
    sset = state.service_set("orders")
    assert sset is not None and [i.version for i in sset.instances] == ["v2"]  # the latest publish wins
    state.publisher_lost("p1", s1)
    run_until(state, clock, 5.0)
    sset = state.service_set("orders")
    assert sset is not None and addrs(sset) == ["10.0.0.1:80"]
    state.subscribe(1, ["orders"])
    state.published("p2", [])
    pushes = sets_for(run_until(state, clock, 0.1), 1)
    assert [addrs(s) for s in pushes] == [[]]


def test_without_a_snapshot_every_push_waits_for_the_warm_up() -> None:
    clock = FakeClock()
    state = make(clock, warmup=5.0)
    assert sets_for(state.subscribe(1, ["orders"]), 1) == []
    clock.advance(1.0)
    state.publisher_seen("p1")
    state.published("p1", [inst("10.0.0.1:80")])
    assert run_until(state, clock, 3.9).pushes == []
    assert state.warming
    pushes = sets_for(run_until(state, clock, 0.2), 1)
    assert [addrs(s) for s in pushes] == [["10.0.0.1:80"]]
    assert not state.warming


def test_a_snapshot_is_served_restored_then_live_without_publishers_that_did_not_return() -> None:
    clock = FakeClock()
    restored = Restored(
        publishers={
            "p1": [inst("10.0.0.1:80")],
            "p2": [inst("10.0.0.2:80")],
            "p3": [inst("10.0.0.3:80", "pay")],
        },
        versions={"orders": 777, "pay": 778},
    )
    state = make(clock, warmup=5.0, restored=restored)
    first = sets_for(state.subscribe(1, ["orders", "pay"]), 1)
    assert {(s.service, s.version, s.state, tuple(addrs(s))) for s in first} == {
        ("orders", 777, SetState.RESTORED, ("10.0.0.1:80", "10.0.0.2:80")),
        ("pay", 778, SetState.RESTORED, ("10.0.0.3:80",)),
    }
    state.publisher_seen("p1")
    state.published("p1", [inst("10.0.0.1:80")])
    state.publisher_seen("p3")
    state.published("p3", [inst("10.0.0.3:80", "pay")])
    mid = sets_for(run_until(state, clock, 1.0), 1)
    # pay's only publisher is back: LIVE at once; orders still waits for p2
    assert [(s.service, s.state) for s in mid] == [("pay", SetState.LIVE)]
    end = run_until(state, clock, 5.0)
    last = sets_for(end, 1)
    assert [(s.service, s.state, addrs(s)) for s in last] == [("orders", SetState.LIVE, ["10.0.0.1:80"])]
    assert last[0].version > 777
    assert end.expired == ["p2"]


def test_a_restored_empty_set_is_not_a_first_push_during_warm_up() -> None:
    clock = FakeClock()
    state = make(clock, warmup=5.0, restored=Restored(publishers={}, versions={"orders": 5}))
    assert state.subscribe(1, ["orders"]).pushes == []
    state.publisher_seen("p1")
    state.published("p1", [inst("10.0.0.1:80")])
    pushes = sets_for(run_until(state, clock, 0.1), 1)
    assert [(addrs(s), s.state) for s in pushes] == [(["10.0.0.1:80"], SetState.LIVE)]


def test_an_unknown_service_is_pushed_empty_once_warm() -> None:
    clock = FakeClock()
    state = make(clock)
    pushes = sets_for(state.subscribe(1, ["nobody"]), 1)
    assert len(pushes) == 1 and pushes[0].instances == () and pushes[0].version > 0
    state.subscriber_gone(1)
    assert state.service_sets() == []  # forgotten once nobody watches or publishes it

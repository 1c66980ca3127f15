"""The policy push state machine with a fake clock: versions, nonces, debounce, ACK/NACK, reconnects."""

from __future__ import annotations

import random
from collections.abc import Hashable

import pytest

from plexus.push.policy_push import PolicyPushState, Send, SyncState


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


class World:
    """The policy: a payload per scope that tests change at will; renders are counted."""

    def __init__(self) -> None:
        self.payloads: dict[Hashable, str] = {}
        self.renders = 0

    def render(self, scope: Hashable) -> str:
        self.renders += 1
        return self.payloads.get(scope, f"{scope}:empty")


def make(
    clock: FakeClock, world: World, *, debounce: float = 0.1, max_debounce: float = 10.0
) -> PolicyPushState[str]:
    return PolicyPushState(clock=clock, render=world.render, debounce=debounce, max_debounce=max_debounce)


def run_until(state: PolicyPushState[str], clock: FakeClock, seconds: float) -> list[Send[str]]:
    """Tick at every deadline within ``seconds``, as the control plane's timer does."""
    end = clock.now + seconds
    sends: list[Send[str]] = []
    while True:
        deadline = state.next_deadline()
        if deadline is None or deadline > end:
            clock.now = end
            return sends
        clock.advance(max(deadline - clock.now, 0.0))
        sends.extend(state.tick())


def ack(
    state: PolicyPushState[str], send: Send[str], accepted: bool = True, error: str = ""
) -> list[Send[str]]:
    return state.answered(send.sidecar, send.session, send.version, send.nonce, accepted, error)


def test_connect_sends_the_current_payload_and_ack_makes_it_synced() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world)
    world.payloads["a"] = "A1"
    session, sends = state.connect("s1", "a", 0)
    assert [(s.sidecar, s.session, s.payload) for s in sends] == [("s1", session, "A1")]
    assert state.status("s1").state is SyncState.STALE  # type: ignore[union-attr]
    assert ack(state, sends[0]) == []
    status = state.status("s1")
    assert status is not None and status.state is SyncState.SYNCED
    assert status.acked_version == sends[0].version == state.version


def test_change_is_pushed_after_the_debounce_not_before() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world)
    _, sends = state.connect("s1", "a", 0)
    ack(state, sends[0])
    world.payloads["a"] = "A2"
    version = state.change()
    clock.advance(0.05)
    assert state.tick() == []
    sends = run_until(state, clock, 0.06)
    assert [(s.payload, s.version) for s in sends] == [("A2", version)]


def test_a_burst_is_delayed_at_most_the_max_debounce_from_its_first_change() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world, debounce=0.1, max_debounce=1.0)
    _, sends = state.connect("s1", "a", 0)
    ack(state, sends[0])
    first = clock.now
    pushed_at = None
    for i in range(40):  # a change every 50 ms for 2 s: the quiet window never comes
        world.payloads["a"] = f"A{i}"
        state.change()
        got = run_until(state, clock, 0.05)
        if got and pushed_at is None:
            pushed_at = clock.now
            ack(state, got[0])
    assert pushed_at is not None and pushed_at - first <= 1.0 + 0.05


def test_one_push_in_flight_and_the_newest_follows_the_ack() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world)
    _, sends = state.connect("s1", "a", 0)
    first = sends[0]
    for payload in ("A2", "A3", "A4"):
        world.payloads["a"] = payload
        state.change()
        assert run_until(state, clock, 0.2) == []  # still waiting for the first ACK
    latest = state.version
    after = ack(state, first)
    assert [(s.payload, s.version) for s in after] == [("A4", latest)]
    assert after[0].nonce != first.nonce


def test_a_late_ack_of_an_old_nonce_is_ignored() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world)
    _, sends = state.connect("s1", "a", 0)
    old = sends[0]
    ack(state, old)
    world.payloads["a"] = "A2"
    state.change()
    (new,) = run_until(state, clock, 0.2)
    assert ack(state, old) == []  # duplicated / late ACK of the first push
    assert state.ignored_answers_total == 1
    assert state.status("s1").state is SyncState.STALE  # type: ignore[union-attr]
    # an answer with the right nonce but another version is not ours either
    assert state.answered("s1", new.session, new.version - 1, new.nonce, True) == []
    ack(state, new)
    assert state.status("s1").state is SyncState.SYNCED  # type: ignore[union-attr]


def test_nack_records_the_error_keeps_the_last_good_and_the_next_change_is_pushed() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world)
    _, sends = state.connect("s1", "a", 0)
    ack(state, sends[0])
    good = sends[0].version
    world.payloads["a"] = "bad"
    state.change()
    (bad,) = run_until(state, clock, 0.2)
    assert ack(state, bad, accepted=False, error="f.yaml:3: VirtualService r: boom") == []
    status = state.status("s1")
    assert status is not None and status.state is SyncState.NACKED
    assert (status.acked_version, status.nacked_version) == (good, bad.version)
    assert status.last_error == "f.yaml:3: VirtualService r: boom"
    assert run_until(state, clock, 1.0) == []  # the NACKed payload is not retried on its own
    world.payloads["a"] = "fixed"
    state.change()
    (fixed,) = run_until(state, clock, 0.2)
    assert fixed.payload == "fixed" and fixed.version > bad.version
    ack(state, fixed)
    assert state.status("s1").state is SyncState.SYNCED  # type: ignore[union-attr]


def test_a_change_that_does_not_touch_a_sidecar_is_not_pushed_to_it() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world)
    _, sa = state.connect("s1", "a", 0)
    _, sb = state.connect("s2", "b", 0)
    ack(state, sa[0])
    ack(state, sb[0])
    world.payloads["b"] = "B2"
    version = state.change()
    sends = run_until(state, clock, 0.2)
    assert [(s.sidecar, s.version) for s in sends] == [("s2", version)]
    status = state.status("s1")
    assert status is not None and status.state is SyncState.SYNCED
    assert status.desired_version == sa[0].version < version


def test_equal_scopes_share_one_render_per_flush() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world)
    for i in range(100):
        _, sends = state.connect(f"s{i}", "shared", 0)
        ack(state, sends[0])
    world.payloads["shared"] = "S2"
    world.renders = 0
    state.change()
    assert len(run_until(state, clock, 0.2)) == 100
    assert world.renders == 1


def test_disconnect_mid_push_then_reconnect_gets_the_push_again() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world)
    session, sends = state.connect("s1", "a", 0)
    ack(state, sends[0])
    world.payloads["a"] = "A2"
    state.change()
    (lost,) = run_until(state, clock, 0.2)
    state.disconnected("s1", session)
    assert ack(state, lost) == []  # the old stream's answer is not ours any more
    status = state.status("s1")
    assert status is not None and not status.connected
    _, again = state.connect("s1", "a", sends[0].version)
    assert [(s.payload, s.version) for s in again] == [("A2", lost.version)]


def test_a_reconnect_already_serving_its_version_gets_no_resend() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world)
    session, sends = state.connect("s1", "a", 0)
    state.disconnected("s1", session)  # the ACK was lost with the stream; the sidecar applied it
    _, again = state.connect("s1", "a", sends[0].version)
    assert again == []
    assert state.status("s1").state is SyncState.SYNCED  # type: ignore[union-attr]


def test_a_new_stream_overtaking_the_old_ones_end_is_not_closed_by_it() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world)
    old, _ = state.connect("s1", "a", 0)
    new, sends = state.connect("s1", "a", 0)
    state.disconnected("s1", old)  # the old stream's end arrives late
    status = state.status("s1")
    assert status is not None and status.connected
    assert ack(state, sends[0]) == []
    assert state.status("s1").state is SyncState.SYNCED  # type: ignore[union-attr]
    assert new != old


def test_a_sidecar_serving_a_newer_version_than_we_know_gets_a_newer_one() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world)  # e.g. a restarted control plane whose wall clock went back
    ahead = state.version + 5_000_000
    _, sends = state.connect("s1", "a", ahead)
    assert len(sends) == 1 and sends[0].version > ahead
    assert state.version >= sends[0].version


def test_a_hello_with_a_new_scope_is_pushed_with_a_version_the_sidecar_has_not_seen() -> None:
    clock, world = FakeClock(), World()
    state = make(clock, world)
    session, sends = state.connect("s1", "a", 0)
    ack(state, sends[0])
    more = state.hello("s1", session, "b")
    assert len(more) == 1 and more[0].payload == "b:empty" and more[0].version > sends[0].version
    assert state.hello("s1", session, "b") == []  # same scope again: nothing new


def test_versions_start_past_a_stored_one_and_only_grow() -> None:
    clock = FakeClock()
    state = PolicyPushState(clock=clock, render=World().render, start_version=5_000_000)
    assert state.version == 5_000_000
    clock.us = 10  # the wall clock went back
    assert state.change() == 5_000_001
    clock.us = 9_000_000
    assert state.change() == 9_000_000


def test_bad_debounce_is_refused() -> None:
    with pytest.raises(ValueError, match="debounce"):
        PolicyPushState(clock=FakeClock(), render=World().render, debounce=2.0, max_debounce=1.0)


def test_a_thousand_changes_a_second_end_in_the_intended_state() -> None:
    """1,000 changes a second for 3 s over 50 sidecars of 5 scopes that ACK (or now and then NACK) after a
    random delay, drop their streams and reconnect: every sidecar ends SYNCED on the newest payload, each
    sidecar's versions only grow, and it never has two pushes unacknowledged."""
    rng = random.Random(7)
    clock, world = FakeClock(), World()
    state = make(clock, world)
    scopes = [f"scope{i}" for i in range(5)]
    scope_of = {f"s{i}": scopes[i % 5] for i in range(50)}
    sessions: dict[str, int] = {}
    served: dict[str, int] = {}  # what each sidecar runs (its last accepted version)
    payload_of: dict[str, str] = {}
    seen: dict[str, int] = {}  # the newest version each sidecar was sent
    inflight: dict[str, tuple[Send[str], float]] = {}

    def deliver(sends: list[Send[str]]) -> None:
        for send in sends:
            assert send.sidecar not in inflight, "two pushes unacknowledged"
            assert send.version > seen.get(send.sidecar, 0), "an older version after a newer"
            seen[send.sidecar] = send.version
            inflight[send.sidecar] = (send, clock.now + rng.uniform(0.0, 0.05))

    for sid, scope in scope_of.items():
        session, sends = state.connect(sid, scope, 0)
        sessions[sid] = session
        deliver(sends)
    for step in range(3000):
        clock.advance(0.001)
        world.payloads[rng.choice(scopes)] = f"p{step}"
        state.change()
        if rng.random() < 0.005:  # a stream drops; the sidecar reconnects with what it serves
            sid = rng.choice(list(scope_of))
            state.disconnected(sid, sessions[sid])
            inflight.pop(sid, None)
            sessions[sid], sends = state.connect(sid, scope_of[sid], served.get(sid, 0))
            deliver(sends)
        for sid, (send, due) in list(inflight.items()):
            if due <= clock.now:
                del inflight[sid]
                accepted = send.payload != "p1500"  # one payload every sidecar refuses
                if accepted:
                    served[sid] = send.version
                    payload_of[sid] = send.payload
                deliver(ack(state, send, accepted, "" if accepted else "refused"))
        deliver(state.tick())
    for _ in range(100):  # let everything settle
        clock.advance(0.01)
        for sid, (send, _due) in list(inflight.items()):
            del inflight[sid]
            served[sid] = send.version
            payload_of[sid] = send.payload
            deliver(ack(state, send))
        deliver(state.tick())
    assert not inflight
    for sid, scope in scope_of.items():
        status = state.status(sid)
        assert status is not None and status.state is SyncState.SYNCED, (sid, status)
        assert payload_of[sid] == world.render(scope)
        assert served[sid] == status.acked_version

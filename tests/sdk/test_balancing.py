"""Round robin with a short memory of failed endpoints (pure)."""

from __future__ import annotations

from collections import Counter

from plexus.sdk.balancing import RoundRobin


def test_round_robin_spreads_evenly() -> None:
    rr = RoundRobin()
    picks = Counter(rr.pick(["a", "b", "c"]) for _ in range(30))
    assert picks == {"a": 10, "b": 10, "c": 10}


def test_exclude_and_nothing_left() -> None:
    rr = RoundRobin()
    assert {rr.pick(["a", "b"], exclude={"a"}) for _ in range(5)} == {"b"}
    assert rr.pick(["a"], exclude={"a"}) is None
    assert rr.pick([]) is None


def test_ejected_endpoint_is_skipped_until_it_is_the_only_one() -> None:
    rr = RoundRobin(eject_seconds=60)
    rr.eject("a")
    assert {rr.pick(["a", "b", "c"]) for _ in range(10)} == {"b", "c"}
    assert rr.pick(["a"]) == "a"  # better a recently failed endpoint than none
    assert rr.ejected() == ["a"]


def test_ejection_expires() -> None:
    rr = RoundRobin(eject_seconds=0)
    rr.eject("a")
    assert "a" in {rr.pick(["a", "b"]) for _ in range(4)}

"""Subscription bookkeeping (pure): versions only grow, callbacks see each change once, waiters wake up."""

from __future__ import annotations

import threading

from plexus.discovery.model import Instance, ServiceSet
from plexus.sdk import Subscription


def _set(version: int, *ports: int) -> ServiceSet:
    return ServiceSet("svc", version, tuple(Instance("svc", f"127.0.0.1:{p}") for p in ports))


def test_updates_callbacks_and_order() -> None:
    sub = Subscription("svc")
    seen: list[int] = []
    sub.on_change(lambda s: seen.append(s.version))
    assert sub.current is None and sub.addresses == []
    sub._update(_set(2, 1000))
    sub._update(_set(1, 1000, 1001))  # older: ignored
    sub._update(_set(2, 1000))  # same: no callback
    sub._update(_set(3, 1000, 1001))
    assert seen == [2, 3]
    assert sub.addresses == ["127.0.0.1:1000", "127.0.0.1:1001"]
    late: list[int] = []
    sub.on_change(lambda s: late.append(s.version))  # called at once with the current set
    assert late == [3]


def test_a_failing_callback_does_not_stop_the_others() -> None:
    sub = Subscription("svc")
    seen: list[int] = []

    def broken(s: ServiceSet) -> None:
        raise RuntimeError("app bug")

    sub.on_change(broken)
    sub.on_change(lambda s: seen.append(s.version))
    sub._update(_set(1, 1000))
    assert seen == [1]


def test_wait_for_instances_wakes_on_update() -> None:
    sub = Subscription("svc")
    assert not sub.wait_for_instances(1, timeout=0.05)
    timer = threading.Timer(0.05, sub._update, args=(_set(1, 1000, 1001),))
    timer.start()
    assert sub.wait_for_instances(2, timeout=5)
    timer.join()

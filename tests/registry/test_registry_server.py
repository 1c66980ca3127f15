"""A real `plexus registry` with real RegistryClients: publish, subscribe, debounce, validation, leases."""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plexus.clients.registry import RegistryClient, list_services
from plexus.discovery.model import Instance, SetState
from plexus.testing.procs import ManagedProcess, wait_for

from .conftest import Recorder

CHILD = Path(__file__).with_name("publisher_child.py")


def test_publish_then_subscribe_sees_it_and_changes_come_with_growing_versions(
    start_registry: Callable[..., ManagedProcess], clients: Callable[..., RegistryClient]
) -> None:
    reg = start_registry("--warmup", "0")
    addr = reg.address("listen")
    publisher = clients(addr, publisher_id="provider-1")
    publisher.set_published([Instance("orders", "10.1.0.1:20881", version="v1", labels={"zone": "a"})])
    consumer = clients(addr)
    seen = Recorder()
    consumer.watch("orders", seen)
    first = seen.wait_addresses(["10.1.0.1:20881"])
    assert first.state is SetState.LIVE
    assert first.instances[0].version == "v1" and dict(first.instances[0].labels) == {"zone": "a"}

    publisher.set_published([Instance("orders", "10.1.0.1:20881"), Instance("orders", "10.1.0.2:20881")])
    second = seen.wait_addresses(["10.1.0.1:20881", "10.1.0.2:20881"])
    publisher.set_published([Instance("orders", "10.1.0.2:20881")])
    third = seen.wait_addresses(["10.1.0.2:20881"])
    assert first.version < second.version < third.version
    versions = [s.version for s in seen.history()]
    assert versions == sorted(set(versions))

    # a late watcher gets the cached set at once, and wait_for/current/list agree
    late = Recorder()
    consumer.watch("orders", late)
    assert late.last() == third
    assert consumer.current("orders") == third
    other = clients(addr)
    got = other.wait_for("orders", 5.0)
    assert got is not None and [i.address for i in got.instances] == ["10.1.0.2:20881"]
    listed = {s.service: s for s in list_services(addr, 2.0)}
    assert [i.address for i in listed["orders"].instances] == ["10.1.0.2:20881"]

    # close(withdraw=True) removes the publisher's instances at once, not after the lease grace
    publisher.close(withdraw=True)
    seen.wait_addresses([], timeout=2.0)


def test_a_burst_of_changes_is_pushed_once(
    start_registry: Callable[..., ManagedProcess], clients: Callable[..., RegistryClient]
) -> None:
    reg = start_registry("--warmup", "0", "--debounce-ms", "400")
    addr = reg.address("listen")
    consumer = clients(addr)
    seen = Recorder()
    consumer.watch("burst", seen)
    wait_for(lambda: seen.last() is not None, 5.0, what="initial empty set")
    publisher = clients(addr, publisher_id="burster")
    wait_for(lambda: publisher.connected, 5.0, what="publisher connected")
    for n in range(1, 21):
        publisher.set_published([Instance("burst", f"10.2.0.{n}:80")])
    seen.wait_addresses(["10.2.0.20:80"])
    time.sleep(0.6)  # would a straggler push follow?
    pushes_after_initial = seen.history()[1:]
    assert 1 <= len(pushes_after_initial) <= 2, [s.instances for s in pushes_after_initial]
    assert seen.addresses() == ["10.2.0.20:80"]


def test_a_malformed_instance_is_refused_by_field_and_nothing_else_is_affected(
    start_registry: Callable[..., ManagedProcess], clients: Callable[..., RegistryClient]
) -> None:
    reg = start_registry("--warmup", "0")
    addr = reg.address("listen")
    good = clients(addr, publisher_id="good")
    good.set_published([Instance("pay", "10.3.0.9:80")])
    bad = clients(addr, publisher_id="bad")
    bad.set_published(
        [
            Instance("pay", "10.3.0.1:80"),
            Instance("pay", "10.3.0.2"),  # no port
            Instance("pay", "10.3.0.3:80", protocol="smtp"),
            Instance("bad name!", "10.3.0.4:80"),
        ]
    )
    consumer = clients(addr)
    seen = Recorder()
    consumer.watch("pay", seen)
    seen.wait_addresses(["10.3.0.1:80", "10.3.0.9:80"])
    errors = wait_for(bad.publish_errors, 5.0, what="publish errors")
    assert [(index, field) for index, field, _ in errors] == [(1, "address"), (2, "protocol"), (3, "service")]
    assert "smtp" in errors[1][2]
    assert good.publish_errors() == []


def test_a_killed_publisher_is_removed_after_the_lease_grace(
    start_registry: Callable[..., ManagedProcess], clients: Callable[..., RegistryClient], procs: Any
) -> None:
    grace = 1.5
    reg = start_registry("--warmup", "0", "--lease-grace", str(grace))
    addr = reg.address("listen")
    ready = Path(tempfile.mkdtemp()) / "child.json"
    child = procs.run(
        [sys.executable, str(CHILD), addr, "child-1", str(ready), "cart=10.4.0.1:80"], ready_file=ready
    )
    stays = clients(addr, publisher_id="stays")
    stays.set_published([Instance("cart", "10.4.0.2:80")])
    consumer = clients(addr)
    seen = Recorder()
    consumer.watch("cart", seen)
    seen.wait_addresses(["10.4.0.1:80", "10.4.0.2:80"])
    child.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    seen.wait_addresses(["10.4.0.2:80"], timeout=grace + 5)
    assert time.monotonic() - killed_at >= grace * 0.8  # the grace was honoured, not skipped
    assert all(s.instances for s in seen.history())  # the other publisher's instance never left


def test_a_reconnect_within_the_grace_is_not_seen_by_subscribers(
    start_registry: Callable[..., ManagedProcess], clients: Callable[..., RegistryClient]
) -> None:
    reg = start_registry("--warmup", "0", "--lease-grace", "3")
    addr = reg.address("listen")
    consumer = clients(addr)
    seen = Recorder()
    consumer.watch("search", seen)
    first = clients(addr, publisher_id="sidecar-7")
    first.set_published([Instance("search", "10.5.0.1:80")])
    seen.wait_addresses(["10.5.0.1:80"])
    first.close(withdraw=False)  # the stream drops, as in a sidecar restart
    second = clients(addr, publisher_id="sidecar-7")
    second.set_published([Instance("search", "10.5.0.1:80")])
    wait_for(lambda: second.connected, 5.0, what="second publisher connected")
    time.sleep(3.5)  # past the grace of the first stream
    history = [[i.address for i in s.instances] for s in seen.history()]
    assert history[history.index(["10.5.0.1:80"]) :] == [["10.5.0.1:80"]], history  # no removal, no re-push

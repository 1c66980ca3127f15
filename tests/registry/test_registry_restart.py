"""A registry SIGKILLed and restarted on the same port.

Clients reconnect and re-publish, subscribers converge, versions never go back and no empty set appears in
between; with --data-dir the remembered sets are served RESTORED, then LIVE.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from plexus.clients.registry import RegistryClient
from plexus.discovery.model import Instance, SetState
from plexus.testing.procs import ManagedProcess, wait_for

from .conftest import Recorder


def assert_never_back_never_empty(seen: Recorder) -> None:
    history = seen.history()
    versions = [s.version for s in history]
    assert versions == sorted(set(versions)), versions
    first_full = next(i for i, s in enumerate(history) if s.instances)
    assert all(s.instances for s in history[first_full:]), [s.instances for s in history]


def test_registry_restart_without_data_dir(
    start_registry: Callable[..., ManagedProcess], clients: Callable[..., RegistryClient]
) -> None:
    first = start_registry("--warmup", "0", "--lease-grace", "1")
    addr = first.address("listen")
    # the publisher comes back a second after the consumer: without the warm-up hold the consumer would be
    # pushed an empty set in between
    publisher = clients(addr, publisher_id="prov", reconnect_min=1.0, reconnect_max=1.0)
    publisher.set_published([Instance("orders", "10.6.0.1:80")])
    consumer = clients(addr, reconnect_min=0.05, reconnect_max=0.1)
    seen = Recorder()
    consumer.watch("orders", seen)
    before = seen.wait_addresses(["10.6.0.1:80"])

    first.kill()
    wait_for(lambda: not consumer.connected and not publisher.connected, 5.0, what="clients notice the crash")
    publisher.set_published([Instance("orders", "10.6.0.1:80"), Instance("orders", "10.6.0.2:80")])
    assert consumer.current("orders") == before  # kept while the registry is away

    # The publisher retries every second, so it may come back up to ~2 s after the new registry listens (a
    # retry just missed, and a slow CPU phase on a shared machine): the warm-up hold leaves it twice that.
    start_registry("--lease-grace", "1", "--warmup", "4", listen=addr)
    after = seen.wait_addresses(["10.6.0.1:80", "10.6.0.2:80"], timeout=15)
    assert after.state is SetState.LIVE and after.version > before.version
    wait_for(lambda: consumer.connected and publisher.connected, 5.0, what="clients reconnected")
    assert_never_back_never_empty(seen)


def test_registry_restart_with_data_dir_serves_restored_then_live(
    start_registry: Callable[..., ManagedProcess], clients: Callable[..., RegistryClient], tmp_path: Path
) -> None:
    data = tmp_path / "registry-data"
    first = start_registry("--warmup", "0", "--lease-grace", "1", "--data-dir", str(data))
    addr = first.address("listen")
    stays = clients(addr, publisher_id="stays", reconnect_min=1.0, reconnect_max=1.0)
    stays.set_published([Instance("inventory", "10.7.0.1:80")])
    gone = clients(addr, publisher_id="gone")
    gone.set_published([Instance("inventory", "10.7.0.2:80")])
    consumer = clients(addr)
    seen = Recorder()
    consumer.watch("inventory", seen)
    seen.wait_addresses(["10.7.0.1:80", "10.7.0.2:80"])
    snapshot = data / "registry-snapshot.json"
    wait_for(
        lambda: "10.7.0.2:80" in snapshot.read_text() and "10.7.0.1:80" in snapshot.read_text(),
        5.0,
        what="snapshot written",
    )
    assert set(json.loads(snapshot.read_text())["publishers"]) == {"stays", "gone"}

    first.kill()
    gone.close(withdraw=False)  # this publisher never comes back
    second = start_registry("--warmup", "3", "--lease-grace", "1", "--data-dir", str(data), listen=addr)
    newcomer = clients(addr)
    fresh = Recorder()
    newcomer.watch("inventory", fresh)
    wait_for(lambda: fresh.last() is not None, 5.0, what="the restored set")
    restored = fresh.history()[0]
    assert restored.state is SetState.RESTORED
    assert sorted(i.address for i in restored.instances) == ["10.7.0.1:80", "10.7.0.2:80"]

    live = fresh.wait_addresses(["10.7.0.1:80"], timeout=10)
    assert live.state is SetState.LIVE and live.version > restored.version
    seen.wait_addresses(["10.7.0.1:80"], timeout=5)
    assert seen.last() is not None and seen.last().state is SetState.LIVE  # type: ignore[union-attr]
    assert_never_back_never_empty(seen)
    assert_never_back_never_empty(fresh)
    wait_for(
        lambda: set(json.loads(snapshot.read_text())["publishers"]) == {"stays"},
        5.0,
        what="the lost publisher forgotten in the snapshot",
    )
    assert second.alive()


def test_sigterm_with_live_streams_exits_and_keeps_the_publishers_for_the_next_start(
    start_registry: Callable[..., ManagedProcess], clients: Callable[..., RegistryClient], tmp_path: Path
) -> None:
    """A graceful stop with publishers and subscribers connected ends promptly (it once hung: a cancel lost in
    asyncio.wait_for on 3.11) and does not expire the publishers' leases on its way out."""
    data = tmp_path / "registry-data"
    first = start_registry("--warmup", "0", "--lease-grace", "5", "--data-dir", str(data))
    addr = first.address("listen")
    publisher = clients(addr, publisher_id="prov", reconnect_min=1.0, reconnect_max=1.0)
    publisher.set_published([Instance("orders", "10.7.0.1:80")])
    consumer = clients(addr)
    seen = Recorder()
    consumer.watch("orders", seen)
    seen.wait_addresses(["10.7.0.1:80"])

    first.signal(signal.SIGTERM)
    first.proc.wait(10)  # bounded: raises TimeoutExpired if the registry hangs on its way out
    assert first.proc.returncode == 0, first.log()
    snapshot = json.loads((data / "registry-snapshot.json").read_text())
    assert [i["address"] for i in snapshot["publishers"]["prov"]] == ["10.7.0.1:80"]

"""The registry's admin endpoints (/ready, /stats/prometheus, /config_dump, /services) and command line."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import httpx

from plexus.clients.registry import RegistryClient
from plexus.discovery.model import Instance
from plexus.testing.procs import ManagedProcess, wait_for

from .conftest import Recorder


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in:\n{text}")


def test_admin_endpoints(
    start_registry: Callable[..., ManagedProcess], clients: Callable[..., RegistryClient]
) -> None:
    reg = start_registry("--warmup", "1.5", "--lease-grace", "0.5", "--debounce-ms", "20")
    admin = f"http://{reg.address('admin')}"
    ready = httpx.get(f"{admin}/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["warming"] is True
    wait_for(lambda: httpx.get(f"{admin}/ready", timeout=5).json()["warming"] is False, 5.0, what="warm")

    addr = reg.address("listen")
    pub = clients(addr, publisher_id="p-admin")
    pub.set_published(
        [
            Instance("orders", "10.8.0.1:80"),
            Instance("orders", "10.8.0.2:80"),
            Instance("pay", "10.8.0.3:80"),
            Instance("orders", "10.8.0.4:0"),  # refused: port 0
        ]
    )
    consumer = clients(addr)
    seen = Recorder()
    consumer.watch("orders", seen)
    pushed = seen.wait_addresses(["10.8.0.1:80", "10.8.0.2:80"])

    stats = httpx.get(f"{admin}/stats/prometheus", timeout=5).text
    assert metric(stats, "plexus_registry_services") == 2
    assert metric(stats, "plexus_registry_instances") == 3
    assert metric(stats, "plexus_registry_publishers") == 1
    assert metric(stats, "plexus_registry_subscribers") == 2  # both clients keep a subscribe stream
    assert metric(stats, "plexus_registry_pushes_total") >= 1
    assert 'plexus_registry_publish_rejects_total{field="address"} 1' in stats

    dump = httpx.get(f"{admin}/config_dump", timeout=5).json()
    assert dump["lease_grace"] == 0.5 and dump["warmup"] == 1.5 and dump["debounce"] == 0.02

    services = httpx.get(f"{admin}/services", timeout=5).json()
    assert {s["service"] for s in services["services"]} == {"orders", "pay"}
    one = httpx.get(f"{admin}/services/orders", timeout=5).json()
    assert one["version"] == pushed.version and one["state"] == "live"
    assert sorted(i["address"] for i in one["instances"]) == ["10.8.0.1:80", "10.8.0.2:80"]
    assert httpx.get(f"{admin}/services/nope", timeout=5).status_code == 404


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plexus", "registry", *args], capture_output=True, text=True, timeout=30
    )


def test_bad_flags_are_named_and_exit_non_zero() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = f"127.0.0.1:{taken.getsockname()[1]}"
    for args, flag in [
        (["--listen", busy, "--admin", "127.0.0.1:0"], "--listen"),
        (["--listen", "127.0.0.1:0", "--admin", busy], "--admin"),
        (["--listen", "nowhere"], "--listen"),
        (["--admin", "127.0.0.1:99999"], "--admin"),
        (["--lease-grace", "-1"], "--lease-grace"),
        (["--debounce-ms", "-5"], "--debounce-ms"),
        (["--warmup", "-1"], "--warmup"),
    ]:
        result = run_cli(*args)
        assert result.returncode != 0, args
        assert f"error: {flag}" in result.stderr, (args, result.stderr)
    taken.close()


def test_sigterm_and_sigint_exit_cleanly(start_registry: Callable[..., ManagedProcess]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        reg = start_registry("--warmup", "0")
        reg.signal(sig)
        deadline = time.monotonic() + 10
        while reg.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reg.proc.returncode == 0, reg.log()

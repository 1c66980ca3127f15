"""Stopping parts: a provider sidecar drains with no failed call; a registry restart is harmless."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sidecar_helpers import Group, addresses_seen, admin, api, start_http_app, start_registry, start_sidecar

from plexus.testing.procs import free_port, wait_for


@pytest.fixture
def group() -> Iterator[Group]:
    g = Group()
    try:
        yield g
    finally:
        g.stop_all()


def test_sigterm_withdraws_then_drains_with_no_failed_call(group: Group) -> None:
    registry = start_registry(group).address("listen")
    b1 = start_sidecar(group, registry, "--drain-time", "2.0")
    b2 = start_sidecar(group, registry)
    a = start_sidecar(group, registry)
    for name, sidecar in (("one", b1), ("two", b2)):
        _, port = start_http_app(group, name)
        assert api(sidecar, "PUT", "/v1/providers/drainy", {"port": port}).status_code == 200
    egress = api(a, "PUT", "/v1/consumers/drainy").json()["address"]
    both = {b1.address("advertise"), b2.address("advertise")}
    wait_for(lambda: addresses_seen(a, "drainy") == both, timeout=10, what="A sees both instances")

    results: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def call_in_a_loop() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                try:
                    response = client.get(f"http://{egress}/whoami")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code == 200:
                    results[response.text] += 1
                else:
                    failures.append(f"{response.status_code} {response.headers.get('x-plexus-error')}")

    caller = threading.Thread(target=call_in_a_loop)
    caller.start()
    try:
        wait_for(lambda: results["one"] > 5 and results["two"] > 5, timeout=10, what="both instances serve")
        b1.signal(signal.SIGTERM)
        wait_for(
            lambda: addresses_seen(a, "drainy") == {b2.address("advertise")},
            timeout=10,
            what="B1 withdrawn at once on SIGTERM",
        )
        assert b1.alive()  # withdrawn while it still served: the drain is what kept calls from failing
        b1.proc.wait(10)
        before = results["two"]
        wait_for(lambda: results["two"] > before + 5, timeout=10, what="calls go on to B2")
    finally:
        stop.set()
        caller.join(10)
    assert b1.proc.returncode == 0
    assert failures == []


def test_registry_restart_keeps_last_sets_then_resyncs(group: Group, tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    registry = start_registry(group, listen, "--data-dir", str(tmp_path))
    b = start_sidecar(group, listen)
    a = start_sidecar(group, listen)
    _, port = start_http_app(group, "steady")
    api(b, "PUT", "/v1/providers/steady", {"port": port})
    egress = api(a, "PUT", "/v1/consumers/steady").json()["address"]
    wait_for(
        lambda: httpx.get(f"http://{egress}/whoami", timeout=5).text == "steady",
        timeout=10,
        what="steady works",
    )

    registry.stop()
    wait_for(
        lambda: admin(a, "/ready").json()["registry_connected"] is False,
        timeout=10,
        what="A notices the registry is gone",
    )
    stats = admin(a, "/stats/prometheus").text
    assert "plexus_sidecar_registry_connected 0" in stats
    for _ in range(5):  # serving on the last set
        response = httpx.get(f"http://{egress}/whoami", timeout=5)
        assert response.status_code == 200 and response.text == "steady"

    start_registry(group, listen, "--data-dir", str(tmp_path), warmup=3.0)
    wait_for(lambda: admin(a, "/ready").json()["registry_connected"], timeout=15, what="A reconnects")
    wait_for(lambda: admin(b, "/ready").json()["registry_connected"], timeout=15, what="B reconnects")
    # resync: a provider registered after the restart reaches A, and the old one is still served
    _, port2 = start_http_app(group, "later")
    api(b, "PUT", "/v1/providers/later", {"port": port2})
    egress2 = api(a, "PUT", "/v1/consumers/later").json()["address"]
    wait_for(
        lambda: httpx.get(f"http://{egress2}/whoami", timeout=5).text == "later",
        timeout=10,
        what="a service published after the restart",
    )
    assert addresses_seen(a, "steady") == {b.address("advertise")}
    assert httpx.get(f"http://{egress}/whoami", timeout=5).text == "steady"
    # sidecars first: they withdraw and close their streams, so the registry stops at once
    assert a.stop() == 0 and b.stop() == 0


def test_advertise_overrides_the_published_address_and_a_taken_port_fails_start(group: Group) -> None:
    # no registry is needed for either: publishing waits for one, and the listeners come first
    nowhere = f"127.0.0.1:{free_port()}"
    c = start_sidecar(group, nowhere, "--advertise", "127.0.0.2:7000")
    published = api(c, "PUT", "/v1/providers/advertised", {"port": 8080}).json()
    assert published["address"] == "127.0.0.2:7000"
    assert admin(c, "/ready").json()["registry_connected"] is False

    taken = subprocess.run(
        [
            sys.executable,
            "-m",
            "plexus",
            "sidecar",
            "--registry",
            nowhere,
            "--ingress",
            "127.0.0.1:0",
            "--egress",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--api",
            c.address("api"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert taken.returncode == 1 and f"cannot listen: --api {c.address('api')}" in taken.stderr

"""UnitRouting end to end through real processes: providers beside sidecars in units u1 and u2, a consumer
sidecar in u1 with a policy file (--routes) holding a UnitRouting for the service.

- every call stays in u1 while u1 has providers;
- draining u1 (SIGHUP with the new file) moves the calls to u2, and undraining brings them back;
- u1's providers stopped: the calls fail over to u2 with no failed call (the ledger counts sent, answered,
  failed, lost and duplicated requests).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from plexus.demo.cluster import HEALTH_INTERVAL, SIDECAR_DRAIN, Cluster, ProviderInstance
from plexus.demo.processes import Child

from .conftest import calls_to, read_ledger, wait_until

SERVICE = "cells"
POLICY = """\
apiVersion: plexus.io/v1
kind: UnitRouting
metadata: {name: cells}
spec:
  hosts: [cells]
  scope: unit
  failover:
  - from: u1
    to: [u2]
"""
DRAINED = POLICY + "  drain: [u1]\n"
UNITS = {"p1a": "u1", "p1b": "u1", "p2": "u2"}  # provider → its sidecar's unit


def start_sidecar(mesh: Cluster, name: str, *extra: str, wait: bool = True) -> Child:
    """A sidecar like the demo's, with extra flags (--unit, --zone, --routes)."""
    argv = [
        sys.executable, "-m", "plexus", "sidecar", "--registry", mesh.registry_address,
        "--app-address", "127.0.0.1", "--ingress", "127.0.0.1:0", "--api", "127.0.0.1:0",
        "--admin", "127.0.0.1:0", "--egress", "127.0.0.1:0", "--drain-time", str(SIDECAR_DRAIN),
        "--health-interval", str(HEALTH_INTERVAL), *extra,
    ]  # fmt: skip
    child = Child(name, argv, mesh.workdir)
    mesh.sidecars.append(child)
    if wait:
        child.wait_ready()
    return child


def start_providers(
    mesh: Cluster, specs: list[tuple[str, tuple[str, ...], str]], service: str = SERVICE
) -> dict[str, tuple[ProviderInstance, Path]]:
    """Demo provider apps, each beside its own sidecar started with the given flags and publishing the given
    version, all started at once; name → (instance, its ledger)."""
    sidecars = {name: start_sidecar(mesh, f"{name}-sidecar", *flags, wait=False) for name, flags, _ in specs}
    out: dict[str, tuple[ProviderInstance, Path]] = {}
    for name, _, version in specs:
        sidecar = sidecars[name]
        sidecar.wait_ready()
        ledger = mesh.workdir / f"{name}.ledger"
        argv = [
            sys.executable, "-m", "plexus.demo.provider", "--mode", "mesh", "--sidecar-api",
            sidecar.address("api"), "--service", service, "--name", name, "--grace", "0.5",
            "--version", version, "--ledger", str(ledger),
        ]  # fmt: skip
        instance = ProviderInstance(name, service, "mesh", Child(name, argv, mesh.workdir), sidecar)
        mesh.providers.append(instance)
        out[name] = (instance, ledger)
    for instance, _ in out.values():
        instance.app.wait_ready()
    return out


def routes_loads(sidecar: Child) -> int:
    dump = httpx.get(f"http://{sidecar.address('admin')}/config_dump", timeout=5).json()
    return int(dump["routes"].get("loads", 0))


def reload_policy(sidecar: Child, policy_file: Path, text: str) -> None:
    loads = routes_loads(sidecar)
    policy_file.write_text(text)
    sidecar.signal(signal.SIGHUP)
    wait_until(lambda: routes_loads(sidecar) > loads, 15, "the consumer sidecar to reload its policy")


@dataclass
class Cells:
    mesh: Cluster
    consumer: Child
    consumer_sidecar: Child
    consumer_ledger: Path
    policy_file: Path
    u1: list[ProviderInstance]
    u2: list[ProviderInstance]
    provider_ledgers: dict[str, Path]

    def calls(self, names: list[str]) -> int:
        return sum(calls_to(self.consumer, n) for n in names)

    def wait_calls(self, names: list[str], more: int, what: str) -> None:
        start = self.calls(names)
        wait_until(lambda: self.calls(names) >= start + more, 30, what)


@pytest.fixture
def cells(cluster: Cluster, tmp_path: Path) -> Iterator[Cells]:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    started = start_providers(cluster, [(n, ("--unit", u), "v1") for n, u in UNITS.items()])
    ledgers = {name: ledger for name, (_, ledger) in started.items()}
    u1 = [started[n][0] for n, u in UNITS.items() if u == "u1"]
    u2 = [started[n][0] for n, u in UNITS.items() if u == "u2"]
    consumer_sidecar = start_sidecar(cluster, "c-sidecar", "--unit", "u1", "--routes", str(policy_file))
    ledger = tmp_path / "consumer.ledger"
    consumer = cluster.start_consumer(
        "c", [SERVICE], "mesh", rate=40, wait_instances=3, report_interval=0.2, ledger=ledger,
        sidecar=consumer_sidecar,
    )  # fmt: skip
    yield Cells(cluster, consumer, consumer_sidecar, ledger, policy_file, u1, u2, ledgers)


def test_calls_stay_in_the_callers_unit_and_a_drained_unit_hands_over(cells: Cells) -> None:
    cells.wait_calls(["p1a", "p1b"], 40, "calls to u1's providers")
    assert calls_to(cells.consumer, "p2") == 0, cells.consumer.last_report
    assert calls_to(cells.consumer, "p1a") > 5 and calls_to(cells.consumer, "p1b") > 5  # spread within u1

    reload_policy(cells.consumer_sidecar, cells.policy_file, DRAINED)
    cells.wait_calls(["p2"], 10, "calls to u2 once u1 is drained")  # the consumer's reports lag a little
    u1_drained = cells.calls(["p1a", "p1b"])
    cells.wait_calls(["p2"], 40, "more calls to u2")
    assert cells.calls(["p1a", "p1b"]) == u1_drained, cells.consumer.last_report

    reload_policy(cells.consumer_sidecar, cells.policy_file, POLICY)
    cells.wait_calls(["p1a", "p1b"], 10, "calls back in u1 once it is undrained")
    u2_after = calls_to(cells.consumer, "p2")
    cells.wait_calls(["p1a", "p1b"], 40, "more calls in u1")
    assert calls_to(cells.consumer, "p2") == u2_after, cells.consumer.last_report


def test_calls_fail_over_to_the_next_unit_when_the_units_providers_stop(cells: Cells) -> None:
    cells.wait_calls(["p1a", "p1b"], 40, "calls to u1's providers")
    assert calls_to(cells.consumer, "p2") == 0
    for instance in list(cells.u1):
        cells.mesh.stop_provider(instance)  # sidecar withdraws and drains, then the app stops
    cells.wait_calls(["p2"], 60, "calls to u2 after u1's providers stopped")
    cells.mesh.stop_consumers()
    result = read_ledger([cells.consumer_ledger], cells.provider_ledgers, [cells.consumer.last_report])
    print(result.summary())
    assert result.sent > 100
    assert result.errors == 0, result.error_samples
    assert result.lost == 0 and result.misdelivered == 0 and result.duplicated == 0
    assert result.unrecorded == 0

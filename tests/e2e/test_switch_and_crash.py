"""Under steady traffic from a meshed and a direct consumer: an instance switches mode (restart without, then
with its sidecar) one at a time, and a provider app crashes; no call fails."""

from __future__ import annotations

from pathlib import Path

from plexus import sdk
from plexus.demo.cluster import Cluster
from plexus.demo.processes import Child

from .conftest import calls_to, read_ledger, wait_until

RATE = 40  # calls per second per consumer


def _start(cluster: Cluster, tmp_path: Path, providers: dict[str, str],
           received: dict[str, Path]) -> tuple[list[Child], list[Path]]:
    """Providers (name → mode) of "echo" and both kinds of consumer, start-ups overlapping (sidecars first);
    the consumers wait for every provider to be published before they call."""
    meshed = [name for name, mode in providers.items() if mode == "mesh"]
    sidecars = {name: cluster.start_sidecar(f"{name}-sidecar", wait=False) for name in [*meshed, "cm"]}
    sent = [tmp_path / "cm.sent", tmp_path / "cd.sent"]
    consumers = [
        cluster.start_consumer("cd", ["echo"], "direct", rate=RATE, ledger=sent[1],
                               wait_instances=len(providers), wait=False),
        cluster.start_consumer("cm", ["echo"], "mesh", rate=RATE, ledger=sent[0], sidecar=sidecars["cm"],
                               wait_instances=len(providers), wait=False),
    ]
    for name, mode in providers.items():
        cluster.start_provider(name, "echo", mode, ledger=received[name], sidecar=sidecars.get(name),
                               wait=False)
    for child in [*(p.app for p in cluster.providers), *consumers]:
        child.wait_ready()
    return consumers, sent


def _serving(consumers: list[Child], provider: str, minimum: int = 10) -> None:
    baseline = {c.name: calls_to(c, provider) for c in consumers}
    wait_until(lambda: all(calls_to(c, provider) >= baseline[c.name] + minimum for c in consumers), 20,
               f"both consumers calling {provider}")


def _check(cluster: Cluster, consumers: list[Child], sent: list[Path], received: dict[str, Path],
           crashes: int = 0) -> None:
    """No call failed, was lost, went astray or is missing from the ledgers; none was delivered twice, except
    (``crashes``) a call a killed app had recorded but not answered: its caller's retry delivers it again
    elsewhere (at least once, as Envoy's retry on reset does), one call in flight per consumer at most."""
    cluster.stop_consumers()
    reports = [c.final_report for c in consumers]
    assert None not in reports
    result = read_ledger(sent, received, reports)
    print("ledger:", result.summary())
    assert result.sent > 0
    assert (result.errors, result.lost, result.misdelivered, result.unrecorded) == (
        0, 0, 0, 0), (result.summary(), result.error_samples)
    assert result.duplicated <= crashes * len(consumers), result.summary()


def test_switch_an_instance_between_direct_and_mesh(cluster: Cluster, tmp_path: Path) -> None:
    received = {name: tmp_path / f"{name}.received" for name in ("a1", "a2", "a3", "b")}
    consumers, sent = _start(cluster, tmp_path, {"a1": "direct", "b": "mesh"}, received)
    (a1,) = [p for p in cluster.providers if p.name == "a1"]
    _serving(consumers, "a1")
    _serving(consumers, "b")

    cluster.stop_provider(a1)  # instance a: direct → meshed
    a2 = cluster.start_provider("a2", "echo", "mesh", ledger=received["a2"])
    _serving(consumers, "a2")

    cluster.stop_provider(a2)  # and back: meshed → direct
    cluster.start_provider("a3", "echo", "direct", ledger=received["a3"])
    _serving(consumers, "a3")
    _serving(consumers, "b", minimum=1)  # b served throughout

    _check(cluster, consumers, sent, received)


def test_a_crashed_provider_app_does_not_fail_callers(cluster: Cluster, tmp_path: Path) -> None:
    received = {name: tmp_path / f"{name}.received" for name in ("d", "m", "s")}
    consumers, sent = _start(cluster, tmp_path, {"d": "direct", "m": "mesh", "s": "direct"}, received)
    direct, meshed, _ = cluster.providers
    for name in ("d", "m", "s"):
        _serving(consumers, name, minimum=3)

    direct.app.kill()  # a direct app crashes: its address refuses until the registry drops it
    _serving(consumers, "s", minimum=RATE // 2)
    meshed.app.kill()  # a meshed app crashes: its sidecar stays and answers local_app_unavailable
    _serving(consumers, "s", minimum=RATE)
    # Both crashed instances leave the registry by themselves: the direct one when its lease lapses, the
    # meshed one when its sidecar's health check fails.
    with sdk.connect(mode="direct", registry=cluster.registry_address) as watcher:
        view = watcher.subscribe("echo")
        assert view.wait(10, lambda s: len(s.instances) == 1), view
    _serving(consumers, "s", minimum=RATE // 2)

    _check(cluster, consumers, sent, received, crashes=2)


def test_a_meshed_app_unpublishing_first_fails_no_call(cluster: Cluster, tmp_path: Path) -> None:
    received = {name: tmp_path / f"{name}.received" for name in ("x", "y")}
    consumers, sent = _start(cluster, tmp_path, {"x": "mesh", "y": "direct"}, received)
    meshed = cluster.providers[0]
    _serving(consumers, "x")
    cluster.stop_provider(meshed, sidecar_first=False)  # the SDK's own order: unpublish, grace, exit
    _serving(consumers, "y", minimum=RATE // 2)
    _check(cluster, consumers, sent, received)

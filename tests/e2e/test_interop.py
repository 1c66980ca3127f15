"""The four combinations of meshed and direct consumers and providers, each making real calls."""

from __future__ import annotations

from pathlib import Path

from plexus.demo.cluster import Cluster

from .conftest import calls_to, read_ledger, wait_until


def test_every_combination_of_mesh_and_direct(cluster: Cluster, tmp_path: Path) -> None:
    # One service per provider kind, so every call's path is known in advance.
    # Start-ups overlap (sidecars first); consumers wait for an instance of each service before calling.
    sidecars = {name: cluster.start_sidecar(f"{name}-sidecar", wait=False) for name in ("pm", "cm")}
    ledgers = {name: tmp_path / f"{name}.received" for name in ("pm", "pd")}
    sent = {name: tmp_path / f"{name}.sent" for name in ("cm", "cd")}
    services = ["svc-mesh", "svc-direct"]
    cluster.start_provider("pd", "svc-direct", "direct", ledger=ledgers["pd"], wait=False)
    cluster.start_consumer("cd", services, "direct", rate=40, ledger=sent["cd"], wait=False)
    cluster.start_provider("pm", "svc-mesh", "mesh", ledger=ledgers["pm"], sidecar=sidecars["pm"], wait=False)
    cluster.start_consumer("cm", services, "mesh", rate=40, ledger=sent["cm"], sidecar=sidecars["cm"],
                           wait=False)
    for instance in cluster.providers:
        instance.app.wait_ready()
    consumers = cluster.consumers
    for consumer in consumers:
        consumer.wait_ready()
    wait_until(lambda: all(calls_to(c, p) >= 20 for c in consumers for p in ("pm", "pd")), 20,
               "20 calls from each consumer to each provider")
    cluster.stop_consumers()

    reports = [c.final_report for c in consumers]
    assert None not in reports, [(c.name, c.proc.returncode, c.log_tail()) for c in consumers]
    paths = {path: stats for r in reports if r for path, stats in r["paths"].items()}
    assert set(paths) == {"mesh → mesh", "mesh → direct", "direct → mesh", "direct → direct"}
    for path, stats in paths.items():
        provider = "pm" if path.endswith("→ mesh") else "pd"
        assert stats["errors"] == 0, (path, reports)
        assert stats["ok"] >= 20 and set(stats["providers"]) == {provider}, (path, stats)

    result = read_ledger(list(sent.values()), ledgers, reports)
    print("ledger:", result.summary())
    assert result.sent == sum(r["sent"] for r in reports if r) >= 80
    assert (result.errors, result.lost, result.misdelivered, result.duplicated, result.unrecorded) == (
        0, 0, 0, 0, 0), result
    assert result.ok == result.sent

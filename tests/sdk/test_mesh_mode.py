"""Mesh mode against a real sidecar: detection, publish through it, subscribe, call through its egress."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from plexus import sdk
from plexus.sdk import Client

from .http_apps import App


@pytest.fixture
def sidecar(registry: str, procs: Any) -> dict[str, str]:
    proc = procs.plexus("sidecar", "--registry", registry, "--app-address", "127.0.0.1",
                        "--ingress", "127.0.0.1:0", "--api", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                        "--egress", "127.0.0.1:0", "--drain-time", "0.2")
    return {key: proc.address(key) for key in ("ingress", "egress", "api", "admin")}


def test_a_sidecar_means_mesh_mode(registry: str, sidecar: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                   clients: list[Client]) -> None:
    monkeypatch.setenv("PLEXUS_SIDECAR_API", sidecar["api"])
    monkeypatch.setenv("PLEXUS_REGISTRY", "127.0.0.1:1")  # unused in mesh mode
    monkeypatch.delenv("PLEXUS_MODE", raising=False)
    client = sdk.connect()
    clients.append(client)
    assert client.mode == "mesh"
    assert client.sidecar_api == sidecar["api"]
    assert client.connected

    monkeypatch.setenv("PLEXUS_MODE", "direct")  # an operator can force a mode without touching the app
    monkeypatch.setenv("PLEXUS_REGISTRY", registry)
    forced = sdk.connect(registry_wait=5)
    clients.append(forced)
    assert (forced.mode, forced.sidecar_api, forced.connected) == ("direct", None, True)


def test_publish_subscribe_and_call_through_the_sidecar(registry: str, sidecar: dict[str, str],
                                                        clients: list[Client],
                                                        make_app: Callable[..., App]) -> None:
    app = make_app("meshed-app")
    provider = sdk.connect(mode="mesh", sidecar_api=sidecar["api"])
    watcher = sdk.connect(mode="direct", registry=registry)
    clients += [provider, watcher]
    provider.publish("inventory", app.port, version="v3", metadata={"tier": "gold"})

    direct_view = watcher.subscribe("inventory")
    assert direct_view.wait_for_instances(1, timeout=5), direct_view
    (instance,) = direct_view.instances
    assert instance.address == sidecar["ingress"] and instance.meshed  # the sidecar publishes its ingress
    assert (instance.version, dict(instance.labels)) == ("v3", {"tier": "gold"})

    mesh_view = provider.subscribe("inventory")  # the same app consumes it through its sidecar
    assert mesh_view.wait_for_instances(1, timeout=5), mesh_view
    assert mesh_view.addresses == [sidecar["ingress"]]
    assert mesh_view.egress is not None
    changes: list[int] = []
    mesh_view.on_change(lambda s: changes.append(len(s.instances)), call_now=False)

    http = provider.http_client("inventory")
    assert str(http.base_url).rstrip("/") == f"http://{mesh_view.egress}"
    answers = [http.get(f"/item/{i}") for i in range(5)]
    assert [a.json()["app"] for a in answers] == ["meshed-app"] * 5
    assert len(app.requests) == 5

    provider.close(grace=0)  # DELETE at the sidecar: withdrawn from the registry
    assert direct_view.wait(5, lambda s: not s.instances), direct_view


def test_mesh_mode_loads_no_grpc(sidecar: dict[str, str], make_app: Callable[..., App]) -> None:
    app = make_app("light")
    script = f"""
import json, sys
from plexus import sdk
client = sdk.connect(sidecar_api={sidecar['api']!r})
client.publish("light", {app.port})
client.subscribe("light", wait=5).wait_for_instances(1, 5)
status = client.http_client("light").get("/").status_code
client.close(grace=0)
print(json.dumps({{"mode": client.mode, "status": status, "modules": sorted(sys.modules)}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["mode"], result["status"]) == ("mesh", 200)
    assert [m for m in result["modules"] if m == "grpc" or m.startswith(("grpc.", "plexus.clients"))] == []

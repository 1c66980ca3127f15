"""PolicyAgent in one process with a real data plane, LocalMesh and registry client against a real registry:
a new destination is watched and its first set awaited before the policy is installed; a snapshot the data
plane refuses raises and changes nothing; a dropped destination stays watched for the delay; node and
traffic describe the sidecar."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvloop

from plexus.clients.control_async import SnapshotIn
from plexus.clients.registry_async import AsyncRegistryClient
from plexus.config.resources import parse_resources
from plexus.config.sidecar_settings import SidecarSettings
from plexus.core.address import HostPort
from plexus.core.errors import ConfigError
from plexus.discovery.model import Instance
from plexus.sidecar.mesh import LocalMesh
from plexus.sidecar.policy import PolicyAgent
from plexus.sidecar.stats import SidecarStats
from plexus.testing.procs import free_port
from plexus.transport.dataplane import DataPlane, DataPlaneSettings

T = TypeVar("T")

ROUTE_TO_OTHER = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hello}
spec:
  hosts: [hello]
  http:
  - route:
    - {destination: {host: hello}, weight: 50}
    - {destination: {host: other}, weight: 50}
"""
HELLO_ONLY = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hello}
spec:
  hosts: [hello]
  http:
  - route: [{destination: {host: hello}}]
"""
UNIT_SCOPED = """\
apiVersion: plexus.io/v1
kind: UnitRouting
metadata: {name: cells}
spec:
  hosts: [hello]
  scope: unit
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(asyncio.wait_for(coro, 60))


def snapshot(version: int, text: str) -> SnapshotIn:
    return SnapshotIn(version, f"n{version}", parse_resources(text, "policy.yaml").to_json(), 0)


class Rig:
    """The sidecar's parts, as plexus.sidecar.app wires them, around one registry."""

    def __init__(self, registry: str, unwatch_delay: float = 0.5) -> None:
        self.dp = DataPlane(DataPlaneSettings(workload="shop"))
        self.client = AsyncRegistryClient(registry, reconnect_min=0.05, reconnect_max=0.3)
        advertised = HostPort("127.0.0.1", 9)
        settings = SidecarSettings(registry=registry)
        self.mesh = LocalMesh(settings, self.dp, self.client, advertised, SidecarStats())
        self.agent = PolicyAgent(self.dp, self.mesh, node_id="sc-test", workload="shop",
                                 advertised=advertised, unwatch_delay=unwatch_delay)  # fmt: skip
        self.publisher = AsyncRegistryClient(registry, reconnect_min=0.05, reconnect_max=0.3)
        self.client.start()
        self.publisher.start()

    async def close(self) -> None:
        self.agent.close()
        await self.mesh.close()
        await self.publisher.aclose(True, 2.0)
        await self.client.aclose(False, 2.0)
        await self.dp.close()


def start_registry(procs: Any) -> str:
    registry = procs.plexus("registry", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--warmup", "0",
                            "--debounce-ms", "20")  # fmt: skip
    return str(registry.address("listen"))


def test_a_new_destination_has_its_cluster_before_the_policy_is_installed(procs: Any) -> None:
    registry = start_registry(procs)

    async def scenario() -> None:
        rig = Rig(registry)
        try:
            rig.publisher.set_published([Instance("other", "127.0.0.1:18080")])
            await rig.agent.install(snapshot(10, ROUTE_TO_OTHER))
            # the registry's set arrived before set_policy: the route's second destination has a cluster
            assert rig.dp.clusters.get("other") is not None, rig.agent.view()
            assert rig.agent.last_wait_missing == []
            assert "other" in rig.mesh.watched_services()
            assert rig.agent.version == 10 and rig.dp.policy.virtual_services[0].name == "hello"
            assert "other" in rig.agent.node().consumes

            await rig.agent.install(snapshot(11, HELLO_ONLY))  # "other" is no longer named
            assert rig.agent.view()["draining_destinations"] == ["other"]
            assert "other" in rig.mesh.watched_services()  # still watched while in-flight retries may use it
            await asyncio.sleep(1.0)
            assert "other" not in rig.mesh.watched_services()
            assert rig.agent.view()["draining_destinations"] == []
        finally:
            await rig.close()

    run(scenario())


def test_a_refused_snapshot_raises_and_leaves_the_last_policy() -> None:
    registry = f"127.0.0.1:{free_port()}"  # nothing there: "other" never gets a set, the wait is bounded

    async def scenario() -> None:
        rig = Rig(registry)
        try:
            await rig.agent.install(snapshot(5, HELLO_ONLY))
            before = rig.dp.policy
            # this sidecar has no --unit: the data plane refuses a unit-scoped UnitRouting
            with pytest.raises(ConfigError, match="unit"):
                await rig.agent.install(snapshot(6, ROUTE_TO_OTHER + "---\n" + UNIT_SCOPED))
            assert rig.dp.policy is before and rig.agent.version == 5
            assert "other" not in rig.mesh.watched_services()  # watched for the refused one only: dropped
            with pytest.raises(ValueError):
                await rig.agent.install(SnapshotIn(7, "n7", "{not json", 0))
            assert rig.agent.version == 5
        finally:
            await rig.close()

    run(scenario())


def test_node_and_traffic_describe_the_sidecar() -> None:
    registry = f"127.0.0.1:{free_port()}"  # not needed here

    async def scenario() -> None:
        rig = Rig(registry)
        try:
            stats = rig.dp.stats.service("hello", "egress")
            stats.record(200, 3.0)
            stats.record(503, 30.0)
            stats.record(0, 2.0)  # a response never given
            rig.dp.stats.service("cart", "ingress").record(204, 0.5)
            traffic = {(t.service, t.direction): t for t in rig.agent.traffic()}
            hello = traffic[("hello", "outbound")]
            assert (hello.requests, hello.errors) == (3, 2)
            assert sum(hello.duration_buckets) == 3 and hello.duration_sum_ms == pytest.approx(35.0)
            assert traffic[("cart", "inbound")].errors == 0
            rig.dp.stats.service("cart", "ingress").record(429, 0.1)
            rig.dp.stats.local_reply("rate_limited", "cart")
            cart = {(t.service, t.direction): t for t in rig.agent.traffic()}[("cart", "inbound")]
            assert (cart.requests, cart.errors) == (2, 1)
            node = rig.agent.node()
            assert (node.id, node.workload) == ("sc-test", "shop")
            assert node.addresses == ("127.0.0.1:9",) and node.provides == ()
        finally:
            await rig.close()

    run(scenario())


def test_routes_and_control_together_are_refused_at_start(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(HELLO_ONLY)
    result = subprocess.run(
        [sys.executable, "-m", "plexus", "sidecar", "--control", "127.0.0.1:9", "--routes", str(routes)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "--routes: routes: --routes and --control exclude each other" in result.stderr
    assert "plexus apply -f FILE" in result.stderr


def test_a_sidecar_whose_control_plane_is_away_serves_and_says_so(procs: Any) -> None:
    registry = f"127.0.0.1:{free_port()}"  # away too: the sidecar starts and serves all the same
    listeners = ("--ingress", "127.0.0.1:0", "--egress", "127.0.0.1:0", "--api", "127.0.0.1:0")
    away = f"127.0.0.1:{free_port()}"
    sidecar = procs.plexus(
        "sidecar", "--control", away, "--registry", registry, *listeners, "--admin", "127.0.0.1:0"
    )
    dump = httpx.get(f"http://{sidecar.address('admin')}/config_dump", timeout=5).json()
    assert dump["bootstrap"]["registry"]["value"] == registry  # --registry given: not the control address
    control = dump["control"]
    assert control["connected"] is False and control["applied_version"] == 0 and control["last_nack"] is None
    ready = httpx.get(f"http://{sidecar.address('admin')}/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["control_connected"] is False


RATE_LIMITED = """\
apiVersion: plexus.io/v1
kind: RateLimitPolicy
metadata: {name: hello-limit}
spec:
  host: hello
  local:
  - {name: all, tokens: 100, fillPerSecond: 100}
"""


def test_the_routes_file_takes_every_kind(procs: Any, tmp_path: Path) -> None:
    routes = tmp_path / "policy.yaml"
    routes.write_text("---\n".join([HELLO_ONLY, UNIT_SCOPED, RATE_LIMITED]))
    listeners = ["--ingress", "127.0.0.1:0", "--egress", "127.0.0.1:0", "--api", "127.0.0.1:0"]
    args = ["sidecar", "--registry", f"127.0.0.1:{free_port()}", "--routes", str(routes), *listeners]
    args += ["--admin", "127.0.0.1:0"]
    refused = subprocess.run(
        [sys.executable, "-m", "plexus", *args], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2, (
        refused.stderr
    )  # installed at start: the unit-scoped UnitRouting needs --unit
    assert f"{routes}" in refused.stderr and "--unit" in refused.stderr
    sidecar = procs.plexus(*args, "--unit", "u1")
    dump = httpx.get(f"http://{sidecar.address('admin')}/config_dump", timeout=5).json()
    assert dump["routes"]["loaded"] is True and dump["control"] is None
    assert "hello" in dump["data_plane"]["routing"]["services"]

"""Policy pushed by a real `plexus control` to real sidecars (`--control`), driven by the real CLI.

- apply a VirtualService (header match, 80/20 split) → the consumer sidecar ACKs (proxy-status SYNCED) and
  traffic follows it;
- a snapshot the sidecar cannot install (a unit-scoped UnitRouting, the sidecar has no --unit) → NACKED with
  the error in proxy-status, traffic still on the last good routes; deleting it → SYNCED again;
- the control plane stopped for a few seconds under traffic → no request fails; a change applied after it
  returns reaches the sidecar;
- a route and a new destination cluster added together and removed together under steady traffic, with the
  ledger (TESTING.md "Nothing lost"; H. "no request sees no cluster").
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from plexus.clients.control import ControlClient, ControlUnavailable
from plexus.demo.cluster import Cluster
from plexus.testing.procs import ManagedProcess, wait_for

from .conftest import calls_to, read_ledger, wait_until

ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hello}
spec:
  hosts: [hello]
  http:
  - name: canary
    match: [{headers: {x-canary: {exact: "1"}}}]
    route: [{destination: {host: hello, subset: v2}}]
  - name: split
    route:
    - {destination: {host: hello, subset: v1}, weight: 80}
    - {destination: {host: hello, subset: v2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hello}
spec:
  host: hello
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""
ALL_TO_V1 = (
    ROUTES.replace("weight: 80", "weight: 100")
    .replace("weight: 20", "weight: 0")
    .replace('exact: "1"', 'exact: "never"')
)
UNIT_SCOPED = """\
apiVersion: plexus.io/v1
kind: UnitRouting
metadata: {name: cells}
spec:
  hosts: [hello]
  scope: unit
"""
SIDECAR_ARGS = ("--ingress", "127.0.0.1:0", "--egress", "127.0.0.1:0", "--api", "127.0.0.1:0",
                "--admin", "127.0.0.1:0", "--health-interval", "0.2", "--drain-time", "0.2")  # fmt: skip
CONTROL_ARGS = ("--admin", "127.0.0.1:0", "--lease-grace", "1", "--debounce-ms", "20")  # fmt: skip
WAIT = 20.0  # bounds, not timings: several test processes share two cores


def plexus_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plexus", *args], input=stdin, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@dataclass
class Mesh:
    control: ManagedProcess
    control_address: str
    data_dir: Path
    consumer: ManagedProcess
    egress: str
    client: httpx.Client
    workdir: Path
    procs: list[ManagedProcess] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        return f"sidecar-{self.consumer.address('advertise')}-{self.consumer.proc.pid}"

    def status(self) -> dict[str, Any]:
        """The consumer sidecar's row of proxy-status (empty while it is not connected)."""
        response = ControlClient(self.control_address, timeout=5).proxy_status()
        for proxy in response.proxies:
            if proxy.node.id == self.node_id:
                return {"state": proxy.state, "acked": proxy.acked_version, "error": proxy.last_error,
                        "nacked": proxy.nacked_version, "version": response.version}  # fmt: skip
        return {}

    def synced(self) -> dict[str, Any]:
        """Wait until the consumer sidecar runs the control plane's current version."""

        def check() -> dict[str, Any] | None:
            status = self.status()
            return (
                status if status.get("state") == "SYNCED" and status["acked"] == status["version"] else None
            )

        return wait_for(check, timeout=WAIT, what="the consumer sidecar SYNCED")

    def apply(self, text: str, name: str) -> subprocess.CompletedProcess[str]:
        path = self.workdir / name
        path.write_text(text)
        return plexus_cli("apply", "-f", str(path), "--control", self.control_address)

    def who(self, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
        answers: Counter[str] = Counter()
        for _ in range(n):
            response = self.client.get(f"http://{self.egress}/whoami", headers=headers)
            answers[response.text if response.status_code == 200 else f"{response.status_code}"] += 1
        return answers


def _http_app(procs: list[ManagedProcess], name: str) -> int:
    folder = Path(tempfile.mkdtemp(prefix=f"plexus-push-{name}-"))
    (folder / "whoami").write_text(name)
    proc = ManagedProcess([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                           "--directory", str(folder)])  # fmt: skip
    procs.append(proc)
    match = wait_for(lambda: re.search(r"port (\d+)", proc.log()), timeout=10, what=f"http.server {name}")
    assert match is not None
    return int(match.group(1))


def _start_control(procs: list[ManagedProcess], data_dir: Path, listen: str = "127.0.0.1:0",
                   warmup: str = "0") -> ManagedProcess:  # fmt: skip
    control = ManagedProcess.plexus(["control", "--listen", listen, "--data-dir", str(data_dir), "--warmup",
                                     warmup, *CONTROL_ARGS])  # fmt: skip
    procs.append(control)
    return control


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    procs: list[ManagedProcess] = []
    client = httpx.Client(timeout=5)
    workdir = tmp_path_factory.mktemp("control-push")
    data_dir = workdir / "control-data"
    try:
        control = _start_control(procs, data_dir)
        address = control.address("listen")

        def sidecar() -> ManagedProcess:
            proc = ManagedProcess.plexus(["sidecar", "--control", address, *SIDECAR_ARGS])
            procs.append(proc)
            return proc

        # start-ups overlap (each waits for its ready file): the apps and the three sidecars at once
        with ThreadPoolExecutor(5) as pool:
            apps = [pool.submit(_http_app, procs, f"app-{version}") for version in ("v1", "v2")]
            sidecars = [pool.submit(sidecar) for _ in range(3)]
            ports = [f.result() for f in apps]
            *providers, consumer = [f.result() for f in sidecars]
        for version, port, provider in zip(("v1", "v2"), ports, providers, strict=True):
            body = {"port": port, "version": version}
            published = client.put(f"http://{provider.address('api')}/v1/providers/hello", json=body)
            assert published.status_code == 200, published.text
        response = client.put(f"http://{consumer.address('api')}/v1/consumers/hello")
        assert response.status_code == 200, response.text
        egress = response.json()["address"]
        wait_for(
            lambda: (
                len(
                    client.get(f"http://{consumer.address('api')}/v1/services/hello")
                    .json()
                    .get("instances", [])
                )
                == 2
            ),
            timeout=WAIT,
            what="the consumer sidecar sees both instances of hello",
        )
        yield Mesh(control, address, data_dir, consumer, egress, client, workdir, procs)
    finally:
        client.close()
        for proc in reversed(procs):
            proc.stop()


def test_apply_reaches_the_sidecar_and_traffic_follows(mesh: Mesh) -> None:
    result = mesh.apply(ROUTES, "routes.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["virtualservice/hello created", "destinationrule/hello created"]
    mesh.synced()
    assert mesh.who(20, {"x-canary": "1"}) == Counter({"app-v2": 20})
    split = mesh.who(400)
    assert set(split) == {"app-v1", "app-v2"}, split
    assert 40 <= split["app-v2"] <= 125, split  # p = 0.2 over 400: sd 8, a band of over 4.5 sd around 80
    dump = mesh.client.get(f"http://{mesh.consumer.address('admin')}/config_dump").json()
    control = dump["control"]
    assert control["connected"] is True and control["address"] == mesh.control_address
    # --control alone: the control plane serves the registry too
    assert dump["bootstrap"]["registry"] == {"value": mesh.control_address, "source": "flag"}
    assert control["applied_version"] == mesh.status()["acked"] and control["last_nack"] is None
    assert [r["name"] for r in dump["data_plane"]["routing"]["services"]["hello"]["rules"]] == [
        "canary",
        "split",
    ]
    again = mesh.apply(ROUTES, "routes.yaml")
    assert again.stdout.splitlines() == ["virtualservice/hello unchanged", "destinationrule/hello unchanged"]


def test_a_snapshot_the_sidecar_cannot_install_is_nacked_and_the_last_good_routes_serve(mesh: Mesh) -> None:
    if mesh.status().get("acked", 0) == 0 or not mesh.who(1, {"x-canary": "1"}).get("app-v2"):
        assert mesh.apply(ROUTES, "routes.yaml").returncode == 0
        mesh.synced()
    result = mesh.apply(UNIT_SCOPED, "cells.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unitrouting/cells created"

    def nacked() -> dict[str, Any] | None:
        status = mesh.status()
        return status if status.get("state") == "NACKED" else None

    status = wait_for(nacked, timeout=WAIT, what="the NACK in proxy-status")
    assert "UnitRouting" in status["error"] and "--unit" in status["error"], status
    table = plexus_cli("proxy-status", "--control", mesh.control_address)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith(mesh.node_id))
    assert "NACKED" in row and "UnitRouting" in row
    dump = mesh.client.get(f"http://{mesh.consumer.address('admin')}/config_dump").json()
    assert dump["control"]["last_nack"]["version"] == status["nacked"]
    assert dump["control"]["applied_version"] < status["nacked"]
    metrics = _sidecar_metrics(mesh)  # the push as the sidecar counts it, parsed by prometheus_client
    assert metrics[("plexus_sidecar_policy_version", ())] == dump["control"]["applied_version"]
    assert metrics[("plexus_sidecar_policy_snapshots_total", (("result", "nacked"),))] >= 1
    assert metrics[("plexus_sidecar_control_connected", ())] == 1
    assert mesh.who(20, {"x-canary": "1"}) == Counter({"app-v2": 20})  # the last good routes still serve

    deleted = plexus_cli("delete", "UnitRouting", "cells", "--control", mesh.control_address)
    assert deleted.returncode == 0 and deleted.stdout.strip() == "unitrouting/cells deleted", deleted.stderr
    mesh.synced()


def _sidecar_metrics(mesh: Mesh) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = mesh.client.get(f"http://{mesh.consumer.address('admin')}/stats/prometheus").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_control_plane_down_under_traffic_then_a_change_after_its_return(mesh: Mesh) -> None:
    if not mesh.who(1, {"x-canary": "1"}).get("app-v2"):
        assert mesh.apply(ROUTES, "routes.yaml").returncode == 0
    mesh.synced()
    failures: list[str] = []
    answers: Counter[str] = Counter()
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                try:
                    response = client.get(f"http://{mesh.egress}/whoami", headers={"x-canary": "1"})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.headers.get('x-plexus-error')}")
                answers[response.text] += 1
                time.sleep(0.01)

    caller = threading.Thread(target=traffic, daemon=True)
    caller.start()
    try:
        wait_until(lambda: answers["app-v2"] > 20, WAIT, "traffic before the stop")
        mesh.control.stop()
        wait_until(lambda: not mesh.client.get(f"http://{mesh.consumer.address('admin')}/config_dump")
                   .json()["control"]["connected"], WAIT, "the sidecar noticing")  # fmt: skip
        with pytest.raises(ControlUnavailable):
            ControlClient(mesh.control_address, timeout=2).proxy_status()
        during = answers["app-v2"]
        time.sleep(3.0)
        assert answers["app-v2"] > during + 20, answers  # served on the last snapshot meanwhile
        # back on the same address, with its stored resources; warm-up keeps the registry's sets whole
        mesh.control = _start_control(mesh.procs, mesh.data_dir, listen=mesh.control_address, warmup="3")
        mesh.synced()  # the sidecar reconnected (backoff at most a few seconds) and runs the current version
        result = mesh.apply(ALL_TO_V1, "routes.yaml")
        assert result.returncode == 0, result.stderr
        mesh.synced()
        wait_until(lambda: answers["app-v1"] > 20, WAIT, "the change applied after the return")
    finally:
        stop.set()
        caller.join(10)
    assert failures == [], failures[:10]
    assert mesh.who(10, {"x-canary": "1"}) == Counter({"app-v1": 10})


NEW_ROUTE_AND_CLUSTER = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - route:
    - {destination: {host: echo}, weight: 50}
    - {destination: {host: echo-b}, weight: 50}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo-b}
spec:
  host: echo-b
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
"""


def test_a_route_and_a_new_cluster_added_and_removed_together_lose_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    received = {name: tmp_path / f"{name}.received" for name in ("a", "b")}
    sent = tmp_path / "cm.sent"
    sidecar = cluster.start_sidecar("cm-sidecar", wait=False)
    cluster.start_provider("a", "echo", "mesh", ledger=received["a"], wait=False)
    cluster.start_provider("b", "echo-b", "mesh", ledger=received["b"], wait=False)
    consumer = cluster.start_consumer("cm", ["echo"], "mesh", rate=40, ledger=sent, sidecar=sidecar,
                                      wait=False)  # fmt: skip
    for child in [*(p.app for p in cluster.providers), consumer]:
        child.wait_ready()
    wait_until(lambda: calls_to(consumer, "a") >= 20, WAIT, "the consumer calling a")

    policy = tmp_path / "echo-b.yaml"
    policy.write_text(NEW_ROUTE_AND_CLUSTER)
    control = cluster.control_address
    added = plexus_cli("apply", "-f", str(policy), "--control", control)
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == ["virtualservice/echo created", "destinationrule/echo-b created"]
    wait_until(lambda: calls_to(consumer, "b") >= 20, WAIT, "half the calls moving to echo-b")
    before = calls_to(consumer, "a")
    wait_until(lambda: calls_to(consumer, "a") >= before + 10, WAIT, "a still served")

    for kind, name in (("vs", "echo"), ("dr", "echo-b")):  # the route first: the cluster is then unused
        removed = plexus_cli("delete", kind, name, "--control", control)
        assert removed.returncode == 0, removed.stderr
    seen = {"calls": calls_to(consumer, "b"), "since": time.monotonic()}

    def b_left_alone() -> bool:  # echo-b's count stops growing once the sidecar runs the last snapshot
        now = calls_to(consumer, "b")
        if now != seen["calls"]:
            seen.update(calls=now, since=time.monotonic())
            return False
        return time.monotonic() - seen["since"] >= 2.0

    wait_until(b_left_alone, WAIT, "echo-b no longer called after the route was removed")
    before = calls_to(consumer, "a")
    wait_until(lambda: calls_to(consumer, "a") >= before + 10, WAIT, "everything on a again")

    cluster.stop_consumers()
    report = consumer.final_report
    assert report is not None
    result = read_ledger([sent], received, [report])
    print("ledger:", result.summary())
    assert result.sent > 0
    assert (result.errors, result.lost, result.misdelivered, result.duplicated, result.unrecorded) == (
        0, 0, 0, 0, 0), (result.summary(), result.error_samples)  # fmt: skip
    admin = sidecar.address("admin")
    metrics = httpx.get(f"http://{admin}/metrics", timeout=5).text
    for reason in ("no_healthy_upstream", "unknown_service"):
        assert f'reason="{reason}"' not in metrics, metrics

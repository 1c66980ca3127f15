"""Routing end to end through real processes: a consumer sidecar with a --routes file, two provider instances
of one HTTP service published as v1 and v2 (each beside its own sidecar); header match to v2, an 80/20 split,
and SIGHUP reloads (a broken file keeps the old routes serving)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from plexus.testing.procs import ManagedProcess, wait_for

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
  - name: to-other
    match: [{headers: {x-to: {exact: other}}}]
    route: [{destination: {host: other}}]
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
BROKEN = ROUTES.replace("weight: 20", "weight: 30").replace(
    "  - name: split\n", "  - name: split\n    rewrite: {uri: /v2}\n"
)
SIDECAR_ARGS = (
    "--ingress",
    "127.0.0.1:0",
    "--egress",
    "127.0.0.1:0",
    "--api",
    "127.0.0.1:0",
    "--admin",
    "127.0.0.1:0",
    "--health-interval",
    "0.2",
    "--drain-time",
    "0.2",
)


@dataclass
class Mesh:
    consumer: ManagedProcess
    egress: str  # the consumer sidecar's egress port for "hello"
    routes: Path
    client: httpx.Client


class _Group:
    def __init__(self) -> None:
        self.procs: list[ManagedProcess] = []

    def add(self, proc: ManagedProcess) -> ManagedProcess:
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def _http_app(group: _Group, name: str) -> int:
    folder = Path(tempfile.mkdtemp(prefix=f"plexus-routing-{name}-"))
    (folder / "whoami").write_text(name)
    proc = group.add(
        ManagedProcess(
            [
                sys.executable,
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
                str(folder),
            ]
        )
    )
    match = wait_for(lambda: re.search(r"port (\d+)", proc.log()), timeout=10, what=f"http.server {name}")
    assert match is not None
    return int(match.group(1))


def _api(
    client: httpx.Client, proc: ManagedProcess, method: str, path: str, body: Any = None
) -> httpx.Response:
    return client.request(method, f"http://{proc.address('api')}{path}", json=body)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    group = _Group()
    client = httpx.Client(timeout=5)
    routes = tmp_path_factory.mktemp("routing") / "routes.yaml"
    routes.write_text(ROUTES)
    try:
        registry = group.add(
            ManagedProcess.plexus(
                [
                    "registry",
                    "--listen",
                    "127.0.0.1:0",
                    "--admin",
                    "127.0.0.1:0",
                    "--lease-grace",
                    "1",
                    "--warmup",
                    "0",
                    "--debounce-ms",
                    "20",
                ]
            )
        )
        address = registry.address("listen")
        for version in ("v1", "v2"):
            port = _http_app(group, f"app-{version}")
            provider = group.add(ManagedProcess.plexus(["sidecar", "--registry", address, *SIDECAR_ARGS]))
            published = _api(
                client, provider, "PUT", "/v1/providers/hello", {"port": port, "version": version}
            )
            assert published.status_code == 200, published.text
            if version == "v1":  # another service beside hello, on the same provider sidecar
                other = {"port": _http_app(group, "app-other")}
                assert _api(client, provider, "PUT", "/v1/providers/other", other).status_code == 200
        consumer = group.add(
            ManagedProcess.plexus(
                ["sidecar", "--registry", address, *SIDECAR_ARGS], env={"PLEXUS_ROUTES": str(routes)}
            )
        )
        response = _api(client, consumer, "PUT", "/v1/consumers/hello")
        assert response.status_code == 200, response.text
        egress = response.json()["address"]
        assert _api(client, consumer, "PUT", "/v1/consumers/other").status_code == 200
        wait_for(
            lambda: len(_api(client, consumer, "GET", "/v1/services/hello").json().get("instances", [])) == 2,
            timeout=15,
            what="the consumer sidecar sees both instances of hello",
        )
        wait_for(
            lambda: len(_api(client, consumer, "GET", "/v1/services/other").json().get("instances", [])) == 1,
            timeout=15,
            what="the consumer sidecar sees the instance of other",
        )
        yield Mesh(consumer, egress, routes, client)
    finally:
        client.close()
        group.stop_all()


def _who(mesh: Mesh, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    answers: Counter[str] = Counter()
    for _ in range(n):
        response = mesh.client.get(f"http://{mesh.egress}/whoami", headers=headers)
        answers[response.text if response.status_code == 200 else f"{response.status_code}"] += 1
    return answers


def _routes_status(mesh: Mesh) -> dict[str, Any]:
    dump = mesh.client.get(f"http://{mesh.consumer.address('admin')}/config_dump").json()
    status: dict[str, Any] = dump["routes"]
    return status


def test_header_match_goes_to_v2_and_the_rest_splits_80_20(mesh: Mesh) -> None:
    assert _who(mesh, 30, {"x-canary": "1"}) == Counter({"app-v2": 30})
    # a rule may send hello's requests to another service; its provider sidecar is told which one
    assert _who(mesh, 10, {"x-to": "other"}) == Counter({"app-other": 10})
    split = _who(mesh, 600)
    assert set(split) == {"app-v1", "app-v2"}, split
    # p = 0.2 over 600 requests: sd ≈ 9.8; a 4.5 sd band either side of 120
    assert 76 <= split["app-v2"] <= 164, split
    dump = mesh.client.get(f"http://{mesh.consumer.address('admin')}/config_dump").json()
    routing = dump["data_plane"]["routing"]
    assert routing["file"] == str(mesh.routes)
    assert [r["name"] for r in routing["services"]["hello"]["rules"]] == ["canary", "to-other", "split"]
    assert routing["subsets"]["hello"] == {"v1": {"version": "v1"}, "v2": {"version": "v2"}}
    assert dump["routes"]["loaded"] is True and dump["routes"]["file"] == str(mesh.routes)


def test_sighup_with_a_broken_file_keeps_the_last_good_routes(mesh: Mesh) -> None:
    mesh.routes.write_text(BROKEN)
    failed_before = _routes_status(mesh).get("failed_loads", 0)
    mesh.consumer.signal(signal.SIGHUP)
    wait_for(
        lambda: _routes_status(mesh).get("failed_loads", 0) > failed_before,
        timeout=15,
        what="the broken reload to be refused",
    )
    errors = _routes_status(mesh)["last_error"]
    assert any(f"{mesh.routes}:" in e and "weights sum to 110" in e for e in errors), errors
    assert any("rewrite: not supported by Plexus" in e for e in errors), errors
    assert mesh.consumer.alive()
    assert "routes not reloaded" in mesh.consumer.log()
    assert _who(mesh, 20, {"x-canary": "1"}) == Counter({"app-v2": 20})  # the old table still serves

    # a good file then takes effect at the next SIGHUP: everything to v1
    loads = _routes_status(mesh)["loads"]
    mesh.routes.write_text(ALL_TO_V1)
    mesh.consumer.signal(signal.SIGHUP)
    wait_for(lambda: _routes_status(mesh)["loads"] > loads, timeout=15, what="the good reload")
    assert _routes_status(mesh)["last_error"] is None
    assert _who(mesh, 40, {"x-canary": "1"}) == Counter({"app-v1": 40})
    mesh.routes.write_text(ROUTES)


def test_an_invalid_routes_file_at_start_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "plexus",
            "sidecar",
            "--registry",
            "127.0.0.1:9",
            *SIDECAR_ARGS,
            "--routes",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"{bad}:14: VirtualService hello: spec.http[2].rewrite: not supported by Plexus" in result.stderr
    assert f"{bad}:16: VirtualService hello: spec.http[2].route: weights sum to 110, not 100" in result.stderr

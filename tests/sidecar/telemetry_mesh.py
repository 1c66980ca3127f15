"""One mesh for the telemetry tests (access log, span export, Istio metrics), started once per session.

Consumer sidecar A (workload web) → provider sidecar B (workload hello-v1) → an http.server app, both in
namespace shop, both writing access logs and exporting every span (100% sampling) to files. Each test uses
its own service names, so sharing the processes costs nothing in isolation and saves their start-up (several
seconds on a loaded machine) in every test module.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from sidecar_helpers import Group, api, start_http_app, start_registry, start_sidecar

from plexus.testing.procs import ManagedProcess

NAMESPACE = "shop"
APP_BODY = "hello-app"  # what GET /whoami answers


@dataclass
class TelemetryMesh:
    a: ManagedProcess  # the consumer's sidecar (workload web)
    b: ManagedProcess  # the provider's sidecar (workload hello-v1)
    app_port: int
    a_log: Path
    b_log: Path
    a_spans: Path
    b_spans: Path

    def provide(self, service: str) -> None:
        response = api(self.b, "PUT", f"/v1/providers/{service}", {"port": self.app_port})
        assert response.status_code == 200, response.text


_MESH: TelemetryMesh | None = None


def telemetry_mesh(request: pytest.FixtureRequest) -> TelemetryMesh:
    """The session's mesh, started on first use; stopped (by PID) when the session ends."""
    global _MESH
    if _MESH is not None and _MESH.a.alive() and _MESH.b.alive():
        return _MESH
    folder = Path(tempfile.mkdtemp(prefix="plexus-telemetry-"))
    group = Group()
    request.config.add_cleanup(group.stop_all)
    registry = start_registry(group)
    logs = {name: folder / f"{name}.log" for name in ("a", "b")}
    spans = {name: folder / f"{name}.jsonl" for name in ("a", "b")}

    def sidecar(name: str, workload: str) -> ManagedProcess:
        return start_sidecar(
            group,
            registry.address("listen"),
            "--workload",
            workload,
            "--namespace",
            NAMESPACE,
            "--access-log",
            str(logs[name]),
            "--trace-sample-percent",
            "100",
            "--trace-export",
            f"file:{spans[name]}",
        )

    b = sidecar("b", "hello-v1")
    a = sidecar("a", "web")
    _, app_port = start_http_app(group, "hello-app")
    _MESH = TelemetryMesh(a, b, app_port, logs["a"], logs["b"], spans["a"], spans["b"])
    return _MESH

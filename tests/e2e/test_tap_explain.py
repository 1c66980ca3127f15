"""Stat, Tap, Explain and Info of a real `plexus control` over real sidecars (`--control`) and real HTTP apps.

The mesh: a consumer sidecar (workload shop) calling two services, each behind its own provider sidecar:
``hello`` (a live app, workload hello-v1) and ``frail`` (workload frail-v1, health checks once an hour, so
its sidecar keeps routing to its app after the test stops it: the provider sidecar then fails requests with
local_app_unavailable). A VirtualService aborts ``hello`` requests carrying ``x-fail: 1`` on the consumer's
sidecar (fault_injected).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest

from plexus.proto import control_pb2 as pb
from plexus.proto import control_pb2_grpc as pb_grpc
from plexus.testing.procs import ManagedProcess, wait_for

SIDECAR_ARGS = ("--ingress", "127.0.0.1:0", "--egress", "127.0.0.1:0", "--api", "127.0.0.1:0",
                "--admin", "127.0.0.1:0", "--drain-time", "0.2")  # fmt: skip
CONTROL_ARGS = ("--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--lease-grace", "1",
                "--debounce-ms", "20", "--warmup", "0")  # fmt: skip
WAIT = 30.0  # bounds, not timings: several test processes share two cores
FAULT = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hello}
spec:
  hosts: [hello]
  http:
  - name: broken
    match: [{headers: {x-fail: {exact: "1"}}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: hello}}]
  - name: normal
    route: [{destination: {host: hello}}]
"""


@dataclass
class Mesh:
    control: ManagedProcess
    stub: pb_grpc.ControlStub
    client: httpx.Client
    egress: dict[str, str]  # service -> the consumer sidecar's egress for it
    frail_app: ManagedProcess
    procs: list[ManagedProcess] = field(default_factory=list)

    def call(self, service: str, request_id: str, headers: dict[str, str] | None = None) -> int:
        response = self.client.get(
            f"http://{self.egress[service]}/whoami", headers={"x-request-id": request_id, **(headers or {})}
        )
        return response.status_code


def _http_app(procs: list[ManagedProcess], name: str) -> tuple[ManagedProcess, int]:
    folder = Path(tempfile.mkdtemp(prefix=f"plexus-obs-{name}-"))
    (folder / "whoami").write_text(name)
    proc = ManagedProcess([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                           "--directory", str(folder)])  # fmt: skip
    procs.append(proc)
    match = wait_for(lambda: re.search(r"port (\d+)", proc.log()), timeout=WAIT, what=f"http.server {name}")
    assert match is not None
    return proc, int(match.group(1))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    procs: list[ManagedProcess] = []
    client = httpx.Client(timeout=10)
    workdir = tmp_path_factory.mktemp("observe")
    channel: grpc.Channel | None = None
    try:
        control = ManagedProcess.plexus(["control", *CONTROL_ARGS])
        procs.append(control)
        address = control.address("listen")

        def sidecar(workload: str, *extra: str) -> ManagedProcess:
            proc = ManagedProcess.plexus(["sidecar", "--control", address, "--workload", workload,
                                          *SIDECAR_ARGS, *extra])  # fmt: skip
            procs.append(proc)
            return proc

        with ThreadPoolExecutor(5) as pool:
            apps = [pool.submit(_http_app, procs, name) for name in ("hello", "frail")]
            hello_sc = pool.submit(sidecar, "hello-v1", "--health-interval", "0.5")
            frail_sc = pool.submit(sidecar, "frail-v1", "--health-interval", "3600")
            shop_sc = pool.submit(sidecar, "shop")
            (_, hello_port), (frail_app, frail_port) = [f.result() for f in apps]
            providers = {"hello": (hello_sc.result(), hello_port), "frail": (frail_sc.result(), frail_port)}
            consumer = shop_sc.result()
        egress: dict[str, str] = {}
        for service, (provider, port) in providers.items():
            published = client.put(f"http://{provider.address('api')}/v1/providers/{service}",
                                   json={"port": port, "version": "v1"})  # fmt: skip
            assert published.status_code == 200, published.text
            answer = client.put(f"http://{consumer.address('api')}/v1/consumers/{service}")
            assert answer.status_code == 200, answer.text
            egress[service] = answer.json()["address"]
        for service in providers:
            wait_for(
                lambda s=service: client.get(f"http://{consumer.address('api')}/v1/services/{s}")  # type: ignore[misc]
                .json().get("instances"),
                timeout=WAIT, what=f"the consumer sidecar sees {service}",
            )  # fmt: skip
        fault = workdir / "fault.yaml"
        fault.write_text(FAULT)
        argv = [sys.executable, "-m", "plexus", "apply", "-f", str(fault), "--control", address]
        applied = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert applied.returncode == 0, applied.stderr
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.ControlStub(channel)  # type: ignore[no-untyped-call]

        def synced() -> bool:
            status = stub.ProxyStatus(pb.ProxyStatusRequest(), timeout=5)
            shop = [p for p in status.proxies if p.node.workload == "shop"]
            return len(status.proxies) == 3 and all(p.state == "SYNCED" for p in status.proxies) and any(
                p.acked_version == status.version for p in shop
            )

        wait_for(synced, timeout=WAIT, what="every sidecar SYNCED with the fault")
        yield Mesh(control, stub, client, egress, frail_app, procs)
    finally:
        client.close()
        if channel is not None:
            channel.close()
        for proc in reversed(procs):
            proc.stop()


def test_info_names_the_control_plane(mesh: Mesh) -> None:
    info = mesh.stub.Info(pb.InfoRequest(), timeout=5)
    assert info.registry_embedded and info.sidecars == 3 and info.policy_version > 0
    assert info.admin_url == f"http://{mesh.control.address('admin')}/" and info.version
    assert httpx.get(info.admin_url + "ready", timeout=5).json()["ready"] is True


def test_stat_counts_the_traffic_and_the_failures_of_a_dead_app(mesh: Mesh) -> None:
    codes = [mesh.call("hello", f"stat-hello-{i}") for i in range(30)]
    assert codes == [200] * 30
    assert [mesh.call("frail", f"stat-frail-ok-{i}") for i in range(20)] == [200] * 20
    mesh.frail_app.stop()
    failed = [mesh.call("frail", f"stat-frail-down-{i}") for i in range(10)]
    assert all(code >= 500 for code in failed), failed

    def settled() -> pb.StatResponse | None:
        stat: pb.StatResponse = mesh.stub.Stat(pb.StatRequest(window_seconds=120), timeout=5)
        found = {s.service: s for s in stat.services}
        hello, frail = found.get("hello"), found.get("frail")
        if hello is None or frail is None or hello.requests < 30 or frail.requests < 30:
            return None
        # the edge is the caller's (outbound) view: its sidecar reports at its own phase, so wait for it too
        edge = [e for e in stat.edges if (e.source_workload, e.destination_service) == ("shop", "hello")]
        if not edge or edge[0].requests < 30:
            return None
        return stat

    stat = wait_for(settled, timeout=WAIT, what="both services' traffic in Stat")
    found = {s.service: s for s in stat.services}
    hello, frail = found["hello"], found["frail"]
    assert hello.requests == 30 and hello.rps > 0 and hello.success_rate == 1.0
    assert hello.meshed == 1 and hello.instances == 1 and hello.protocol == "http"
    assert 0 < hello.latency_p50_ms <= hello.latency_p95_ms <= hello.latency_p99_ms
    # what the frail provider's sidecar saw: 20 answered, the rest (10 requests, plus any retries) failed
    assert frail.requests >= 30 and frail.success_rate == pytest.approx(20 / frail.requests)
    assert frail.meshed == 1
    edges = {(e.source_workload, e.destination_service, e.destination_workload): e for e in stat.edges}
    assert edges[("shop", "hello", "hello-v1")].requests == 30
    assert ("shop", "frail", "frail-v1") in edges
    assert any(p.service == "hello" and p.path == "/whoami" and p.requests == 30 for p in stat.paths)


def test_explain_names_the_hop_and_the_reason(mesh: Mesh) -> None:
    assert mesh.call("hello", "explain-fault", {"x-fail": "1"}) == 503
    answer = mesh.stub.Explain(pb.ExplainRequest(request_id="explain-fault", wait_seconds=5), timeout=10)
    assert answer.sidecars_asked == 3 and answer.sidecars_answered == 3
    hops = [(h.workload, h.direction, h.reason) for h in answer.hops]
    assert hops == [("shop", "outbound", "fault_injected")], answer
    assert answer.verdict.startswith("shop (outbound) failed it: fault_injected (FI), status 503"), answer

    if mesh.frail_app.alive():
        mesh.frail_app.stop()
    assert mesh.call("frail", "explain-down") >= 500
    answer = mesh.stub.Explain(pb.ExplainRequest(request_id="explain-down", wait_seconds=5), timeout=10)
    where = [(h.workload, h.direction) for h in answer.hops]
    assert where[0] == ("shop", "outbound") and ("frail-v1", "inbound") in where, answer
    assert answer.verdict.startswith("frail-v1 (inbound) failed it: local_app_unavailable"), answer

    answer = mesh.stub.Explain(pb.ExplainRequest(request_id="never-sent", wait_seconds=5), timeout=10)
    assert not answer.hops and answer.verdict.startswith("not found on any sidecar")


def test_tap_streams_count_lines_of_the_tapped_service(mesh: Mesh) -> None:
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            mesh.call("hello", f"tap-hello-{i}")
            mesh.call("frail", f"tap-frail-{i}")  # not tapped
            i += 1
            time.sleep(0.02)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        lines = list(mesh.stub.Tap(pb.TapRequest(service="hello", count=8), timeout=WAIT))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert len(lines) == 8
    assert {line.service for line in lines} == {"hello"}
    assert all(line.request_id.startswith("tap-hello-") and line.status == 200 for line in lines)
    assert {line.workload for line in lines} <= {"shop", "hello-v1"}
    assert all(line.sidecar_id for line in lines)
    assert all(abs(line.start_unix - time.time()) < 120 for line in lines)  # Unix time, not the loop clock

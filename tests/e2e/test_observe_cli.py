"""`plexus stat / top / tap / check / explain / dashboard` against a real mesh, run as the user runs them.

One mesh for the module: a control plane, a provider app (python's http.server) behind a sidecar (workload
hello-v1) and a consumer sidecar (workload consumer), both writing access logs; a thread sends requests
through the consumer's egress all along; a second control plane has no sidecar at all. The commands under test
run as subprocesses (`python -m plexus ...`) with timeouts; secondary cases (JSON forms, not-found exits) run
in-process through typer's CliRunner, the same code path without an interpreter start each:

- `stat` shows hello with requests per second > 0, `top` its busiest path;
- `check` passes on the healthy mesh; fails (exit 1, ✘ naming the sidecar) while the consumer sidecar NACKs a
  policy it cannot install (a unit-scoped UnitRouting: it has no --unit); fails when no sidecar is connected;
- `tap --count 3` prints 3 request lines while traffic flows; `tap --watch` and `top --watch` end with 0 on
  Ctrl-C (SIGINT);
- `explain` names the failing hop of a request the provider's sidecar failed (its app's port is closed), from
  the control plane and from the access logs; an unknown id exits 1;
- `dashboard --no-browser` prints the control plane's admin URL.
"""

from __future__ import annotations

import functools
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from plexus.cli import check_cmd
from plexus.cli.main import app
from plexus.clients.control import ControlClient
from plexus.testing.procs import ManagedProcess, free_port, wait_for

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
    "0.5",
    "--drain-time",
    "0.2",
)
WAIT = 30.0  # bounds, not timings: several test processes share two cores
UNIT_SCOPED = """\
apiVersion: plexus.io/v1
kind: UnitRouting
metadata: {name: cells}
spec:
  hosts: [hello]
  scope: unit
"""


def plexus_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plexus", *args], capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Mesh:
    control: str
    lonely: str  # a control plane no sidecar follows
    consumer: ManagedProcess
    provider: ManagedProcess
    egress: dict[str, str]
    logs: list[Path]
    workdir: Path
    answered: list[int] = field(default_factory=lambda: [0])

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return plexus_cli(*args, "--control", self.control, timeout=timeout)

    def node_id(self, proc: ManagedProcess) -> str:
        return f"sidecar-{proc.address('advertise')}-{proc.pid}"


def _http_app(procs: list[ManagedProcess]) -> int:
    folder = Path(tempfile.mkdtemp(prefix="plexus-observe-app-"))
    (folder / "whoami").write_text("hello-v1")
    proc = ManagedProcess(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(folder)]
    )
    procs.append(proc)
    match = wait_for(lambda: re.search(r"port (\d+)", proc.log()), timeout=10, what="http.server")
    assert match is not None
    return int(match.group(1))


def read_until(proc: subprocess.Popen[bytes], done: Callable[[str], bool], timeout: float = WAIT) -> str:
    """What the process printed until ``done(text)``; fails after ``timeout`` or when its output ends."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    while not done(seen.decode(errors="replace")):
        left = deadline - time.monotonic()
        readable, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        assert readable, f"nothing more within {timeout}s; printed so far: {seen!r}"
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, f"the output ended: {seen!r}; stderr: {proc.stderr.read() if proc.stderr else b''!r}"
        seen += chunk
    return seen.decode(errors="replace")


def _control(procs: list[ManagedProcess]) -> ManagedProcess:
    argv = [
        "control",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--warmup",
        "0",
        "--lease-grace",
        "1",
    ]
    proc = ManagedProcess.plexus([*argv, "--debounce-ms", "20"])
    procs.append(proc)
    return proc


def _instances(client: httpx.Client, url: str) -> list[Any]:
    instances: list[Any] = client.get(url).json().get("instances", [])
    return instances


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    procs: list[ManagedProcess] = []
    workdir = tmp_path_factory.mktemp("observe-cli")
    stop = threading.Event()
    caller: threading.Thread | None = None
    try:
        control = _control(procs)
        address = control.address("listen")
        logs = [workdir / "provider.access.log", workdir / "consumer.access.log"]

        def sidecar(workload: str, log: Path) -> ManagedProcess:
            argv = ["sidecar", "--control", address, "--workload", workload, "--access-log", str(log)]
            proc = ManagedProcess.plexus([*argv, *SIDECAR_ARGS])
            procs.append(proc)
            return proc

        # start-ups overlap (each waits for its ready file); the lonely control plane has no sidecar at all
        with ThreadPoolExecutor(4) as pool:
            app_started = pool.submit(_http_app, procs)
            provider_sidecar = pool.submit(sidecar, "hello-v1", logs[0])
            consumer_sidecar = pool.submit(sidecar, "consumer", logs[1])
            lonely = pool.submit(_control, procs)
            port, provider, consumer = (
                app_started.result(),
                provider_sidecar.result(),
                consumer_sidecar.result(),
            )
            lonely_address = lonely.result().address("listen")
        with httpx.Client(timeout=5) as client:
            # hello: the app; broken: the same sidecar publishing a port nothing listens on
            for service, app_port in (("hello", port), ("broken", free_port())):
                body = {"port": app_port, "version": "v1"}
                published = client.put(f"http://{provider.address('api')}/v1/providers/{service}", json=body)
                assert published.status_code == 200, published.text
            egress = {}
            for service in ("hello", "broken"):
                response = client.put(f"http://{consumer.address('api')}/v1/consumers/{service}")
                assert response.status_code == 200, response.text
                egress[service] = response.json()["address"]
                url = f"http://{consumer.address('api')}/v1/services/{service}"
                wait_for(
                    functools.partial(_instances, client, url),
                    timeout=WAIT,
                    what=f"the consumer sidecar sees {service}",
                )
        mesh = Mesh(address, lonely_address, consumer, provider, egress, logs, workdir)

        def traffic() -> None:  # ~20 requests a second for the whole module
            with httpx.Client(timeout=5) as client:
                while not stop.wait(0.05):
                    try:
                        if client.get(f"http://{egress['hello']}/whoami").status_code == 200:
                            mesh.answered[0] += 1
                    except httpx.HTTPError:
                        pass

        caller = threading.Thread(target=traffic, daemon=True)
        caller.start()
        wait_for(lambda: mesh.answered[0] >= 10, timeout=WAIT, what="traffic through the mesh")
        yield mesh
    finally:
        stop.set()
        if caller is not None:
            caller.join(10)
        for proc in reversed(procs):
            proc.stop()


def in_process(*args: str) -> Any:
    """Secondary cases run through typer's CliRunner: the same code path without an interpreter start."""
    return CliRunner().invoke(app, list(args))


def test_stat_and_top_show_the_service_with_traffic(mesh: Mesh) -> None:
    client = ControlClient(mesh.control)
    wait_for(
        lambda: [s for s in client.stat("hello").services if s.service == "hello" and s.rps > 0],
        timeout=WAIT,
        interval=0.5,
        what="hello with requests per second > 0",
    )
    result = in_process("stat", "-o", "json", "--control", mesh.control)
    assert result.exit_code == 0, result.output
    row = next(s for s in json.loads(result.stdout)["services"] if s["service"] == "hello")
    assert row["rps"] > 0 and row["meshed"] >= 1 and row["requests"] > 0 and row["success_rate"] > 0.9, row
    table = mesh.cli("stat", "hello")
    assert table.returncode == 0, table.stderr
    header, line = table.stdout.splitlines()
    assert header.split()[:4] == ["SERVICE", "MESHED", "SUCCESS", "RPS"]
    cells = line.split()
    assert cells[0] == "hello" and re.fullmatch(r"\d+\.\d\d%", cells[2]) and float(cells[3]) > 0, line
    assert re.fullmatch(r"[\d.]+m?s", cells[4]), line

    top = in_process("top", "hello", "--control", mesh.control)
    assert top.exit_code == 0, top.output
    header, *rows = top.stdout.splitlines()
    assert header.split() == ["SERVICE", "METHOD", "PATH", "COUNT", "RPS", "SUCCESS", "P50", "P99"]
    assert rows and rows[0].split()[:3] == ["hello", "GET", "/whoami"], top.stdout

    unknown = in_process("stat", "no-such-service", "--control", mesh.control)
    assert unknown.exit_code == 1 and 'service "no-such-service"' in unknown.output


def test_check_passes_on_a_healthy_mesh(mesh: Mesh) -> None:
    result = mesh.cli("check", timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("✔") for line in lines[2:-2]), result.stdout
    assert "✔ sidecars connected: 2 sidecars connected" in lines
    assert lines[-1] == "✔ all 7 checks passed"
    document = json.loads(in_process("check", "-o", "json", "--control", mesh.control).stdout)
    assert document["ok"] is True and len(document["checks"]) == 7


def test_check_fails_naming_the_sidecar_that_nacked(mesh: Mesh) -> None:
    client = ControlClient(mesh.control)
    node = mesh.node_id(mesh.consumer)

    def state() -> str:
        return next((p.state for p in client.proxy_status().proxies if p.node.id == node), "")

    applied = client.apply(UNIT_SCOPED, "cells.yaml")
    assert not applied.problems, applied.problems
    try:
        wait_for(lambda: state() == "NACKED", timeout=WAIT, what="the consumer sidecar's NACK")
        result = mesh.cli("check", timeout=30)
        assert result.returncode == 1, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        nack = next(line for line in lines if line.startswith("✘ no sidecar NACKed"))
        assert node in nack and "UnitRouting" in nack, result.stdout
        assert lines[lines.index(nack) + 1].startswith("    hint: ")
        assert any(line.startswith("✘ sidecars synced") and node in line for line in lines), result.stdout
        document = json.loads(in_process("check", "-o", "json", "--control", mesh.control).stdout)
        failed = {c["name"] for c in document["checks"] if not c["ok"]}
        assert document["ok"] is False and "no sidecar NACKed" in failed
    finally:
        assert client.delete("UnitRouting", "cells", "default").deleted
        wait_for(
            lambda: state() == "SYNCED", timeout=WAIT, what="the consumer sidecar SYNCED after the delete"
        )
    assert in_process("check", "--control", mesh.control).exit_code == 0


def test_check_fails_when_no_sidecar_is_connected(mesh: Mesh) -> None:
    env = {**os.environ, "PLEXUS_CONTROL": mesh.lonely}  # found through the environment this time
    result = subprocess.run(
        [sys.executable, "-m", "plexus", "check"], capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "✔ control plane reachable" in lines[2] and any(
        line.startswith("✔ registry reachable") for line in lines
    )
    assert "✘ sidecars connected: no sidecar is connected to the control plane" in lines
    assert lines[-1] == "✘ 1 of 4 checks failed"


def test_tap_prints_request_lines_while_traffic_flows(mesh: Mesh) -> None:
    result = mesh.cli("tap", "hello", "--count", "3", "--for", "30s", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    for line in lines:
        assert re.match(
            r"^\d\d:\d\d:\d\d\.\d{3} (in|out) \S+ -> \S+ svc=hello GET /whoami status=200 ", line
        ), line


def test_tap_watch_ends_cleanly_on_ctrl_c(mesh: Mesh) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "plexus", "tap", "hello", "--watch", "--control", mesh.control],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        first = read_until(proc, lambda text: "\n" in text)  # traffic flows all along
        assert " svc=hello " in first, first
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_explain_names_the_failing_hop(mesh: Mesh) -> None:
    with httpx.Client(timeout=10) as client:
        # http.server answers 501 to PATCH: the app fails it, both sidecars pass the answer on
        app_error = client.patch(
            f"http://{mesh.egress['hello']}/whoami", headers={"x-request-id": "observe-501"}
        )
        broken = client.get(f"http://{mesh.egress['broken']}/x", headers={"x-request-id": "observe-broken"})
    assert app_error.status_code == 501 and broken.status_code >= 500, (app_error.text, broken.text)
    result = mesh.cli("explain", "observe-501", timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "request observe-501: 2 hops (2 of 2 sidecars answered)", result.stdout
    # #, TIME, WORKLOAD, DIRECTION, SERVICE, STATUS, FLAGS, REASON, UPSTREAM, DURATION
    hops = [line.split() for line in lines[2:-1]]
    assert [hop[2:6] for hop in hops] == [
        ["consumer", "outbound", "hello", "501"],
        ["hello-v1", "inbound", "hello", "501"],
    ], result.stdout
    assert lines[-1].startswith("verdict: hello-v1 (inbound) failed it: the upstream answered 501"), lines[-1]

    # a hop that fails a request itself gives its reason code: the provider's sidecar (its app's port is
    # closed) or, once its health check took the instance out, the consumer's (no healthy upstream)
    failed = in_process("explain", "observe-broken", "--control", mesh.control)
    assert failed.exit_code == 0, failed.output
    lines = failed.stdout.splitlines()
    hops = [line.split() for line in lines[2:-1]]
    deepest = [hop for hop in hops if hop[7] != "-"][-1]
    assert deepest[2] in ("hello-v1", "consumer") and deepest[4] == "broken", failed.stdout
    verdict = lines[-1]
    assert verdict.startswith(f"verdict: {deepest[2]} ({deepest[3]}) failed it: {deepest[7]} "), failed.stdout

    logs = [a for log in mesh.logs for a in ("--log", str(log))]

    def logged() -> Any:  # the access logs are flushed every 100 ms
        found = in_process("explain", "observe-broken", *logs)
        return found if found.exit_code == 0 else None

    from_logs = wait_for(logged, timeout=WAIT, interval=0.5, what="the request in the access logs")
    assert from_logs.stdout.splitlines()[-1] == verdict, from_logs.stdout

    missing = in_process("explain", "no-such-request", "--control", mesh.control)
    assert missing.exit_code == 1 and 'request id "no-such-request" not found' in missing.output


def test_dashboard_prints_the_admin_url(mesh: Mesh) -> None:
    result = in_process("dashboard", "--no-browser", "--control", mesh.control)
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/.*", url), url
    assert httpx.get(url, timeout=5).status_code == 200


def test_registry_check_lists_the_embedded_registry_and_names_one_that_is_down(mesh: Mesh) -> None:
    up = check_cmd.registry_check(mesh.control, "embedded in the control plane")
    assert up.ok and up.message == "embedded in the control plane: 2 services", up
    nowhere = f"127.0.0.1:{free_port()}"
    down = check_cmd.registry_check(nowhere, f"not embedded; --registry {nowhere}")
    assert not down.ok and f"List failed at {nowhere}: UNAVAILABLE" in down.message, down


def test_top_watch_redraws_until_ctrl_c(mesh: Mesh) -> None:
    argv = [
        sys.executable,
        "-m",
        "plexus",
        "top",
        "--watch",
        "--interval",
        "200ms",
        "--control",
        mesh.control,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # two frames drawn (a pipe gets no clear-screen codes: click leaves them out when not a terminal)
        seen = read_until(proc, lambda text: text.count("plexus top") >= 2)
        assert "/whoami" in seen and "SERVICE" in seen, seen
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)

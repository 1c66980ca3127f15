"""The single-machine stress test end to end: `plexus control` (with its embedded registry), three provider
instances of one HTTP service beside their sidecars (one of them slows down when it serves more than 16
requests a second), a consumer sidecar, steady open-loop traffic, and `plexus stress-test` run from the shell.

The test must stop at the step whose p99 crosses the limit, report a held rate near what the instance served
at the last good step, and leave normal routing behind (no stress share on the control plane, calls spread
over every instance again). An unknown instance is refused with exit 1 and a clear message.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from plexus.demo.processes import Child
from plexus.testing.procs import wait_for

SERVICE = "stressed"
RATE = 40.0  # requests per second the callers send to the service, open loop
WORKERS = 16  # each sends every WORKERS / RATE seconds, so a slow answer (0.3 s) does not lower the rate
VERSIONS = {"slow": "v2", "fast1": "v1", "fast2": "v1"}  # published versions, for a TrafficShift
SLOW_ABOVE = 16.0  # the slow instance answers in 300 ms above this many requests a second, else in 5 ms
# An app that reports which instance answered; with --slow its latency depends on its own request rate over
# the last two seconds (a machine at capacity), so a share of 0.2 (8/s) is fast and 0.6 (24/s) is slow.
APP = """
import collections, json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name, slow, slow_above = sys.argv[1], sys.argv[2] == "slow", float(sys.argv[3])
arrivals = collections.deque()
lock = threading.Lock()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1

    def do_GET(self):
        now = time.monotonic()
        with lock:
            arrivals.append(now)
            while arrivals and arrivals[0] < now - 2.0:
                arrivals.popleft()
            rate = len(arrivals) / 2.0
        if slow:
            time.sleep(0.3 if rate > slow_above else 0.005)
        body = json.dumps({"provider": name}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print("port", server.server_address[1], flush=True)
server.serve_forever()
"""
SIDECAR_ARGS = (
    "--ingress", "127.0.0.1:0", "--egress", "127.0.0.1:0", "--api", "127.0.0.1:0", "--admin", "127.0.0.1:0",
    "--health-interval", "0.5", "--drain-time", "0.2",
)  # fmt: skip


@dataclass
class Load:
    """Open-loop callers through the consumer sidecar; counts answers by instance."""

    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    answers: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(WORKERS):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, worker: int) -> None:
        period = WORKERS / RATE
        time.sleep(worker * period / WORKERS)  # spread the workers over one period
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    response = client.get(self.url)
                    who = (
                        response.json()["provider"]
                        if response.status_code == 200
                        else str(response.status_code)
                    )
                except (httpx.HTTPError, ValueError) as exc:
                    who = type(exc).__name__
                with self.lock:
                    self.answers[who] += 1
                self.stop.wait(max(period - (time.monotonic() - started), 0.0))

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.answers)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


@dataclass
class StressMesh:
    control: Child
    slow_address: str  # the slow instance's published address (its sidecar's ingress)
    load: Load


def _plexus(workdir: Path, name: str, *args: str) -> Child:
    return Child(name, [sys.executable, "-m", "plexus", *args], workdir)


def _app_port(app: Child) -> int:
    match = wait_for(lambda: re.search(r"port (\d+)", app.log_tail()), timeout=20, what=f"app {app.name}")
    assert match is not None
    return int(match.group(1))


@pytest.fixture(scope="module")
def stress_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StressMesh]:
    """One mesh for the module (each test leaves the policy as it found it)."""
    tmp_path = tmp_path_factory.mktemp("stress")
    children: list[Child] = []
    load: Load | None = None
    app = tmp_path / "app.py"
    app.write_text(APP)
    client = httpx.Client(timeout=10)
    try:
        control = _plexus(
            tmp_path, "control", "control", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--debounce-ms", "20", "--lease-grace", "1", "--warmup", "0",
        )  # fmt: skip
        children.append(control)
        control.wait_ready()
        address = control.address("listen")
        # everything else starts at once (a cold start takes seconds on a busy machine), then is waited for
        sidecars = {
            name: _plexus(tmp_path, f"{name}-sidecar", "sidecar", "--control", address, *SIDECAR_ARGS)
            for name in ("slow", "fast1", "fast2", "consumer")
        }
        children.extend(sidecars.values())
        apps = {
            name: Child(name, [sys.executable, "-u", str(app), name, kind, str(SLOW_ABOVE)], tmp_path)
            for name, kind in (("slow", "slow"), ("fast1", "fast"), ("fast2", "fast"))
        }
        children.extend(apps.values())
        for name, child in apps.items():
            sidecars[name].wait_ready()
            api = f"http://{sidecars[name].address('api')}"
            response = client.put(
                f"{api}/v1/providers/{SERVICE}", json={"port": _app_port(child), "version": VERSIONS[name]}
            )
            assert response.status_code == 200, response.text
        sidecars["consumer"].wait_ready()
        api = f"http://{sidecars['consumer'].address('api')}"
        response = client.put(f"{api}/v1/consumers/{SERVICE}")
        assert response.status_code == 200, response.text
        egress = response.json()["address"]
        instances = wait_for(
            lambda: (lambda i: i if len(i) == 3 else None)(
                client.get(f"{api}/v1/services/{SERVICE}").json().get("instances", [])
            ),
            timeout=20,
            what="the consumer sidecar to see the three instances",
        )
        slow_port = sidecars["slow"].address("ingress").rpartition(":")[2]
        slow_address = next(i["address"] for i in instances if i["address"].endswith(f":{slow_port}"))
        load = Load(f"http://{egress}/")
        load.start()
        wait_for(lambda: sum(load.snapshot().values()) > 40, timeout=20, what="traffic to flow")
        yield StressMesh(control, slow_address, load)
    finally:
        if load is not None:
            load.close()
        client.close()
        for child in reversed(children):
            child.stop()


def _stress_test(mesh: StressMesh, instance: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plexus", "stress-test", SERVICE, "--instance", instance, "--max-p99", "100",
         "--max-error-rate", "0.05", "--step-seconds", "3", "--start-share", "0.2", "--step-share", "0.4",
         "--max-share", "1", "--control", mesh.control.address("listen")],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def test_the_stress_test_stops_at_the_latency_limit_and_reports_the_rate_held(
    stress_mesh: StressMesh,
) -> None:
    refused = _stress_test(stress_mesh, "127.0.0.1:9")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "127.0.0.1:9 is not published by any sidecar" in refused.stderr

    result = _stress_test(stress_mesh, stress_mesh.slow_address)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = re.findall(r"share\s+([\d.]+)%\s+rate\s+([\d.]+)/s\s+p99\s+([\d.]+) ms", result.stdout)
    assert [float(s[0]) for s in steps] == [20.0, 60.0], result.stdout  # stopped at the second step
    assert float(steps[0][2]) <= 100.0 < float(steps[1][2]), result.stdout
    stopped = re.search(r"stopped: (.*)", result.stdout)
    assert stopped is not None and "p99" in stopped.group(1), result.stdout
    held = re.search(r"held rate: ([\d.]+) requests/s", result.stdout)
    assert held is not None, result.stdout
    # 20% of 40/s is 8/s; the callers' draw and the step's edges move it a little
    assert 4.0 <= float(held.group(1)) <= 13.0, result.stdout

    # normal routing again: no share left on the control plane, calls spread over every instance
    dump = httpx.get(f"http://{stress_mesh.control.address('admin')}/config_dump", timeout=5).json()
    assert dump["stress"] == []
    before = stress_mesh.load.snapshot()
    wait_for(
        lambda: sum((stress_mesh.load.snapshot() - before).values()) >= 60, timeout=20, what="more traffic"
    )
    after = stress_mesh.load.snapshot() - before
    assert set(after) == {"slow", "fast1", "fast2"}, after
    assert after["slow"] < 0.5 * sum(after.values()), after


SHIFT_AWAY = """\
apiVersion: plexus.io/v1
kind: TrafficShift
metadata: {name: away-from-v2}
spec:
  host: stressed
  by: version
  weights: {v1: 100, v2: 0}
"""


def _plexus_cli(mesh: StressMesh, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plexus", *args, "--control", mesh.control.address("listen")],
        input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_traffic_shift_applied_on_the_control_plane_moves_every_callers_traffic(
    stress_mesh: StressMesh,
) -> None:
    applied = _plexus_cli(stress_mesh, "apply", "-f", "-", stdin=SHIFT_AWAY)
    assert applied.returncode == 0, applied.stdout + applied.stderr

    def calls_since(before: Counter[str]) -> Counter[str]:
        return stress_mesh.load.snapshot() - before

    def window_of(calls: int) -> Counter[str]:
        start = stress_mesh.load.snapshot()
        wait_for(lambda: sum(calls_since(start).values()) >= calls, timeout=20, what="traffic")
        return calls_since(start)

    # the change reaches the caller's sidecar: soon no call goes to v2 (the slow instance)
    deadline = time.monotonic() + 20
    while True:
        window = window_of(40)
        if window["slow"] == 0:
            break
        assert time.monotonic() < deadline, f"calls still reach v2 after the shift: {window}"
    assert set(window) == {"fast1", "fast2"}, window

    deleted = _plexus_cli(stress_mesh, "delete", "trafficshift", "away-from-v2")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    before = stress_mesh.load.snapshot()
    wait_for(
        lambda: calls_since(before)["slow"] > 0, timeout=20, what="calls to v2 again once the shift is gone"
    )

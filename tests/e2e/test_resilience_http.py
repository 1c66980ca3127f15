"""TESTING.md §F through real processes: a registry, consumer sidecars whose policy comes from their --routes
file (VirtualService / DestinationRule in Istio's YAML), real HTTP apps (each host of one app process is its
own published instance, or sits behind its own provider sidecar), and the request ledger.

The test is the consumer: every request carries a unique ``x-request-id``; the client writes ``sent``,
``ok``/``error`` lines, each app host appends the ids it received to its own file, and ``read_ledger`` joins
them: lost and misdelivered must be 0 always, duplicated 0 where no retry may repeat a request.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from plexus.clients.registry import RegistryClient
from plexus.discovery.model import Instance
from plexus.testing.procs import ManagedProcess, wait_for

from .conftest import LedgerResult, read_ledger

# One process serving several hosts, each on its own port with its own behaviour (JSON spec per host):
# {"name", "status" (answer), "delay" (seconds before answering), "forward" ("HOST:PORT" to call instead of
# answering: the middle app of a chain), "forward_host" (its Host header)}. Every received x-request-id is
# appended to <ledger-dir>/<name>.received before anything else happens.
APP = r"""
import json, sys, threading, time, http.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

spec = json.loads(sys.argv[1]); ledger_dir = sys.argv[2]; ready = sys.argv[3]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1
    def log_message(self, *args): pass
    def do_GET(self): self.answer(b"")
    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        self.answer(self.rfile.read(n) if n else b"")
    def answer(self, body):
        host = self.server.host
        rid = self.headers.get("x-request-id", "")
        with self.server.lock:
            self.server.ledger.write(rid + "\n")
        if host.get("delay"):
            time.sleep(host["delay"])
        status = host.get("status", 200)
        payload = json.dumps({"provider": host["name"], "request_id": rid}).encode()
        if host.get("forward"):
            h, p = host["forward"].rsplit(":", 1)
            try:
                c = http.client.HTTPConnection(h, int(p), timeout=30)
                headers = {"host": host["forward_host"], "x-request-id": rid}
                c.request("POST", self.path, body=body, headers=headers)
                r = c.getresponse(); payload = r.read(); status = r.status; c.close()
            except OSError as exc:
                status, payload = 599, str(exc).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

ports = {}
for host in spec:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.host = host; server.lock = threading.Lock()
    server.ledger = open(f"{ledger_dir}/{host['name']}.received", "a", buffering=1)
    ports[host["name"]] = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
with open(ready + ".tmp", "w") as f:
    json.dump({"ports": ports}, f)
import os; os.replace(ready + ".tmp", ready)
import signal; signal.sigwait({signal.SIGTERM, signal.SIGINT})
"""

SIDECAR_ARGS = (
    "--ingress", "127.0.0.1:0", "--egress", "127.0.0.1:0", "--api", "127.0.0.1:0", "--admin", "127.0.0.1:0",
    "--health-interval", "0.2", "--drain-time", "0.2",
)  # fmt: skip


class Group:
    """Processes and registry clients of one test, stopped in reverse order (by PID)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[ManagedProcess] = []
        self.clients: list[RegistryClient] = []
        self.http = httpx.Client(timeout=10)

    def add(self, proc: ManagedProcess) -> ManagedProcess:
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        self.http.close()
        for client in self.clients:
            client.close()
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    proc = ManagedProcess.plexus(
        ["registry", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--lease-grace", "1",
         "--warmup", "0", "--debounce-ms", "20"]
    )  # fmt: skip
    try:
        yield proc.address("listen")
    finally:
        proc.stop()


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    g = Group(tmp_path)
    try:
        yield g
    finally:
        g.close()


def start_app(g: Group, hosts: list[dict[str, Any]], name: str = "app") -> dict[str, int]:
    """The hosts of one app process; their ports by name."""
    script = g.tmp / "app.py"
    script.write_text(APP)
    ready = g.tmp / f"{name}.ready"
    argv = [sys.executable, str(script), json.dumps(hosts), str(g.tmp), str(ready)]
    proc = g.add(ManagedProcess(argv, ready_file=ready))
    ports: dict[str, int] = proc.info["ports"]
    return ports


def publish_direct(g: Group, registry: str, service: str, addresses: list[str]) -> None:
    """Publish hosts as direct instances of ``service`` (as an SDK app without a sidecar does)."""
    client = RegistryClient(registry, publisher_id=f"test-{uuid.uuid4().hex[:8]}")
    client.start()
    g.clients.append(client)
    client.set_published([Instance(service=service, address=a, protocol="http") for a in addresses])
    wait_for(lambda: client.connected and not client.publish_errors(), timeout=15, what="publishing")


def sidecar(g: Group, registry: str, name: str, policy: str | None) -> ManagedProcess:
    args = ["sidecar", "--registry", registry, *SIDECAR_ARGS, "--workload", name]
    if policy is not None:
        routes = g.tmp / f"{name}.yaml"
        routes.write_text(policy)
        args += ["--routes", str(routes)]
    return g.add(ManagedProcess.plexus(args))


def consume(g: Group, car: ManagedProcess, service: str, instances: int) -> str:
    """The sidecar's egress for ``service``, once it sees ``instances`` of it."""
    api = car.address("api")
    response = g.http.put(f"http://{api}/v1/consumers/{service}")
    assert response.status_code == 200, response.text
    wait_for(
        lambda: (
            len(g.http.get(f"http://{api}/v1/services/{service}").json().get("instances", [])) == instances
        ),
        timeout=20,
        what=f"{instances} instances of {service}",
    )
    return str(response.json()["address"])


def provide(g: Group, car: ManagedProcess, service: str, port: int) -> None:
    api = car.address("api")
    response = g.http.put(f"http://{api}/v1/providers/{service}", json={"port": port, "version": "v1"})
    assert response.status_code == 200, response.text


def clusters(g: Group, car: ManagedProcess) -> list[dict[str, Any]]:
    dump: list[dict[str, Any]] = g.http.get(f"http://{car.address('admin')}/clusters").json()
    return dump


@dataclass
class Load:
    """The client: ``clients`` threads, each sending ``each`` requests on one keep-alive connection."""

    egress: str
    ledger: Path
    statuses: Counter[int] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    misdelivered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, clients: int, each: int, path: str = "/", timeout: float = 30.0) -> None:
        threads = [
            threading.Thread(target=self._client, args=(i, each, path, timeout)) for i in range(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout * each + 30)
            assert not t.is_alive(), "a client hangs"

    def _client(self, n: int, each: int, path: str, timeout: float) -> None:
        host, port = self.egress.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        with self.ledger.open("a", buffering=1) as out:
            for i in range(each):
                rid = f"c{n}-{i}-{uuid.uuid4().hex[:6]}"
                out.write(f"sent {rid}\n")
                try:
                    conn.request("POST", path, body=b"payload " + rid.encode(), headers={"x-request-id": rid})
                    response = conn.getresponse()
                    body = response.read()
                except OSError:
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
                    out.write(f"error {rid}\n")
                    continue
                with self.lock:
                    self.statuses[response.status] += 1
                    error = response.getheader("x-plexus-error")
                    if error:
                        self.reasons[error.split(";")[0]] += 1
                answer = _json(body)
                if answer.get("request_id") not in (None, rid):
                    with self.lock:
                        self.misdelivered += 1
                if response.status == 200 and "provider" in answer:
                    out.write(f"ok {rid} {answer['provider']}\n")
                else:
                    out.write(f"error {rid}\n")
        conn.close()

    def ledger_result(self, tmp: Path, hosts: list[str]) -> LedgerResult:
        result = read_ledger(
            [self.ledger], {h: tmp / f"{h}.received" for h in hosts}, [{"misdelivered": self.misdelivered}]
        )
        print("ledger:", result.summary(), "statuses:", dict(self.statuses), "reasons:", dict(self.reasons))
        return result


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def received(tmp: Path, host: str) -> int:
    path = tmp / f"{host}.received"
    return len(path.read_text().split()) if path.exists() else 0


def vs(service: str, extra: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {service}}}
spec:
  hosts: [{service}]
  http:
  - route: [{{destination: {{host: {service}}}}}]
{extra}"""


def dr(service: str, traffic_policy: str) -> str:
    return f"""\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {service}}}
spec:
  host: {service}
  trafficPolicy:
{traffic_policy}"""


# -- F: resilience -----------------------------------------------------------------------------------


def test_upstream_503_everywhere_retries_stay_within_the_budget(group: Group, registry: str) -> None:
    hosts = [{"name": f"bad{i}", "status": 503} for i in range(3)]
    ports = start_app(group, hosts)
    publish_direct(group, registry, "flaky", [f"127.0.0.1:{p}" for p in ports.values()])
    policy = vs("flaky", "    retries: {attempts: 5, retryOn: 5xx}\n")
    egress = consume(group, sidecar(group, registry, "consumer", policy), "flaky", 3)
    load = Load(egress, group.tmp / "client.ledger")
    clients, each = 20, 15
    load.run(clients, each)
    result = load.ledger_result(group.tmp, list(ports))
    sent = clients * each
    seen = sum(received(group.tmp, h) for h in ports)
    print(f"sent={sent} upstream saw={seen} ({seen / sent:.2f}x; without the budget up to 6x)")
    assert (result.sent, result.lost, result.misdelivered) == (sent, 0, 0)
    assert load.statuses == {503: sent}  # every request answered (the last try's 503): nothing hangs
    # retries in flight ≤ max(3, 20 % of the requests in flight): measured ~1.3x, against 6x without a budget
    assert sent < seen <= 1.5 * sent


def test_connect_refused_on_one_of_five_hosts_is_invisible(group: Group, registry: str) -> None:
    hosts = [{"name": f"ok{i}"} for i in range(4)]
    ports = start_app(group, hosts)
    addresses = [f"127.0.0.1:{p}" for p in ports.values()] + [f"127.0.0.1:{closed_port()}"]
    publish_direct(group, registry, "five", addresses)
    egress = consume(group, sidecar(group, registry, "consumer", vs("five", "    timeout: 10s\n")), "five", 5)
    load = Load(egress, group.tmp / "client.ledger")
    # Three clients: retries in flight never pass the retry budget's floor (3), so no retry is refused;
    # with more, a connect failure's retry may meet a spent budget and answer 503 (as in Envoy).
    load.run(3, 34)
    result = load.ledger_result(group.tmp, list(ports))
    assert (result.sent, result.ok, result.errors, result.lost) == (102, 102, 0, 0)
    assert (result.misdelivered, result.duplicated, result.unrecorded) == (0, 0, 0)  # nothing sent twice


def test_breaker_full_is_an_immediate_503_with_the_reason(group: Group, registry: str) -> None:
    ports = start_app(group, [{"name": "slow", "delay": 2.0}])
    policy = dr("slow", "    connectionPool: {http: {http2MaxRequests: 2}}\n")
    publish_direct(group, registry, "slow", [f"127.0.0.1:{ports['slow']}"])
    car = sidecar(group, registry, "consumer", policy)
    egress = consume(group, car, "slow", 1)
    load = Load(egress, group.tmp / "client.ledger")
    background = threading.Thread(target=load.run, args=(2, 1))
    background.start()
    wait_for(lambda: received(group.tmp, "slow") == 2, timeout=10, what="two requests in flight")
    started = time.monotonic()
    response = group.http.post(f"http://{egress}/", headers={"x-request-id": "third"})
    elapsed = time.monotonic() - started
    background.join(30)
    assert response.status_code == 503
    assert response.headers["x-plexus-error"] == "upstream_overflow; service=slow"
    assert elapsed < 1.5  # answered while the two in flight still wait for their 2 s answers
    assert load.statuses == {200: 2}
    assert received(group.tmp, "slow") == 2  # the refused request never reached the app
    (view,) = [c for c in clusters(group, car) if c["service"] == "slow"]
    assert view["circuit_breaker"]["overflows"]["requests"] == 1


def test_one_bad_host_of_ten_is_ejected_and_comes_back(group: Group, registry: str) -> None:
    hosts: list[dict[str, Any]] = [{"name": f"h{i}"} for i in range(10)]
    hosts[7] = {"name": "h7", "status": 500}
    ports = start_app(group, hosts)
    publish_direct(group, registry, "ten", [f"127.0.0.1:{p}" for p in ports.values()])
    policy = dr(
        "ten",
        "    outlierDetection: {consecutive5xxErrors: 5, interval: 0.5s, baseEjectionTime: 2s,"
        " maxEjectionPercent: 10}\n",
    )
    car = sidecar(group, registry, "consumer", policy)
    egress = consume(group, car, "ten", 10)
    load = Load(egress, group.tmp / "client.ledger")
    load.run(1, 80)  # round robin: 8 rounds, the bad host's 5th 500 ejects it
    assert received(group.tmp, "h7") == 5
    (view,) = [c for c in clusters(group, car) if c["service"] == "ten"]
    ejected = view["outlier_detection"]["ejected"]
    assert ejected == [f"127.0.0.1:{ports['h7']}"], view["outlier_detection"]
    load.run(1, 40)
    assert received(group.tmp, "h7") == 5  # no traffic while ejected (never more than 10 %: one host)
    time.sleep(3.0)  # its ejection time (2 s) and a sweep (0.5 s)
    load.run(1, 40)
    assert received(group.tmp, "h7") > 5  # back
    result = load.ledger_result(group.tmp, list(ports))
    assert (result.lost, result.misdelivered, result.duplicated) == (0, 0, 0)
    assert load.statuses[500] == received(group.tmp, "h7")  # no retries configured: each 500 seen once


def test_per_try_and_overall_timeouts(group: Group, registry: str) -> None:
    ports = start_app(group, [{"name": "slow", "delay": 3.0}, {"name": "fast"}])
    publish_direct(group, registry, "mixed", [f"127.0.0.1:{p}" for p in ports.values()])
    publish_direct(group, registry, "stuck", [f"127.0.0.1:{ports['slow']}"])
    policy = (
        vs("mixed", "    retries: {attempts: 2, perTryTimeout: 0.3s, retryOn: reset}\n")
        + "---\n"
        + vs("stuck", "    timeout: 0.5s\n    retries: {attempts: 3, perTryTimeout: 0.2s, retryOn: reset}\n")
    )
    car = sidecar(group, registry, "consumer", policy)
    mixed = consume(group, car, "mixed", 2)
    stuck = consume(group, car, "stuck", 1)
    load = Load(mixed, group.tmp / "client.ledger")
    load.run(2, 10)
    assert load.statuses == {200: 20}  # a slow try is abandoned after 0.3 s and retried on the fast host
    result = load.ledger_result(group.tmp, list(ports))
    assert (result.ok, result.lost, result.misdelivered) == (20, 0, 0)
    started = time.monotonic()
    response = group.http.post(f"http://{stuck}/", headers={"x-request-id": "stuck-1"})
    assert response.status_code == 504
    assert response.headers["x-plexus-error"] == "upstream_request_timeout; service=stuck"
    assert time.monotonic() - started < 2.5  # the route's 0.5 s, not the slow host's 3 s
    response = group.http.post(f"http://{stuck}/", headers={"x-request-id": "stuck-2"})
    assert response.status_code == 504


def test_three_hops_with_the_last_failing_keep_amplification_bounded(group: Group, registry: str) -> None:
    """client → sidecar A → sidecar B → app "mid" → sidecar B → sidecar C → app "last" (503 always); A and B
    both retry up to 3 times on 5xx. Without budgets the last app would see up to 16 tries per request."""
    retry = "    retries: {attempts: 3, retryOn: 5xx}\n"
    last_port = start_app(group, [{"name": "last", "status": 503}], "last")["last"]
    car_c = sidecar(group, registry, "c", None)
    provide(group, car_c, "last", last_port)
    car_b = sidecar(group, registry, "b", vs("last", retry))
    to_last = consume(group, car_b, "last", 1)
    mid_port = start_app(group, [{"name": "mid", "forward": to_last, "forward_host": "last"}], "mid")["mid"]
    provide(group, car_b, "mid", mid_port)
    car_a = sidecar(group, registry, "a", vs("mid", retry))
    egress = consume(group, car_a, "mid", 1)
    load = Load(egress, group.tmp / "client.ledger")
    clients, each = 20, 8
    load.run(clients, each)
    sent = clients * each
    at_mid, at_last = received(group.tmp, "mid"), received(group.tmp, "last")
    print(f"sent={sent} mid saw={at_mid} ({at_mid / sent:.2f}x) last saw={at_last} ({at_last / sent:.2f}x)")
    result = load.ledger_result(group.tmp, ["mid"])
    assert (result.sent, result.lost, result.misdelivered) == (sent, 0, 0)
    assert load.statuses == {503: sent}
    # Each hop's retries in flight ≤ max(3, 20 % of its requests in flight). Tries here are short and retries
    # wait out a back-off, so the floor of 3 lets more through than 20 %: measured about 1.4x at mid and 2.5x
    # at last, against 4x and 16x without budgets. A slow CPU phase keeps more requests in flight, so 20 % of
    # them allows more (3.4x at last once, in a loaded full run): the bounds stay far below the unbudgeted.
    assert sent < at_mid <= 1.6 * sent + 10 and at_mid < at_last <= 4.0 * sent, (at_mid, at_last)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connects to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

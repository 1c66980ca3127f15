"""TESTING.md §F for gRPC through real processes: grpcio client → consumer sidecar (policy from its
``--routes`` file) → provider sidecars → grpcio apps. One instance of three fails every call with
UNAVAILABLE: no client sees an error (retried elsewhere) and it is ejected after three in a row. Slow
upstreams: per-try and overall timeouts, retries held to the budget, the caller's deadline honoured. A
limited service answers an immediate UNAVAILABLE ``upstream_overflow`` when its breaker is full; a fault
answers without calling any app; a provider sidecar's rate limit answers RESOURCE_EXHAUSTED. The apps keep
a ledger of request ids: lost, misdelivered and duplicated must be 0.

Run as a script, this module is the provider app::

    python test_resilience_grpc.py NAME MODE LEDGER READY_FILE

``Echo`` answers the request with trailers ``x-served-by: NAME`` and ``x-caller`` (the x-plexus-caller it
got), or aborts UNAVAILABLE when MODE is ``unavailable``; ``Slow`` sleeps the request's seconds unless
cancelled; ``Stats`` answers JSON ``{"echo", "slow", "deadlines"}``. Every call's x-request-id goes to LEDGER.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from plexus.testing.grpc_serve import serve_until_signal
from plexus.testing.procs import ManagedProcess, wait_for

SERVICE = "plexus.test.Res"
OPTIONS = (("grpc.enable_http_proxy", 0),)


# --- the provider app --------------------------------------------------------------------------------------


def serve(name: str, mode: str, ledger_path: str, ready_file: str) -> None:
    lock = threading.Lock()
    counts = {"echo": 0, "slow": 0}
    deadlines: list[float | None] = []
    ledger = open(ledger_path, "a", buffering=1)  # noqa: SIM115 - lives with the app

    def enter(kind: str, context: grpc.ServicerContext) -> dict[str, str]:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with lock:
            counts[kind] += 1
            deadlines.append(context.time_remaining())
            ledger.write(metadata.get("x-request-id", "-") + "\n")
        return metadata

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = enter("echo", context)
        if mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{name} is failing")
        context.set_trailing_metadata(
            [("x-served-by", name), ("x-caller", metadata.get("x-plexus-caller", ""))]
        )
        return request

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        enter("slow", context)
        end = time.monotonic() + float(request)
        while time.monotonic() < end and context.is_active():
            time.sleep(0.005)
        return name.encode()

    def stats(request: bytes, context: grpc.ServicerContext) -> bytes:
        with lock:
            return json.dumps({**counts, "deadlines": deadlines}).encode()

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Stats": grpc.unary_unary_rpc_method_handler(stats),
    }
    serve_until_signal(SERVICE, handlers, ready_file, workers=128)


if __name__ == "__main__":
    serve(*sys.argv[1:5])
    sys.exit(0)

from .grpc_apps import Group, _http, consume, counter, prometheus, start_registry, start_sidecars, wait_seen  # noqa: E402

CALL_TIMEOUT = 10.0
SLACK = 0.05  # grpc-timeout is rounded up to its unit and read on the app's own clock
ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: g-res}
spec:
  hosts: [g-res]
  http:
  - name: slow
    match: [{headers: {":rpc-method": {exact: Slow}}}]
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 0.3s, retryOn: "gateway-error"}
    route: [{destination: {host: g-res}}]
  - name: fault
    match: [{headers: {x-fault: {exact: abort}}}]
    fault: {abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: {value: 100}}}
    route: [{destination: {host: g-res}}]
  - name: rest
    retries: {attempts: 2, retryOn: "unavailable,connect-failure,refused-stream"}
    route: [{destination: {host: g-res}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: g-res}
spec:
  host: g-res
  trafficPolicy:
    outlierDetection:
      {consecutive5xxErrors: 3, interval: 0.5s, baseEjectionTime: 120s, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: g-lim}
spec:
  host: g-lim
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 2}}
"""
PROVIDER_ROUTES = """\
apiVersion: plexus.io/v1
kind: RateLimitPolicy
metadata: {name: g-rl}
spec:
  host: g-rl
  local:
  - {name: all, tokens: 3, fillPerSecond: 0.01}
"""


@dataclass
class Mesh:
    group: Group
    consumer: ManagedProcess
    egress: dict[str, str]  # service → the consumer's per-service egress address
    ports: dict[str, int]  # app name → its port (Stats is asked directly)
    ledgers: dict[str, Path]


def _start_app(group: Group, name: str, mode: str, ledger: Path, tmp: Path) -> int:
    ready = tmp / f"{name}.ready.json"
    proc = group.add(
        ManagedProcess(
            [sys.executable, str(Path(__file__)), name, mode, str(ledger), str(ready)], ready_file=ready
        )
    )
    return int(proc.address("listen").rpartition(":")[2])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("res-grpc")
    (tmp / "routes.yaml").write_text(ROUTES)
    (tmp / "provider.yaml").write_text(PROVIDER_ROUTES)
    group = Group()
    try:
        registry = start_registry(group).address("listen")
        providers = start_sidecars(group, registry, 3, "--routes", str(tmp / "provider.yaml"))
        consumer = start_sidecars(
            group, registry, 1, "--routes", str(tmp / "routes.yaml"), "--workload", "checkout"
        )[0]
        ports: dict[str, int] = {}
        ledgers: dict[str, Path] = {}
        published: dict[str, set[str]] = {"g-res": set(), "g-lim": set(), "g-rl": set()}
        for sidecar, name, mode in zip(
            providers, ("good0", "good1", "bad"), ("ok", "ok", "unavailable"), strict=True
        ):
            ledgers[name] = tmp / f"{name}.ledger"
            ports[name] = _start_app(group, name, mode, ledgers[name], tmp)
            services = ["g-res"] + (["g-lim", "g-rl"] if name == "good0" else [])
            for service in services:
                status, reply = _http(
                    sidecar,
                    "api",
                    "PUT",
                    f"/v1/providers/{service}",
                    {"port": ports[name], "protocol": "grpc"},
                )
                assert status == 200, reply
                published[service].add(str(reply["address"]))
        egress = {service: consume(consumer, service) for service in published}
        for service, addresses in published.items():
            wait_seen(consumer, service, addresses)
        yield Mesh(group, consumer, egress, ports, ledgers)
    finally:
        group.stop_all()


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=OPTIONS)


def call(
    ch: grpc.Channel, method: str, rid: str, body: bytes, timeout: float = CALL_TIMEOUT, **md: str
) -> tuple[grpc.StatusCode, bytes, dict[str, Any]]:
    metadata = [("x-request-id", rid), *md.items()]
    try:
        reply, c = ch.unary_unary(f"/{SERVICE}/{method}").with_call(body, timeout=timeout, metadata=metadata)
        return c.code(), reply, dict(c.trailing_metadata() or ())
    except grpc.RpcError as exc:
        return exc.code(), b"", dict(exc.trailing_metadata() or ())


def stats(mesh: Mesh, name: str) -> dict[str, Any]:
    with channel(f"127.0.0.1:{mesh.ports[name]}") as ch:
        reply: bytes = ch.unary_unary(f"/{SERVICE}/Stats")(b"", timeout=5)
    result: dict[str, Any] = json.loads(reply)
    return result


def ledger(mesh: Mesh, prefix: str) -> dict[str, Counter[str]]:
    return {
        name: Counter(r for r in path.read_text().split() if r.startswith(prefix))
        if path.exists()
        else Counter()
        for name, path in mesh.ledgers.items()
    }


def clusters(mesh: Mesh, service: str) -> dict[str, Any]:
    status, body = _http(mesh.consumer, "admin", "GET", "/clusters")
    assert status == 200, body
    found: list[dict[str, Any]] = body if isinstance(body, list) else body["clusters"]
    return next(c for c in found if c["service"] == service)


# Ordered: the bad instance is ejected first (120 s), so the timing tests below see only good ones.


def test_bad_instance_is_ejected_and_no_call_fails(mesh: Mesh) -> None:
    results = {}
    with channel(mesh.egress["g-res"]) as ch:
        for i in range(60):
            rid = f"ej-{i}"
            results[rid] = call(ch, "Echo", rid, rid.encode())
    seen = ledger(mesh, "ej-")
    lost = sum(1 for r in results.values() if r is None)
    misdelivered = sum(1 for rid, r in results.items() if r[0] is grpc.StatusCode.OK and r[1] != rid.encode())
    duplicated = sum(n - 1 for n in (seen["good0"] + seen["good1"]).values() if n > 1)
    print(f"ledger: sent={len(results)} lost={lost} misdelivered={misdelivered} duplicated={duplicated}")
    assert lost == misdelivered == duplicated == 0
    assert all(r[0] is grpc.StatusCode.OK for r in results.values()), Counter(r[0] for r in results.values())
    assert sum((seen["good0"] + seen["good1"]).values()) == 60  # each call reached a good app once
    assert sum(seen["bad"].values()) == 3  # three failures in a row, then ejected: no call went there since
    ejected = [e for e in clusters(mesh, "g-res")["endpoints"] if e["ejected"]]
    assert len(ejected) == 1
    assert {r[2]["x-caller"] for r in results.values()} == {"checkout"}  # the consumer named its workload


def test_retries_on_slow_upstreams_stay_within_the_budget(mesh: Mesh) -> None:
    """Every try outlives its 0.3 s per-try timeout: retries (3 per call allowed) are held to 20 % of the
    calls in flight, so the apps see about 1.2x the calls, not 4x; every call ends by the rule's 2 s."""
    before = sum(stats(mesh, n)["slow"] for n in ("good0", "good1"))
    calls = 30
    with channel(mesh.egress["g-res"]) as ch, ThreadPoolExecutor(calls) as pool:
        futures = [pool.submit(call, ch, "Slow", f"sl-{i}", b"5") for i in range(calls)]
        results = [f.result(timeout=30) for f in futures]
    assert all(r[0] is grpc.StatusCode.DEADLINE_EXCEEDED for r in results), Counter(r[0] for r in results)
    reasons = Counter(r[2].get("x-plexus-error", "").split(";")[0] for r in results)
    # The sidecar's per-try timeout, or the app's own DEADLINE_EXCEEDED for the try's rewritten grpc-timeout
    # when it came first (no x-plexus-error: the app's answer, passed on).
    assert set(reasons) <= {"upstream_per_try_timeout", "upstream_request_timeout", ""}, reasons
    assert reasons["upstream_per_try_timeout"] > 0
    tries = sum(stats(mesh, n)["slow"] for n in ("good0", "good1")) - before
    print(f"slow calls={calls} tries at the apps={tries} ({tries / calls:.2f}x)")
    assert calls <= tries <= calls + 6 * 3  # retries in flight at most max(3, 20 % of 30) = 6, 3 each
    text = prometheus(mesh.consumer)
    assert counter(text, "plexus_local_replies_total", reason="retry_budget_exhausted") > 0


def test_caller_deadline_is_shorter_than_the_rule(mesh: Mesh) -> None:
    with channel(mesh.egress["g-res"]) as ch:
        started = time.monotonic()
        code, _, _ = call(ch, "Slow", "dl-1", b"5", timeout=0.2)
        assert time.monotonic() - started < 2.0
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    deadlines = [d for n in ("good0", "good1") for d in stats(mesh, n)["deadlines"] if d is not None]
    assert min(deadlines) <= 0.2 + SLACK  # the app was told the caller's shorter deadline


def test_fault_abort_calls_no_app(mesh: Mesh) -> None:
    with channel(mesh.egress["g-res"]) as ch:
        code, _, trailers = call(ch, "Echo", "fa-1", b"x", CALL_TIMEOUT, **{"x-fault": "abort"})
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailers["x-plexus-error"].startswith("fault_injected")
    assert not any(ledger(mesh, "fa-").values())


def test_breaker_full_answers_at_once_with_the_reason(mesh: Mesh) -> None:
    with channel(mesh.egress["g-lim"]) as ch, ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(call, ch, "Slow", f"bk-{i}", b"1.5") for i in range(2)]
        wait_for(
            lambda: sum(ledger(mesh, "bk-")["good0"].values()) == 2, timeout=10, what="two calls in flight"
        )
        started = time.monotonic()
        code, _, trailers = call(ch, "Echo", "bk-over", b"x")
        refused_in = time.monotonic() - started
        assert all(f.result(timeout=10)[0] is grpc.StatusCode.OK for f in slow)
    assert code is grpc.StatusCode.UNAVAILABLE
    assert trailers["x-plexus-error"] == "upstream_overflow; service=g-lim"
    assert refused_in < 1.0  # not queued behind the slow calls
    assert "bk-over" not in ledger(mesh, "bk-")["good0"]


def test_provider_rate_limit_is_resource_exhausted(mesh: Mesh) -> None:
    with channel(mesh.egress["g-rl"]) as ch:
        codes = [call(ch, "Echo", f"rl-{i}", b"x") for i in range(5)]
    assert [c[0] for c in codes] == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert codes[3][2]["x-plexus-error"].startswith("rate_limited")
    assert sum(ledger(mesh, "rl-")["good0"].values()) == 3

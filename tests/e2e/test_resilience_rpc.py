"""TESTING.md §F for SOFA Bolt through real processes: Bolt frames → consumer sidecar (policy from its
``--routes`` file) → provider sidecars → Bolt apps. One app of three answers every call with a server
error: with retryOn ``5xx`` given explicitly no caller sees it, and it is ejected after three in a row.
Slow apps: per-try and overall timeouts answered TIMEOUT, retries held to the budget, Bolt's own timeout
field honoured. A limited service answers SERVER_THREADPOOL_BUSY ``upstream_overflow`` at once. The apps keep
a ledger of request tokens: lost, misdelivered and duplicated must be 0.

Run as a script, this module is the provider app::

    python test_resilience_rpc.py NAME MODE LEDGER READY_FILE

Method ``echo`` answers ``@NAME@`` + the request's bytes after its fixed header (so the caller's token comes
back), or SERVER_EXCEPTION when MODE is ``error``; method ``slow`` answers after 5 s. Every request's token
goes to LEDGER (``echo <token>`` / ``slow <token>``).
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, cast

import pytest

from plexus.codec import bolt
from plexus.codec.rpc import FrameKind, RpcFrame
from plexus.testing.procs import ManagedProcess, wait_for, write_ready_file

SLOW_SECONDS = 5.0


# --- the provider app --------------------------------------------------------------------------------------


class _App(asyncio.Protocol):
    def __init__(self, name: str, mode: str, ledger: TextIO) -> None:
        self.name = name.encode()
        self.mode = mode
        self.ledger = ledger
        self.decoder = bolt.BoltCodec().decoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        for frame in self.decoder.feed(data):
            if frame.kind is FrameKind.HEARTBEAT and self.transport is not None:
                self.transport.write(bolt.heartbeat_reply(frame))
            if frame.kind is not FrameKind.REQUEST:
                continue
            method = frame.headers.get(bolt.HEADER_METHOD, "")
            found = re.search(rb"<tok:[^>]*>", frame.raw)
            self.ledger.write(f"{method} {found.group(0).decode() if found else '-'}\n")
            if method == "slow":
                reply = bolt.encode_response(
                    frame.request_id, bolt.BoltStatus.SUCCESS, b"@" + self.name + b"@slow"
                )
                loop.call_later(SLOW_SECONDS, self._write, reply)
            elif self.mode == "error":
                self._write(bolt.error_reply(frame, bolt.BoltStatus.SERVER_EXCEPTION, "the app threw"))
            else:
                self._write(
                    bolt.encode_response(
                        frame.request_id, bolt.BoltStatus.SUCCESS, b"@" + self.name + b"@" + frame.raw[22:]
                    )
                )

    def _write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)


async def _serve(name: str, mode: str, ledger_path: str, ready_file: str) -> None:
    loop = asyncio.get_running_loop()
    ledger = open(ledger_path, "a", buffering=1)  # noqa: SIM115 - lives with the app
    server = await loop.create_server(lambda: _App(name, mode, ledger), "127.0.0.1", 0)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_ready_file(ready_file, {"listen": f"127.0.0.1:{server.sockets[0].getsockname()[1]}"})
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(_serve(*sys.argv[1:5]))
    sys.exit(0)

from .grpc_apps import Group, _http, consume, counter, prometheus, start_registry, start_sidecars, wait_seen  # noqa: E402

ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-res}
spec:
  hosts: [b-res]
  http:
  - name: slow
    match: [{headers: {":rpc-method": {exact: slow}}}]
    timeout: 1s
    retries: {attempts: 2, perTryTimeout: 0.3s, retryOn: "reset"}
    route: [{destination: {host: b-res}}]
  - name: rest
    retries: {attempts: 2, retryOn: "5xx"}
    route: [{destination: {host: b-res}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b-res}
spec:
  host: b-res
  trafficPolicy:
    outlierDetection:
      {consecutive5xxErrors: 3, interval: 0.5s, baseEjectionTime: 120s, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b-lim}
spec:
  host: b-lim
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 2}}
"""


@dataclass
class Mesh:
    group: Group
    consumer: ManagedProcess
    egress: dict[str, str]
    ledgers: dict[str, Path]


def token(request_id: int) -> bytes:
    return b"<tok:%d>" % request_id


def frame_for(request_id: int, method: str, timeout_ms: int = 0) -> bytes:
    headers = {bolt.HEADER_SERVICE: "com.acme.Echo:1.0", bolt.HEADER_METHOD: method}
    return bolt.encode_request(request_id, headers, token(request_id), timeout_ms=timeout_ms)


def exchange(address: str, frames: list[bytes], count: int, timeout: float = 15.0) -> list[RpcFrame]:
    host, _, port = address.rpartition(":")
    decoder = bolt.BoltCodec().decoder()
    got: list[RpcFrame] = []
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"".join(frames))
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(got)} of {count} responses within {timeout}s"
            sock.settimeout(left)
            data = sock.recv(65536)
            assert data, f"closed after {len(got)} of {count} responses"
            got += decoder.feed(data)
    return got


def ledger(mesh: Mesh, method: str) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for name, path in mesh.ledgers.items():
        lines = path.read_text().splitlines() if path.exists() else []
        out[name] = Counter(tok for m, _, tok in (line.partition(" ") for line in lines) if m == method)
    return out


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("res-rpc")
    (tmp / "routes.yaml").write_text(ROUTES)
    group = Group()
    try:
        registry = start_registry(group).address("listen")
        providers = start_sidecars(group, registry, 3)
        consumer = start_sidecars(group, registry, 1, "--routes", str(tmp / "routes.yaml"))[0]
        ledgers: dict[str, Path] = {}
        published: dict[str, set[str]] = {"b-res": set(), "b-lim": set()}
        for sidecar, name, mode in zip(
            providers, ("good0", "good1", "bad"), ("echo", "echo", "error"), strict=True
        ):
            ledgers[name] = tmp / f"{name}.ledger"
            ready = tmp / f"{name}.ready.json"
            argv = [sys.executable, str(Path(__file__)), name, mode, str(ledgers[name]), str(ready)]
            app = group.add(ManagedProcess(argv, ready_file=ready))
            port = int(app.address("listen").rpartition(":")[2])
            for service in ["b-res"] + (["b-lim"] if name == "good0" else []):
                status, reply = _http(
                    sidecar, "api", "PUT", f"/v1/providers/{service}", {"port": port, "protocol": "bolt"}
                )
                assert status == 200, reply
                published[service].add(str(reply["address"]))
        egress = {service: consume(consumer, service) for service in published}
        for service, addresses in published.items():
            wait_seen(consumer, service, addresses)
        yield Mesh(group, consumer, egress, ledgers)
    finally:
        group.stop_all()


# Ordered: the bad app is ejected first (120 s), so the timing tests below see only good ones.


def test_bad_app_is_ejected_and_its_errors_retried(mesh: Mesh) -> None:
    answers: list[RpcFrame] = []
    for request_id in range(1, 61):  # one at a time: each result counts before the next pick
        answers += exchange(mesh.egress["b-res"], [frame_for(request_id, "echo")], 1)
    misdelivered = sum(1 for f in answers if token(f.request_id) not in f.raw)
    seen = ledger(mesh, "echo")
    good = seen["good0"] + seen["good1"]
    duplicated = sum(n - 1 for n in good.values() if n > 1)
    lost = 60 - len({f.request_id for f in answers})
    print(f"ledger: sent=60 lost={lost} misdelivered={misdelivered} duplicated={duplicated}")
    assert lost == misdelivered == duplicated == 0
    assert all(f.status == bolt.BoltStatus.SUCCESS for f in answers), Counter(f.status for f in answers)
    assert sum(good.values()) == 60
    assert sum(seen["bad"].values()) == 3  # three errors in a row, then ejected
    status, views = _http(mesh.consumer, "admin", "GET", "/clusters")
    assert status == 200
    cluster = next(c for c in views if c["service"] == "b-res")
    assert sum(1 for e in cluster["endpoints"] if e["ejected"]) == 1


def test_per_try_timeouts_and_retries_within_the_budget(mesh: Mesh) -> None:
    """Twenty slow calls in flight on one connection: each try times out at 0.3 s, retries (2 per call
    allowed, retryOn reset) are held to max(3, 20 % of 20) at a time, every call is answered TIMEOUT."""
    calls = 20
    started = time.monotonic()
    answers = exchange(mesh.egress["b-res"], [frame_for(1000 + i, "slow") for i in range(calls)], calls)
    assert time.monotonic() - started < 5.0  # the rule's 1 s, not the app's 5 s
    assert sorted(f.request_id for f in answers) == [1000 + i for i in range(calls)]
    assert all(f.status == bolt.BoltStatus.TIMEOUT for f in answers), Counter(f.status for f in answers)
    assert any(b"upstream_per_try_timeout" in f.raw for f in answers)
    tries = sum(sum(c.values()) for c in ledger(mesh, "slow").values())
    print(f"slow calls={calls} tries at the apps={tries} ({tries / calls:.2f}x)")
    assert calls <= tries <= calls + 4 * 2
    assert (
        counter(prometheus(mesh.consumer), "plexus_local_replies_total", reason="retry_budget_exhausted") > 0
    )


def test_bolt_timeout_field_bounds_the_rule(mesh: Mesh) -> None:
    """The caller's 150 ms (Bolt's timeout field) ends the call before the rule's per-try 0.3 s: one try,
    answered TIMEOUT for the request's deadline (with the rule's own, a try would time out and retry)."""
    (answer,) = exchange(mesh.egress["b-res"], [frame_for(2000, "slow", timeout_ms=150)], 1)
    assert answer.status == bolt.BoltStatus.TIMEOUT
    assert b"upstream_request_timeout" in answer.raw
    assert sum(c["<tok:2000>"] for c in ledger(mesh, "slow").values()) == 1


def test_breaker_full_answers_busy_at_once(mesh: Mesh) -> None:
    address = mesh.egress["b-lim"]
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(frame_for(3000, "slow", timeout_ms=10_000) + frame_for(3001, "slow", timeout_ms=10_000))
        wait_for(
            lambda: sum(ledger(mesh, "slow")["good0"][f"<tok:{i}>"] for i in (3000, 3001)) == 2,
            timeout=10,
            what="two in flight",
        )
        started = time.monotonic()
        (answer,) = exchange(address, [frame_for(3002, "echo")], 1)
        refused_in = time.monotonic() - started
    assert answer.status == bolt.BoltStatus.SERVER_THREADPOOL_BUSY
    assert b"upstream_overflow" in answer.raw
    assert refused_in < 2.0  # at once, not after the slow calls (5 s)
    assert "<tok:3002>" not in ledger(mesh, "echo")["good0"]

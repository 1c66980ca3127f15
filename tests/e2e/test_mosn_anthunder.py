"""anthunder, unchanged, in its mesh mode, through two Plexus sidecars with ``--mosn-compat``.

anthunder hard-codes MOSN's addresses (``MeshClient._server`` = 127.0.0.1:13330, ``_BaseClient.
mesh_service_address`` = 127.0.0.1:12220), so two sidecars cannot share one loopback. The test makes two
network namespaces of its own, joined by a veth pair (10.213.0.1 ↔ 10.213.0.2; nothing in the host's own
namespace is touched), and runs in each a sidecar on MOSN's fixed ports beside one anthunder app:

    ns A: registry (10.213.0.1), sidecar A, anthunder Client/AioClient  ── calls 127.0.0.1:12220
    ns B: sidecar B (ingress 10.213.0.2), anthunder AioListener on 127.0.0.1:12200, published via 13330

A call goes consumer → sidecar A (Bolt egress, routed by sofa_head_target_service) → sidecar B (Bolt ingress,
multiplexed to the app) → provider, and back. Needs root (``ip netns``); skipped otherwise, saying why.

Run as a script, this module is one of the two apps: ``provider READY_FILE`` or ``consumer RESULT_FILE``.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plexus.testing.procs import ManagedProcess, wait_for

SERVICE = "com.acme.anthunder.Echo:1.0"
PROVIDER_PORT = 12200  # SOFA's default; the namespace is ours, so no clash
SUBNET = "10.213.0"
CONCURRENT = 50
STACKS_AFTER_S = 45


# --- the apps (run inside a namespace) ------------------------------------------------------------------


def run_provider(ready_file: str) -> None:
    from anthunder import AioListener, BaseService

    class Echo(BaseService):  # type: ignore[misc]
        def echo(self, body: bytes) -> bytes:
            return b"echo:" + body

    listener = AioListener(("127.0.0.1", PROVIDER_PORT), "anthunder-provider")
    listener.handler.register_interface(SERVICE, Echo)
    listener.run_threading()
    wait_for(lambda: _listening(PROVIDER_PORT), timeout=10, what="the anthunder listener")
    listener.publish()  # POST 127.0.0.1:13330/services/publish
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _write(ready_file, {"listen": f"127.0.0.1:{PROVIDER_PORT}"})
    stop.wait()
    listener.unpublish()
    listener.shutdown()


def run_consumer(result_file: str) -> None:
    from anthunder import AioClient, Client
    from mytracer import SpanContext

    client = Client("anthunder-consumer")  # POST 127.0.0.1:13330/configs/application
    print("consumer: registered", flush=True)  # (progress lines: where a stuck run stopped)
    client.subscribe(SERVICE)  # POST /services/subscribe
    print("consumer: subscribed", flush=True)
    result: dict[str, Any] = {"sync": [], "async": [], "errors": []}
    deadline = time.monotonic() + 20
    while True:  # until the registry's push of the provider reached sidecar A
        try:
            client.invoke_sync(SERVICE, "echo", b"warmup", spanctx=SpanContext(), timeout_ms=2000)
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                result["errors"].append(f"warm-up: {exc!r}")
                _write(result_file, result)
                return
            time.sleep(0.2)
    for i in range(10):
        body = b"sync-%d" % i
        result["sync"].append(
            client.invoke_sync(SERVICE, "echo", body, spanctx=SpanContext(), timeout_ms=3000).decode()
        )
    print("consumer: sync calls answered", flush=True)
    time.sleep(1.5)  # idle: the sidecars' keepalives run on the upstream connections
    aio = AioClient("anthunder-consumer")
    futures = [
        aio.invoke_async(SERVICE, "echo", b"async-%d" % i, spanctx=SpanContext(), timeout_ms=5000)
        for i in range(CONCURRENT)
    ]
    for future in futures:
        try:
            result["async"].append(future.result(10).content.decode())
        except Exception as exc:
            result["errors"].append(repr(exc))
    client.unsubscribe(SERVICE)
    _write(result_file, result)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _write(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(data))
    os.replace(tmp, path)


# --- the test -------------------------------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Namespaces:
    """Two namespaces joined by a veth pair, each with its loopback up; removed on close."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.a, self.b = f"plx-a-{tag}", f"plx-b-{tag}"
        self.created: list[str] = []
        veth_a, veth_b = f"plxa{tag}", f"plxb{tag}"
        for ns in (self.a, self.b):
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", veth_a, "netns", self.a, "type", "veth", "peer", "name", veth_b, "netns", self.b)
        for ns, dev, host in ((self.a, veth_a, 1), (self.b, veth_b, 2)):
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{host}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")

    def close(self) -> None:
        for ns in reversed(self.created):  # deleting a namespace deletes its end of the veth pair
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=10)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces (anthunder hard-codes 127.0.0.1:13330/12220)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip for network namespaces"
    try:
        import anthunder  # noqa: F401
    except ImportError:
        return "anthunder is not installed (pip install anthunder)"
    return None


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        spaces = Namespaces()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode(errors='replace').strip()}")
    try:
        yield spaces
    finally:
        spaces.close()


def _in(ns: str, argv: list[str], **kw: Any) -> ManagedProcess:
    return ManagedProcess(["ip", "netns", "exec", ns, *argv], **kw)


def _ready_path(tmp: Path, name: str) -> Path:
    return tmp / f"{name}.json"


def _plexus(
    ns: str, tmp: Path, name: str, args: list[str], env: dict[str, str] | None = None
) -> ManagedProcess:
    ready = _ready_path(tmp, name)
    argv = [sys.executable, "-m", "plexus", *args, "--ready-file", str(ready)]
    return _in(ns, argv, env=env, ready_file=ready)


def _metrics(ns: str, admin: str) -> str:
    code = f"import urllib.request; print(urllib.request.urlopen('http://{admin}/stats/prometheus').read().decode())"
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, timeout=10, check=True
    )
    return out.stdout.decode()


def test_anthunder_consumer_to_anthunder_provider_through_two_sidecars(netns: Namespaces) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="plexus-anthunder-"))
    started: list[ManagedProcess] = []
    mosn_env = {"PLEXUS_MOSN_COMPAT": "1", "PLEXUS_RPC_HEARTBEAT_INTERVAL": "0.3"}
    try:
        registry = _plexus(
            netns.a,
            tmp,
            "registry",
            ["registry", "--listen", f"{SUBNET}.1:0", "--admin", "127.0.0.1:0", "--warmup", "0"],
        )
        started.append(registry)
        registry_address = registry.address("listen")
        common = ["--api", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--health-interval", "0.2"]
        common += ["--drain-time", "0.2", "--egress", "127.0.0.1:0", "--registry", registry_address]
        b = _plexus(netns.b, tmp, "sidecar-b", ["sidecar", "--ingress", f"{SUBNET}.2:0", *common], mosn_env)
        started.append(b)
        a = _plexus(netns.a, tmp, "sidecar-a", ["sidecar", "--ingress", "127.0.0.1:0", *common], mosn_env)
        started.append(a)
        assert a.address("mosn_api") == "127.0.0.1:13330" and a.address("bolt_egress") == "127.0.0.1:12220"
        me = str(Path(__file__))
        provider_ready = _ready_path(tmp, "provider")
        provider = _in(
            netns.b, [sys.executable, me, "provider", str(provider_ready)], ready_file=provider_ready
        )
        started.append(provider)
        result_file = _ready_path(tmp, "consumer")
        try:
            consumer = _in(
                netns.a,
                [sys.executable, me, "consumer", str(result_file)],
                ready_file=result_file,
                ready_timeout=60,
            )
        except TimeoutError as exc:  # (the sidecars' logs too: which side stopped answering)
            raise TimeoutError(f"{exc}\nsidecar A:\n{a.log()}\nsidecar B:\n{b.log()}") from None
        started.append(consumer)
        result = consumer.info
        assert result["errors"] == [], consumer.log()
        assert result["sync"] == [f"echo:sync-{i}" for i in range(10)]
        assert sorted(result["async"]) == sorted(f"echo:async-{i}" for i in range(CONCURRENT))
        text_a = _metrics(netns.a, a.address("admin"))
        text_b = _metrics(netns.b, b.address("admin"))
        calls = 1 + 10 + CONCURRENT
        assert f'plexus_requests_total{{service="{SERVICE}",direction="egress",code_class="2xx"}}' in text_a
        assert f'plexus_requests_total{{service="{SERVICE}",direction="ingress",code_class="2xx"}}' in text_b
        assert (
            _count(
                text_b, f'plexus_requests_total{{service="{SERVICE}",direction="ingress",code_class="2xx"}}'
            )
            >= calls
        )
        # Idle upstream connections were probed and the probes answered (by sidecar B, by anthunder).
        assert (
            "plexus_rpc_upstream_heartbeats_total{" in text_a
            and "plexus_rpc_upstream_heartbeats_total{" in text_b
        )
        assert "plexus_rpc_upstream_heartbeat_timeouts_total{" not in text_a + text_b
    finally:
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _count(text: str, prefix: str) -> int:
    for line in text.splitlines():
        if line.startswith(prefix):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


if __name__ == "__main__":
    # A consumer stuck past this (its ready timeout is 60 s) prints every thread's stack into its log, which
    # the test's failure shows: where anthunder or a sidecar stopped answering.
    faulthandler.dump_traceback_later(STACKS_AFTER_S, exit=False)
    faulthandler.enable()  # (and a crash in a C extension prints its stack too, rather than nothing)
    {"provider": run_provider, "consumer": run_consumer}[sys.argv[1]](sys.argv[2])

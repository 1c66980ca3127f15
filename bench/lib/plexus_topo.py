"""Plexus on the path: one sidecar (consumer side; nginx is published directly) or two (consumer → provider).

- plexus1: registry; nginx published as a direct instance of service ``bench`` (a publish stream held by
  the harness, as an SDK app without a sidecar would); one consumer sidecar, whose local API
  (``PUT /v1/consumers/bench``) gives the listener wrk calls.
- plexus2: registry; a provider sidecar in front of nginx (``PUT /v1/providers/bench``), a consumer sidecar as
  above. wrk → consumer → provider → nginx.

The sidecars run on the proxy CPUs; the registry (control plane, idle during the runs) on the load CPUs.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from lib import environ
from lib.procstat import pinned_argv
from lib.topology import Endpoint, Hop, Workspace
from plexus.testing.procs import ManagedProcess, wait_for

T = TypeVar("T")

SERVICE = "bench"
START_TIMEOUT = 30.0
ROUTE_TIMEOUT = 20.0  # publish → registry → push → consumer endpoints; seconds at most on a busy machine


def available() -> tuple[bool, str]:
    """Whether ``python -m plexus sidecar`` works yet (the sidecar is built in parallel with this harness)."""
    done = subprocess.run(
        [sys.executable, "-m", "plexus", "sidecar", "--help"], capture_output=True, text=True, timeout=60
    )
    ok = done.returncode == 0 and "--app-address" in done.stdout
    return ok, (done.stdout + done.stderr)[-400:]


def _http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _plexus(ws: Workspace, name: str, args: list[str], cpus: frozenset[int] | None) -> ManagedProcess:
    root = ws.dir(name)
    ready = root / "ready.json"
    ready.unlink(missing_ok=True)
    argv = pinned_argv([sys.executable, "-m", "plexus", *args, "--ready-file", str(ready)], cpus)
    proc = ManagedProcess(argv, log_path=root / "out.log")

    def started() -> dict[str, Any] | None:
        if not proc.alive():  # fail at once, with the log, rather than wait out the timeout
            raise RuntimeError(f"plexus {name} exited with {proc.proc.returncode}; log:\n{proc.log()}")
        if not ready.exists():
            return None
        info: dict[str, Any] = json.loads(ready.read_text())
        return info

    try:
        proc.info = _wait_or_raise(started, START_TIMEOUT, f"plexus {name} ready file")
    except BaseException:
        proc.stop()
        raise
    return proc


def _wait_or_raise(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Like wait_for, but an exception from ``predicate`` ends the wait at once (dead stays dead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def _process(
    ws: Workspace, name: str, args: list[str], cpus: frozenset[int] | None
) -> Iterator[ManagedProcess]:
    proc = _plexus(ws, name, args, cpus)
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def _published(registry: str, service: str, address: str) -> Iterator[None]:
    """Publish nginx as a direct instance of ``service``, the way an SDK app without a sidecar does.

    The lease lives as long as the client's publish stream, so the client stays open for the whole run.
    """
    from plexus.clients.registry import RegistryClient
    from plexus.discovery.model import Instance

    client = RegistryClient(registry, publisher_id=f"bench-{uuid.uuid4().hex[:8]}")
    client.start()
    try:
        client.set_published([Instance(service=service, address=address, protocol="http")])
        wait_for(lambda: client.connected, timeout=START_TIMEOUT, what=f"publish stream to {registry}")
        if client.publish_errors():
            raise RuntimeError(f"registry refused the bench instance: {client.publish_errors()}")
        yield
    finally:
        client.close()


def _sidecar_args(registry: str, app_port: int) -> list[str]:
    return [
        "sidecar", "--registry", registry, "--app-address", f"127.0.0.1:{app_port}",
        "--ingress", "127.0.0.1:0", "--api", "127.0.0.1:0",
        "--admin", "127.0.0.1:0", "--egress", "127.0.0.1:0",
    ]  # fmt: skip


def _consume(api: str) -> str:
    status, body = _http("PUT", f"http://{api}/v1/consumers/{SERVICE}", {})
    if status // 100 != 2:
        raise RuntimeError(f"PUT /v1/consumers/{SERVICE} on {api} answered {status}: {body[:300]!r}")
    return str(json.loads(body)["address"])


def _wait_routable(address: str) -> None:
    last: list[tuple[int, bytes]] = []

    def through() -> bool:
        status, body = _http("GET", f"http://{address}/", timeout=2.0)
        last[:] = [(status, body[:300])]
        return status == 200

    try:
        wait_for(through, timeout=ROUTE_TIMEOUT, interval=0.1, what=f"a 200 through {address}")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last answer: {last}") from None


@contextlib.contextmanager
def topology(
    ws: Workspace,
    mode: str,
    upstream_port: int,
    sidecars: int,
    hop_env: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[Endpoint]:
    """``sidecars`` = 1: consumer only; 2: consumer → provider → nginx. ``hop_env``: more environment for
    the ``"consumer"`` or ``"provider"`` sidecar while it starts (such as its own access log)."""
    load, proxy = ws.placement.load, ws.placement.proxy
    hop_env = hop_env or {}
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(
            _process(
                ws,
                f"{mode}-registry",
                ["registry", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
                load,
            )
        )
        reg_addr = registry.address("listen")
        hops: list[tuple[str, ManagedProcess]] = []
        if sidecars == 1:
            stack.enter_context(_published(reg_addr, SERVICE, f"127.0.0.1:{upstream_port}"))
        else:
            with environ.set_while(hop_env.get("provider", {})):
                provider = stack.enter_context(
                    _process(ws, f"{mode}-provider", _sidecar_args(reg_addr, upstream_port), proxy)
                )
            status, body = _http(
                "PUT",
                f"http://{provider.address('api')}/v1/providers/{SERVICE}",
                {"port": upstream_port, "protocol": "http"},
            )
            if status // 100 != 2:
                raise RuntimeError(f"PUT /v1/providers/{SERVICE} answered {status}: {body[:300]!r}")
            hops.append(("provider", provider))
        # The consumer's app address is unused (nothing calls into it); nginx's port keeps the flag valid.
        with environ.set_while(hop_env.get("consumer", {})):
            consumer = stack.enter_context(
                _process(ws, f"{mode}-consumer", _sidecar_args(reg_addr, upstream_port), proxy)
            )
        hops.insert(0, ("consumer", consumer))
        address = _consume(consumer.address("api"))
        _wait_routable(address)
        endpoint = Endpoint(mode=mode, url=f"http://{address}/")
        for name, proc in hops:
            endpoint.hops.append(Hop(name, proc.pid))
        yield endpoint

"""Bolt / Dubbo paths for bench/rpc.py (and gRPC ones for bench/grpc_bench.py): the echo upstream, and
Plexus sidecars in front of it.

- direct: the load generator calls the echo upstream.
- plexus1: registry; the upstream published directly as an instance of the bench service with protocol
  ``bolt``/``dubbo`` (a publish stream held by the harness, as an SDK app without a sidecar would); one
  consumer sidecar whose per-service egress port (``PUT /v1/consumers/{service}``) the load generator calls.
  The sidecar decodes every frame, balances it, and multiplexes it onto its own upstream connection
  (transport/rpc_proxy.py).
- plexus2: as plexus1, but a provider sidecar in front of the upstream (``PUT /v1/providers/{service}``
  with the protocol) publishes its ingress port instead.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from lib import rpc_load
from lib.plexus_topo import _http, _process, _sidecar_args
from lib.procstat import pinned_argv
from lib.topology import Endpoint, Hop, Workspace
from plexus.testing.procs import ManagedProcess, wait_for

SERVICE = rpc_load.SERVICE
START_TIMEOUT = 30.0
ROUTE_TIMEOUT = 20.0
LOAD_SCRIPT = Path(__file__).resolve().parent / "rpc_load.py"


@contextlib.contextmanager
def echo_upstream(ws: Workspace, protocol: str) -> Iterator[tuple[int, ManagedProcess]]:
    """The echo upstream on the load CPUs; yields (port, process)."""
    root = ws.dir(f"{protocol}-upstream")
    ready = root / "ready.json"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, str(LOAD_SCRIPT), "server", "--protocol", protocol, "--ready-file", str(ready)]
    proc = ManagedProcess(pinned_argv(argv, ws.placement.load), log_path=root / "out.log")
    try:

        def started() -> dict[str, str] | None:
            if not proc.alive():
                raise RuntimeError(f"{protocol} upstream exited; log:\n{proc.log()}")
            return json.loads(ready.read_text()) if ready.exists() else None

        info = wait_for(started, timeout=START_TIMEOUT, what=f"{protocol} echo upstream")
        assert info is not None
        yield int(info["listen"].rpartition(":")[2]), proc
    finally:
        proc.stop()


def call_once(address: str, protocol: str, timeout: float = 2.0) -> bool:
    """One request through ``address``; True when a success response with its id comes back."""
    host, _, port = address.rpartition(":")
    frame = rpc_load.request_frame(protocol)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(frame)
            buf = b""
            while True:
                size = rpc_load.frame_size(buf, 0, protocol)
                if size and len(buf) >= size:
                    break
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                buf += chunk
    except OSError:
        return False
    if protocol == "bolt":
        return buf[1] == 0 and int.from_bytes(buf[10:12], "big") == 0
    return buf[3] == rpc_load.DUBBO_OK


@contextlib.contextmanager
def _published(registry: str, protocol: str, address: str) -> Iterator[None]:
    from plexus.clients.registry import RegistryClient
    from plexus.discovery.model import Instance

    client = RegistryClient(registry, publisher_id=f"bench-{uuid.uuid4().hex[:8]}")
    client.start()
    try:
        client.set_published([Instance(service=SERVICE, address=address, protocol=protocol)])
        wait_for(lambda: client.connected, timeout=START_TIMEOUT, what=f"publish stream to {registry}")
        if client.publish_errors():
            raise RuntimeError(f"registry refused the bench instance: {client.publish_errors()}")
        yield
    finally:
        client.close()


@contextlib.contextmanager
def topology(
    ws: Workspace,
    mode: str,
    protocol: str,
    upstream_port: int,
    sidecars: int,
    check: Callable[[str, str], bool] | None = None,
) -> Iterator[Endpoint]:
    """``check(address, protocol)``: whether one call through the consumer's egress port succeeds (routes
    converged); by default one Bolt/Dubbo call."""
    check = check or call_once
    load, proxy = ws.placement.load, ws.placement.proxy
    with contextlib.ExitStack() as stack:
        # --warmup 0: a fresh registry holds pushes for its warm-up (5 s) otherwise; nothing to wait for here.
        reg_args = ["registry", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--warmup", "0"]
        registry = stack.enter_context(_process(ws, f"{mode}-registry", reg_args, load))
        reg = registry.address("listen")
        hops: list[tuple[str, ManagedProcess]] = []
        if sidecars == 1:
            stack.enter_context(_published(reg, protocol, f"127.0.0.1:{upstream_port}"))
        else:
            provider = stack.enter_context(
                _process(ws, f"{mode}-provider", _sidecar_args(reg, upstream_port), proxy)
            )
            status, body = _http(
                "PUT",
                f"http://{provider.address('api')}/v1/providers/{SERVICE}",
                {"port": upstream_port, "protocol": protocol},
            )
            if status // 100 != 2:
                raise RuntimeError(f"PUT /v1/providers answered {status}: {body[:300]!r}")
            hops.append(("provider", provider))
        consumer = stack.enter_context(
            _process(ws, f"{mode}-consumer", _sidecar_args(reg, upstream_port), proxy)
        )
        hops.insert(0, ("consumer", consumer))
        status, body = _http("PUT", f"http://{consumer.address('api')}/v1/consumers/{SERVICE}", {})
        if status // 100 != 2:
            raise RuntimeError(f"PUT /v1/consumers answered {status}: {body[:300]!r}")
        address = str(json.loads(body)["address"])
        wait_for(
            lambda: check(address, protocol),
            timeout=ROUTE_TIMEOUT,
            interval=0.1,
            what=f"a {protocol} success through {address}",
        )
        yield Endpoint(mode=mode, url=address, hops=[Hop(n, p.pid) for n, p in hops])


PROBE_SCRIPT = Path(__file__).resolve().parent.parent / "profiles" / "rpc_probe.py"


@contextlib.contextmanager
def probe(
    ws: Workspace, mode: str, protocol: str, upstream_port: int, flags: list[str]
) -> Iterator[Endpoint]:
    """A bare DataPlane serving the bench service's egress port (bench/profiles/rpc_probe.py), optionally
    with a proposed change patched in (``--cork``, ``--gc``): the same RPC proxy path without the sidecar."""
    root = ws.dir(f"{protocol}-{mode}")
    ready = root / "ready.json"
    ready.unlink(missing_ok=True)
    argv = [
        sys.executable,
        str(PROBE_SCRIPT),
        "--protocol",
        protocol,
        "--upstream",
        f"127.0.0.1:{upstream_port}",
        "--ready-file",
        str(ready),
        *flags,
    ]
    proc = ManagedProcess(pinned_argv(argv, ws.placement.proxy), log_path=root / "out.log")
    try:

        def started() -> dict[str, str] | None:
            if not proc.alive():
                raise RuntimeError(f"{mode} exited; log:\n{proc.log()}")
            return json.loads(ready.read_text()) if ready.exists() else None

        info = wait_for(started, timeout=START_TIMEOUT, what=f"{mode} ready file")
        assert info is not None
        address = info["egress"]
        wait_for(
            lambda: call_once(address, protocol),
            timeout=ROUTE_TIMEOUT,
            interval=0.1,
            what=f"a {protocol} success through {address}",
        )
        yield Endpoint(mode=mode, url=address, hops=[Hop("dataplane", proc.pid)])
    finally:
        proc.stop()

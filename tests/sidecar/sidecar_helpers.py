"""Start the real processes of a sidecar test: registry, sidecars, provider apps; and talk to them."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from plexus.testing.procs import ManagedProcess, wait_for

# One client for the control calls of all tests: a new client per call costs ~0.1 s (SSL context and pool).
_CLIENT = httpx.Client(timeout=5)
ECHO_SERVER = Path(__file__).with_name("sidecar_echo_server.py")


class Group:
    """Processes started for one test or one module; stopped in reverse order, by PID."""

    def __init__(self) -> None:
        self.started: list[ManagedProcess] = []
        ACTIVE.append(self)

    def add(self, proc: ManagedProcess) -> ManagedProcess:
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {' '.join(p.argv[1:4])} (pid {p.pid}):\n{p.log()}" for p in self.started)


ACTIVE: list[Group] = []  # groups of the running tests, for the failure report in conftest.py


def start_registry(
    group: Group, listen: str = "127.0.0.1:0", *extra: str, warmup: float = 0.0
) -> ManagedProcess:
    # No warm-up hold by default and a short lease grace, so tests see pushes at once and lost publishers go
    # quickly; a restarted registry needs a warm-up longer than its publishers take to reconnect.
    args = [
        "registry",
        "--listen",
        listen,
        "--admin",
        "127.0.0.1:0",
        "--lease-grace",
        "1",
        "--warmup",
        str(warmup),
        "--debounce-ms",
        "20",
        *extra,
    ]
    return group.add(ManagedProcess.plexus(args))


def start_sidecar(
    group: Group, registry: str, *extra: str, env: dict[str, str] | None = None
) -> ManagedProcess:
    args = [
        "sidecar",
        "--registry",
        registry,
        "--ingress",
        "127.0.0.1:0",
        "--egress",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--health-interval",
        "0.2",
        "--drain-time",
        "0.5",
        *extra,
    ]
    return group.add(ManagedProcess.plexus(args, env=env))


def start_http_app(group: Group, name: str, port: int = 0) -> tuple[ManagedProcess, int]:
    """``python -m http.server`` serving ``whoami`` (= name) and ``healthz``; returns (proc, port)."""
    folder = Path(tempfile.mkdtemp(prefix=f"plexus-app-{name}-"))
    (folder / "whoami").write_text(name)
    (folder / "healthz").write_text("ok")
    proc = group.add(
        ManagedProcess(
            [
                sys.executable,
                "-u",
                "-m",
                "http.server",
                str(port),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(folder),
            ]
        )
    )
    match = wait_for(lambda: re.search(r"port (\d+)", proc.log()), timeout=10, what=f"http.server {name}")
    assert match is not None
    return proc, int(match.group(1))


def start_echo(group: Group) -> tuple[ManagedProcess, int]:
    fd, name = tempfile.mkstemp(prefix="plexus-echo-", suffix=".json")
    os.close(fd)
    os.unlink(name)
    proc = group.add(ManagedProcess([sys.executable, str(ECHO_SERVER), "0", name], ready_file=Path(name)))
    return proc, int(proc.address("listen").rpartition(":")[2])


def url(proc: ManagedProcess, key: str, path: str = "") -> str:
    return f"http://{proc.address(key)}{path}"


def api(proc: ManagedProcess, method: str, path: str, body: Any = None) -> httpx.Response:
    return _CLIENT.request(method, url(proc, "api", path), json=body)


def admin(proc: ManagedProcess, path: str) -> httpx.Response:
    return _CLIENT.get(url(proc, "admin", path))


def instances(proc: ManagedProcess, service: str) -> list[dict[str, Any]]:
    response = api(proc, "GET", f"/v1/services/{service}")
    if response.status_code != 200:
        return []
    result: list[dict[str, Any]] = response.json()["instances"]
    return result


def addresses_seen(proc: ManagedProcess, service: str) -> set[str]:
    return {i["address"] for i in instances(proc, service)}

"""Idle sidecar memory: VmRSS, RssAnon and threads of `plexus sidecar` some seconds after it is ready.

    .venv/bin/python bench/sidecar_memory.py [--settle 5] [--rounds 3] [--churn 3000]

Three scenarios, each with a real registry: ``idle`` (nothing registered), ``1p1c`` (one provider, an
``http.server`` app, and one consumer of that service registered through the local API), and ``churn``
(1p1c after ``--churn`` requests through the consumer's egress port, each on a new connection: what closed
connections leave behind). Prints one line per scenario with the median of the rounds, plus whether grpc's
cygrpc is mapped into the sidecar.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from plexus.testing.procs import ManagedProcess, wait_for


def _status(pid: int) -> dict[str, int]:
    wanted = {"VmRSS", "RssAnon", "RssFile", "Threads"}
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in wanted:
                out[key] = int(value.split()[0])
    return out


def _maps_grpc(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return any("cygrpc" in line for line in f)


def _sidecar(registry: str) -> ManagedProcess:
    return ManagedProcess.plexus(
        [
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
        ]
    )


def _short_connections(address: str, count: int) -> None:
    """``count`` GETs, each on its own connection, closed after its response."""
    host, _, port = address.rpartition(":")
    for _ in range(count):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            while conn.recv(65536):
                pass


def measure(scenario: str, settle: float, churn: int = 0) -> tuple[dict[str, int], bool]:
    started: list[ManagedProcess] = []
    try:
        registry = ManagedProcess.plexus(
            ["registry", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--warmup", "0"]
        )
        started.append(registry)
        sidecar = _sidecar(registry.address("listen"))
        started.append(sidecar)
        if scenario in ("1p1c", "churn"):
            folder = Path(tempfile.mkdtemp(prefix="plexus-bench-app-"))
            (folder / "healthz").write_text("ok")
            app = ManagedProcess(
                [
                    sys.executable,
                    "-u",
                    "-m",
                    "http.server",
                    "0",
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    str(folder),
                ]
            )
            started.append(app)
            found = wait_for(lambda: re.search(r"port (\d+)", app.log()), 10, what="http.server port")
            port = int(found.group(1))
            api = f"http://{sidecar.address('api')}"
            httpx.put(f"{api}/v1/providers/bench", json={"port": port}).raise_for_status()
            egress = httpx.put(f"{api}/v1/consumers/bench", json={}).json()["address"]
            wait_for(
                lambda: httpx.get(f"{api}/v1/services/bench").json()["instances"], 10, what="bench instance"
            )
            if scenario == "churn":
                _short_connections(egress, churn)
        time.sleep(settle)
        return _status(sidecar.pid), _maps_grpc(sidecar.pid)
    finally:
        for proc in reversed(started):
            proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after ready before reading /proc")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--churn", type=int, default=3000, help="short connections in the churn scenario")
    args = parser.parse_args()
    for scenario in ("idle", "1p1c", "churn"):
        rounds = [measure(scenario, args.settle, args.churn) for _ in range(args.rounds)]
        stats = {
            k: statistics.median(r[0][k] for r in rounds) for k in ("VmRSS", "RssAnon", "RssFile", "Threads")
        }
        print(
            f"{scenario:5}  VmRSS {stats['VmRSS'] / 1024:5.1f} MiB  "
            f"RssAnon {stats['RssAnon'] / 1024:5.1f} MiB  "
            f"RssFile {stats['RssFile'] / 1024:5.1f} MiB  threads {stats['Threads']:.0f}  "
            f"grpc mapped: {rounds[0][1]}  (median of {args.rounds})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

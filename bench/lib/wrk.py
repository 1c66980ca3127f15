"""Closed-loop load with wrk at fixed connections, read from the one JSON line our Lua script prints."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lib.procstat import pinned_argv

WRK = shutil.which("wrk") or "/usr/bin/wrk"
SCRIPT = Path(__file__).resolve().parent / "report.lua"
MARKER = "WRK_JSON "
# One wrk thread: wrk shares one CPU with nginx, so a second thread would only contend for it.
THREADS = 1
GRACE_S = 30  # wrk's own -d ends the run; this only bounds a wedged wrk


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: int  # connect + read + write + timeout + non-2xx/3xx
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    mean_us: float
    max_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def available() -> bool:
    return shutil.which("wrk") is not None or Path(WRK).exists()


def parse(stdout: str) -> WrkResult:
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            d = json.loads(line[len(MARKER) :])
            errors = d["connect"] + d["read"] + d["write"] + d["timeout"] + d["status"]
            return WrkResult(
                requests=d["requests"], duration_s=d["duration_us"] / 1e6, errors=errors,
                p50_us=d["p50_us"], p90_us=d["p90_us"], p99_us=d["p99_us"], p999_us=d["p999_us"],
                mean_us=d["mean_us"], max_us=float(d["max_us"]),
            )  # fmt: skip
    raise RuntimeError(f"wrk printed no {MARKER.strip()} line; output:\n{stdout[-2000:]}")


def command(url: str, connections: int, duration_s: float, cpus: Iterable[int] | None) -> list[str]:
    argv = [
        WRK, f"-t{min(THREADS, connections)}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
        "--timeout", "5s", "-s", str(SCRIPT), url,
    ]  # fmt: skip
    return pinned_argv(argv, cpus)


def run(url: str, connections: int, duration_s: float, cpus: Iterable[int] | None) -> WrkResult:
    argv = command(url, connections, duration_s, cpus)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + GRACE_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return parse(done.stdout)

"""The CPU speed canary: this machine's CPUs switch between two speeds for seconds at a time, whatever runs on
them (a fixed piece of Python work takes ~750 or ~1,300 µs of CPU; bench/profiles/grpc-telemetry-NOTES.md,
2026-11-26 10:10). A run's CPU per request follows its CPU's speed, so a round where one proxy ran in the slow
state and the other in the fast one says nothing about the proxies. A canary process pinned to the proxy CPU
times that fixed work every 0.25 s (~0.4 % of the CPU); a run keeps the median of its samples, and a pair of
runs is compared with both CPU speeds divided out, or only when both ran at the same speed."""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from lib import procstat
from lib.topology import Workspace
from plexus.testing.procs import ManagedProcess

# The canary's fixed work (~1 ms of CPU), timed in CPU time (time.thread_time_ns), so that neither the proxy
# it shares the CPU with nor being descheduled adds to it; one "monotonic_ns cpu_us" line per sample.
CANARY_PERIOD_S = 0.25
CANARY_CODE = """
import sys, time
def work():
    d = {}
    n = 0
    for i in range(3000):
        d[i & 255] = (i, str(i))
        n += len(d[i & 255][1])
    return n
with open(sys.argv[1], "a", buffering=1) as out:
    while True:
        t0 = time.thread_time_ns()
        work()
        out.write(f"{time.monotonic_ns()} {(time.thread_time_ns() - t0) / 1000:.1f}\\n")
        time.sleep(PERIOD)
""".replace("PERIOD", str(CANARY_PERIOD_S))
SAME_SPEED = 1.15  # two runs' canaries within this factor: the CPU ran at the same speed for both


@contextlib.contextmanager
def cpu_canary(ws: Workspace) -> Iterator[Path]:
    """The CPU speed canary on the proxy CPU (see the module docstring); yields its samples file."""
    root = ws.dir("canary")
    samples = root / "samples.txt"
    argv = procstat.pinned_argv([sys.executable, "-c", CANARY_CODE, str(samples)], ws.placement.proxy)
    proc = ManagedProcess(argv, log_path=root / "out.log")
    try:
        yield samples
    finally:
        proc.stop()


def canary_us(samples: Path, start_ns: int, end_ns: int) -> float | None:
    """Median CPU µs of the canary's work between two ``time.monotonic_ns()`` readings."""
    values = []
    with contextlib.suppress(OSError):
        for line in samples.read_text().splitlines():
            at, _, us = line.partition(" ")
            if us and start_ns <= int(at) <= end_ns:
                values.append(float(us))
    return statistics.median(values) if values else None


def pair_ratios(pairs: Sequence[tuple[float, float, float, float]]) -> tuple[float | None, float | None, int]:
    """Per-round (b CPU/request) ÷ (a CPU/request), from (a per request, a canary, b per request, b canary):
    the median with each run's CPU speed divided out, the median over the rounds where both ran at the same
    speed (canaries within SAME_SPEED), and how many such rounds there were."""
    normalized, same = [], []
    for a, ca, b, cb in pairs:
        ratio = b / a
        normalized.append(ratio * ca / cb)
        if max(ca, cb) / min(ca, cb) <= SAME_SPEED:
            same.append(ratio)
    return (
        statistics.median(normalized) if normalized else None,
        statistics.median(same) if same else None,
        len(same),
    )

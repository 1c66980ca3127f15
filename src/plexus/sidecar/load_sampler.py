"""The machine's CPU use and load, sampled each second into the data plane's ``LoadSignal``.

Adaptive rate limits (``plexus.proxy.adaptive``) shed by them. The sampler ticks once a second for the
sidecar's life but reads ``/proc/stat`` and ``os.getloadavg()`` only while ``signal.wanted`` (an installed
policy has an adaptive rule with a CPU or load threshold); otherwise a tick costs one attribute test.

CPU use is the busy share of all CPUs between two samples: (total - idle - iowait) / total of the
``cpu`` line's jiffies (proc(5)). Where /proc/stat is missing (not Linux) the CPU stays None (not checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Final

from plexus.proxy.adaptive import LoadSignal

log = logging.getLogger("plexus.sidecar.load")

INTERVAL: Final = 1.0  # seconds; Sentinel's system rule samples once a second too
PROC_STAT: Final = "/proc/stat"
IDLE_FIELDS: Final = (3, 4)  # idle, iowait in "cpu user nice system idle iowait irq softirq steal ..."


def read_cpu_times(path: str = PROC_STAT) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, or None when the file cannot be read."""
    try:
        with open(path, "rb") as f:
            line = f.readline()
    except OSError:
        return None
    fields = line.split()
    if not fields or fields[0] != b"cpu":
        return None
    values = [int(v) for v in fields[1:9]]  # guest times are already in user and nice
    total = sum(values)
    idle = sum(values[i] for i in IDLE_FIELDS if i < len(values))
    return total - idle, total


def cpu_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Busy fraction between two samples, 0..1; None when no time passed between them."""
    total = after[1] - before[1]
    if total <= 0:
        return None
    return min(1.0, max(0.0, (after[0] - before[0]) / total))


def load_per_cpu() -> float | None:
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return None


class LoadSampler:
    """Feeds ``signal`` every ``interval`` seconds while it is wanted (``start()``, then ``aclose()``)."""

    def __init__(
        self,
        signal: LoadSignal,
        *,
        interval: float = INTERVAL,
        cpu_times: Callable[[], tuple[int, int] | None] = read_cpu_times,
        load: Callable[[], float | None] = load_per_cpu,
    ) -> None:
        self.signal = signal
        self.interval = interval
        self._cpu_times = cpu_times
        self._load = load
        self._last: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self.samples = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def sample(self) -> None:
        """One tick: read and publish when wanted; forget the last reading when not (a stale base would
        average over the idle time)."""
        signal = self.signal
        if not signal.wanted:
            self._last = None
            return
        now = self._cpu_times()
        if now is not None and self._last is not None:
            share = cpu_share(self._last, now)
            if share is not None:
                signal.cpu = share
        self._last = now
        signal.load_per_cpu = self._load()
        self.samples += 1

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a malformed /proc line must not stop the sampler
                log.exception("load sample failed")
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

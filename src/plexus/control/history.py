"""Golden metrics over time for the dashboard: one point per service every few seconds, for the last hour.

``History`` is a plain ring of points per service (no I/O): ``record(stat, at)`` appends one point for every
service of a ``StatResponse``, ``series(service)`` returns them oldest first. Memory is bounded twice: each
service keeps at most ``span / interval`` points (a deque with maxlen), and at most ``max_services`` services
are kept (the one sampled least recently goes first), so a flood of service names cannot grow the control
plane. ``HistorySampler`` drives it on the control plane's loop: it asks a ``StatSource`` (the report
aggregator of ``plexus.control.observe``) for ``stat(window=SAMPLE_WINDOW)`` every ``interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Final, Protocol

from plexus.proto import control_pb2 as pb

log = logging.getLogger("plexus.control")

INTERVAL: Final = 5.0  # seconds between points: fine enough to see a spike, 720 points an hour per service
SPAN: Final = 3600.0  # seconds of history kept
# Each point covers the last 10 s: two intervals, so a sidecar report landing just after a sample is still
# counted in the next one and the line does not saw-tooth with the report phase.
SAMPLE_WINDOW: Final = 10.0
MAX_SERVICES: Final = 500  # a mesh's dashboard shows tens; 500 x 720 points is a few tens of MB at most


class StatSource(Protocol):
    """What the sampler reads: the control plane's report aggregator (``plexus.control.observe``)."""

    def stat(self, service: str = "", window: float = 30.0) -> pb.StatResponse: ...


@dataclass(frozen=True, slots=True)
class Point:
    at: float  # unix seconds of the sample
    rps: float
    success_rate: float  # 0..1; 1 when there were no requests
    p50_ms: float
    p99_ms: float
    requests: int  # in the sample's window

    def to_json(self) -> dict[str, float | int]:
        return {
            "t": round(self.at, 3),
            "rps": self.rps,
            "success_rate": self.success_rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "requests": self.requests,
        }


class History:
    def __init__(
        self, *, interval: float = INTERVAL, span: float = SPAN, max_services: int = MAX_SERVICES
    ) -> None:
        if interval <= 0 or span < interval or max_services < 1:
            raise ValueError(f"history: bad interval {interval}, span {span} or max_services {max_services}")
        self.interval = interval
        self.span = span
        self.max_services = max_services
        self.capacity = int(span // interval)
        self.samples = 0
        # service -> points, least recently sampled first (move_to_end on every record)
        self._series: OrderedDict[str, deque[Point]] = OrderedDict()

    def record(self, stat: pb.StatResponse, at: float) -> None:
        """Append one point per service of ``stat``, sampled at unix time ``at``."""
        self.samples += 1
        for s in stat.services:
            if not s.service:
                continue
            points = self._series.get(s.service)
            if points is None:
                points = self._series[s.service] = deque(maxlen=self.capacity)
            self._series.move_to_end(s.service)
            points.append(
                Point(at, s.rps, s.success_rate, s.latency_p50_ms, s.latency_p99_ms, int(s.requests))
            )
        while len(self._series) > self.max_services:
            self._series.popitem(last=False)
        # a service gone for the whole span has nothing left to show
        for name in [n for n, pts in self._series.items() if not pts or pts[-1].at < at - self.span]:
            del self._series[name]

    def services(self) -> list[str]:
        return sorted(self._series)

    def points(self, service: str) -> list[Point]:
        return list(self._series.get(service, ()))

    def to_json(self, service: str = "") -> dict[str, Any]:
        """``{"interval_seconds", "span_seconds", "services": {name: [point, ...]}}``, one service or all."""
        names = [service] if service else self.services()
        return {
            "interval_seconds": self.interval,
            "span_seconds": self.span,
            "samples": self.samples,
            "services": {name: [p.to_json() for p in self.points(name)] for name in names},
        }


class HistorySampler:
    """Samples ``source.stat(window=SAMPLE_WINDOW)`` into ``history`` now and then every interval."""

    def __init__(self, history: History, source: StatSource, *, window: float = SAMPLE_WINDOW) -> None:
        self.history = history
        self._source = source
        self._window = window
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        self.history.record(self._source.stat("", self._window), time.time())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="plexus-history")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                self.sample()
            except Exception:  # a bad sample must not end the history; the next one may work
                log.exception("history sample failed")
            # keep the cadence of the clock, not of the work: a slow sample does not shift later points
            next_at += self.history.interval
            now = loop.time()
            if next_at < now:
                next_at = now
            await asyncio.sleep(next_at - now)

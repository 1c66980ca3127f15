"""The stress-test driver against a simulated mesh: the instance's latency and errors are a function of the
rate it serves, reports arrive on a simulated clock, and the driver must find where the limits break, report
the rate held, and always give the normal routing back (done, refused, cancelled)."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from plexus.config.resources import StressShare
from plexus.control.core import NodeView
from plexus.control.stress import StressTestError, quantile_ms, run_stress_test
from plexus.proto import control_pb2 as pb
from plexus.proxy.stats import DURATION_BUCKETS_MS

T = TypeVar("T")
SERVICE = "orders"
INSTANCE = "10.0.0.7:15006"
TOTAL_RATE = 100.0  # requests per second of the whole service
INSTANCES = 4
TICK = 0.05


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


class SimCore:
    """A control plane over a simulated mesh: a consumer sidecar, the provider sidecar of INSTANCE (and an
    unrelated sidecar); the instance serves its share of TOTAL_RATE with latency and errors from the
    models; reports every report interval; ACKs 0.2 s after a change."""

    def __init__(
        self,
        latency_ms: Callable[[float], float],
        error_rate: Callable[[float], float] = lambda rate: 0.0,
        report_interval_ms: int = 0,
    ) -> None:
        self.now = 1000.0
        self.latency_ms = latency_ms
        self.error_rate = error_rate
        self._stress: tuple[StressShare, ...] = ()
        self._interval_ms = report_interval_ms
        self._version = 1
        self.acked = 1
        self.ack_at = 0.0
        self.stress_history: list[tuple[StressShare, ...]] = []
        self.interval_history: list[int] = []
        # cumulative counters of the instance's inbound traffic, with old slow requests in them already
        self.requests = 5000.0
        self.errors = 700.0
        self.buckets = [0.0] * (len(DURATION_BUCKETS_MS) + 1)
        self.buckets[-1] = 5000.0  # earlier traffic, all slower than the last bound: must not count
        self.report: pb.Report | None = None
        self.report_time = 0.0
        self.next_report = self.now
        self.sequence = 0
        self.provider = pb.Node(id="p", provides=[SERVICE], addresses=[INSTANCE])
        self.consumer = pb.Node(id="c", consumes=[SERVICE], addresses=["10.0.0.9:15006"])
        self.other = pb.Node(id="o", provides=["billing"], addresses=["10.0.0.8:15006"])

    # -- the StressCore API
    @property
    def stress(self) -> tuple[StressShare, ...]:
        return self._stress

    @property
    def version(self) -> int:
        return self._version

    @property
    def report_interval_ms(self) -> int:
        return self._interval_ms

    def set_stress(self, shares: tuple[StressShare, ...]) -> None:
        self._stress = tuple(shares)
        self.stress_history.append(self._stress)
        self._changed()

    def set_report_interval(self, ms: int) -> None:
        self._interval_ms = ms
        self.interval_history.append(ms)
        self._changed()

    def nodes(self) -> list[NodeView]:
        return [
            NodeView(self.provider, self.report, self.report_time, self.acked, self._version),
            NodeView(self.consumer, None, 0.0, self.acked, self._version),
            NodeView(self.other, None, 0.0, self.acked, self._version),
        ]

    # -- the simulation
    def _changed(self) -> None:
        self._version += 1
        self.ack_at = self.now + 0.2

    def clock(self) -> float:
        return self.now

    def share(self) -> float:
        if self.acked < self._version:  # the callers still run the previous version: no share known yet
            return 1 / INSTANCES
        for s in self._stress:
            if s.host == SERVICE and s.address == INSTANCE:
                return s.percent / 100
        return 1 / INSTANCES

    async def sleep(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            step = min(TICK, end - self.now)
            rate = self.share() * TOTAL_RATE
            served = rate * step
            self.requests += served
            self.errors += served * self.error_rate(rate)
            latency = self.latency_ms(rate)
            self.buckets[bisect.bisect_left(DURATION_BUCKETS_MS, latency)] += served
            self.now += step
            if self.now >= self.ack_at:
                self.acked = self._version
            if self._interval_ms and self.now >= self.next_report:
                self._send_report()
        await asyncio.sleep(0)

    def _send_report(self) -> None:
        self.sequence += 1
        report = pb.Report(sequence=self.sequence, uptime_seconds=self.now)
        report.traffic.add(service="billing", direction="inbound", requests=77)
        report.traffic.add(service=SERVICE, direction="outbound", requests=99999)
        report.traffic.add(
            service=SERVICE,
            direction="inbound",
            requests=round(self.requests),
            errors=round(self.errors),
            duration_buckets=[round(b) for b in self.buckets],
        )
        self.report, self.report_time = report, self.now
        self.next_report = self.now + self._interval_ms / 1000


def _request(**kw: Any) -> pb.StressTestRequest:
    base: dict[str, Any] = {
        "service": SERVICE,
        "instance": INSTANCE,
        "max_p99_ms": 50.0,
        "max_error_rate": 0.01,
        "step_seconds": 5.0,
        "start_share": 0.1,
        "step_share": 0.1,
        "max_share": 1.0,
    }
    base.update(kw)
    return pb.StressTestRequest(**base)


async def _collect(core: SimCore, request: pb.StressTestRequest) -> list[pb.StressTestProgress]:
    return [p async for p in run_stress_test(core, request, clock=core.clock, sleep=core.sleep)]


def test_p99_is_interpolated_in_the_bucket_that_holds_it() -> None:
    buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)
    assert quantile_ms(buckets, 0.99) == 0.0
    buckets[4] = 100  # all in (25, 50]
    assert quantile_ms(buckets, 0.99) == pytest.approx(49.75)
    assert quantile_ms(buckets, 0.5) == pytest.approx(37.5)
    buckets[-1] = 2  # 2 of 102 beyond the last bound: the p99 is there, answered as the last bound
    assert quantile_ms(buckets, 0.99) == DURATION_BUCKETS_MS[-1]


def test_stops_at_the_first_step_over_the_latency_limit_and_reports_the_rate_held() -> None:
    core = SimCore(latency_ms=lambda rate: 2.0 * rate)  # 10/s → 20 ms, 20/s → 40 ms, 30/s → 60 ms
    steps = _run(_collect(core, _request()))
    assert [round(p.share, 2) for p in steps] == [0.1, 0.2, 0.3]
    assert [p.done for p in steps] == [False, False, True]
    assert [round(p.rate) for p in steps] == [10, 20, 30]
    assert steps[1].p99_ms == pytest.approx(49.75, abs=0.5)  # 40 ms in (25, 50]: the old slow ones ignored
    assert steps[2].p99_ms > 50.0 and "p99" in steps[2].stopped_because
    assert steps[-1].held_rate == pytest.approx(20.0, rel=0.05)
    assert all(p.error_rate == 0.0 for p in steps)
    # the shares went out one by one, and normal routing came back at the end
    pushed = [s[0].percent for s in core.stress_history if s]
    assert pushed == pytest.approx([10.0, 20.0, 30.0])
    assert core.stress == ()
    assert core.report_interval_ms == 0 and core.interval_history == [1000, 0]


def test_stops_on_the_error_rate_and_at_the_maximum_share() -> None:
    core = SimCore(latency_ms=lambda rate: 3.0, error_rate=lambda rate: 0.05 if rate > 25 else 0.0)
    steps = _run(_collect(core, _request(max_error_rate=0.01)))
    assert round(steps[-1].share, 2) == 0.3 and steps[-1].done
    assert "error rate" in steps[-1].stopped_because and steps[-1].error_rate == pytest.approx(0.05, abs=0.01)
    assert steps[-1].held_rate == pytest.approx(20.0, rel=0.05)

    core = SimCore(latency_ms=lambda rate: 3.0, report_interval_ms=200)
    steps = _run(_collect(core, _request(start_share=0.2, step_share=0.15, max_share=0.5)))
    assert [round(p.share, 2) for p in steps] == [0.2, 0.35, 0.5]
    assert steps[-1].stopped_because == "max share reached"
    assert steps[-1].held_rate == pytest.approx(50.0, rel=0.05)
    assert core.stress == () and core.report_interval_ms == 200  # a shorter interval was kept as it was


def test_refuses_an_unknown_or_unmeshed_instance_and_a_second_test() -> None:
    core = SimCore(latency_ms=lambda rate: 1.0)
    with pytest.raises(StressTestError, match="not published by any sidecar"):
        _run(_collect(core, _request(instance="10.1.1.1:80")))
    with pytest.raises(StressTestError, match="does not provide orders"):
        _run(_collect(core, _request(instance="10.0.0.8:15006")))
    with pytest.raises(StressTestError, match="max_error_rate"):
        _run(_collect(core, _request(max_error_rate=2.0)))
    assert core.stress_history == [] and core.interval_history == []  # refused before changing anything
    running = (StressShare(SERVICE, "10.0.0.3:15006", 50.0),)
    core.set_stress(running)
    with pytest.raises(StressTestError, match="already running"):
        _run(_collect(core, _request()))
    assert core.stress == running


def test_a_cancelled_test_gives_normal_routing_back() -> None:
    core = SimCore(latency_ms=lambda rate: 1.0, report_interval_ms=0)
    other = StressShare("billing", "10.0.0.8:15006", 40.0)
    core.set_stress((other,))

    async def cancel_during_second_step() -> list[pb.StressTestProgress]:
        seen: list[pb.StressTestProgress] = []
        stream = run_stress_test(core, _request(), clock=core.clock, sleep=core.sleep)
        task = asyncio.ensure_future(stream.__anext__())
        seen.append(await task)
        second = asyncio.ensure_future(stream.__anext__())
        while not any(s.percent == 20.0 for s in core.stress):
            await asyncio.sleep(0)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        return seen

    seen = _run(cancel_during_second_step())
    assert len(seen) == 1 and not seen[0].done
    assert core.stress == (other,)  # ours removed, the other service's test untouched
    assert core.report_interval_ms == 0

"""The single-machine stress test: steer a rising share of a service's real traffic onto one instance.

Theory of operation. The instance is found by its published address among the sidecars connected to the
control plane (``Node.addresses``); a sidecar that provides the service there is its provider sidecar, whose
Reports carry the instance's inbound counters (cumulative, with a duration histogram over
``plexus.proxy.stats.DURATION_BUCKETS_MS``). Then, step by step:

1. ``core.set_stress`` pushes a ``StressShare`` (``percent`` % of every caller's picks for the service go to
   the instance; see ``plexus.proxy.locality.StressBalancer``); the step starts once every sidecar that
   consumes the service has acknowledged that version (bounded: a sidecar that never does is not waited for).
2. Two Reports of the provider sidecar, ``step_seconds`` apart, give the step's request rate (requests per
   second of the sidecar's own uptime), its error rate and its p99 (interpolated in the bucket holding the
   99th percentile of the step's own requests, as Prometheus's ``histogram_quantile`` does).
3. The test stops at the first step whose p99 or error rate crosses its limit, or after the step at the
   maximum share; it answers the highest rate served within both limits.

The normal routing comes back whatever happens (limits crossed, an error, the client cancelling the call):
the stress share is removed and the report interval restored in a ``finally`` that does not wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from plexus.config.resources import StressShare
from plexus.control.core import NodeView
from plexus.proto import control_pb2 as pb
from plexus.proxy.stats import DURATION_BUCKETS_MS

log = logging.getLogger("plexus.control.stress")

__all__ = ["StepResult", "StressCore", "StressTestError", "p99_ms", "quantile_ms", "run_stress_test"]

DEFAULT_STEP_SECONDS: Final = 10.0  # long enough for a p99 over a few hundred requests at modest rates
DEFAULT_START_SHARE: Final = 0.1
DEFAULT_STEP_SHARE: Final = 0.1
DEFAULT_MAX_SHARE: Final = 1.0
MIN_STEP_SECONDS: Final = 0.2  # below this two reports can hardly fall in one step
# Reports during the test: about five per step, never more than ten a second nor fewer than one.
MIN_REPORT_INTERVAL_MS: Final = 100
MAX_REPORT_INTERVAL_MS: Final = 1000
APPLY_TIMEOUT: Final = 10.0  # seconds to wait for the callers' sidecars to ACK a new share
POLL_SECONDS: Final = 0.05  # how often reports and ACKs are looked at (the control plane's own state)
INBOUND: Final = "inbound"
SHARE_EPSILON: Final = 1e-9  # float steps (0.1 + 0.1 + ...) must still reach a max share of 0.3


class StressTestError(ValueError):
    """The stress test cannot run as asked (unknown or unmeshed instance, bad limits, one already running)."""


class StressCore(Protocol):
    """What the stress test needs of the control plane (``plexus.control.core.ControlCore``)."""

    @property
    def stress(self) -> tuple[StressShare, ...]: ...
    @property
    def version(self) -> int: ...
    @property
    def report_interval_ms(self) -> int: ...
    def set_stress(self, shares: tuple[StressShare, ...]) -> None: ...
    def set_report_interval(self, ms: int) -> None: ...
    def nodes(self) -> list[NodeView]: ...


@dataclass(frozen=True, slots=True)
class _Plan:
    service: str
    instance: str
    max_p99_ms: float
    max_error_rate: float
    step_seconds: float
    shares: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class StepResult:
    share: float
    requests: int
    rate: float
    p99_ms: float
    error_rate: float


def quantile_ms(buckets: Sequence[int], q: float, bounds: Sequence[float] = DURATION_BUCKETS_MS) -> float:
    """The ``q`` quantile of durations counted per bucket (``buckets[i]`` counts durations in
    (bounds[i-1], bounds[i]], the last one above every bound): linear within the bucket that holds it, as
    Prometheus does; the highest finite bound when it falls in the overflow bucket; 0.0 for no counts."""
    total = sum(buckets)
    if total <= 0:
        return 0.0
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / count
        seen += count
    return float(bounds[-1])


def p99_ms(buckets: Sequence[int]) -> float:
    return quantile_ms(buckets, 0.99)


def _plan(request: pb.StressTestRequest) -> _Plan:
    service, instance = request.service.strip(), request.instance.strip()
    if not service:
        raise StressTestError("service: required")
    if not instance:
        raise StressTestError("instance: required (the instance's published address, HOST:PORT)")
    if not request.max_p99_ms > 0 or not math.isfinite(request.max_p99_ms):
        raise StressTestError(
            f"max_p99_ms: must be a positive number of milliseconds, not {request.max_p99_ms}"
        )
    if not 0.0 <= request.max_error_rate <= 1.0:
        raise StressTestError(f"max_error_rate: must be in 0..1, not {request.max_error_rate}")
    step_seconds = request.step_seconds or DEFAULT_STEP_SECONDS
    if step_seconds < MIN_STEP_SECONDS:
        raise StressTestError(f"step_seconds: at least {MIN_STEP_SECONDS}, not {step_seconds}")
    start = request.start_share or DEFAULT_START_SHARE
    step = request.step_share or DEFAULT_STEP_SHARE
    top = request.max_share or DEFAULT_MAX_SHARE
    for name, value in (("start_share", start), ("step_share", step), ("max_share", top)):
        if not 0.0 < value <= 1.0:
            raise StressTestError(f"{name}: must be in (0, 1], not {value}")
    shares: list[float] = []
    share = min(start, top)
    while True:
        shares.append(round(share, 9))
        if share >= top - SHARE_EPSILON:
            break
        share = min(share + step, top)
    return _Plan(service, instance, request.max_p99_ms, request.max_error_rate, step_seconds, tuple(shares))


def _provider(nodes: Sequence[NodeView], service: str, instance: str) -> NodeView:
    """The connected sidecar that published ``instance`` for ``service``; refuses clearly otherwise."""
    holders = [n for n in nodes if instance in n.node.addresses]
    if not holders:
        raise StressTestError(
            f"instance {instance} is not published by any sidecar connected to this control plane "
            f"(unknown address, or the instance is not meshed); a stress test needs the instance's sidecar"
        )
    for view in holders:
        if service in view.node.provides:
            return view
    provides = sorted({s for v in holders for s in v.node.provides})
    raise StressTestError(f"instance {instance} does not provide {service} (its sidecar provides {provides})")


def _inbound(report: pb.Report | None, service: str) -> pb.TrafficSummary | None:
    if report is None:
        return None
    found: pb.TrafficSummary
    for found in report.traffic:
        if found.service == service and found.direction == INBOUND:
            return found
    return None


def measure(share: float, service: str, before: pb.Report, after: pb.Report) -> StepResult:
    """One step's figures from two cumulative reports of the provider sidecar."""
    old, new = _inbound(before, service), _inbound(after, service)
    seconds = max(after.uptime_seconds - before.uptime_seconds, 1e-6)
    if new is None:
        return StepResult(share, 0, 0.0, 0.0, 0.0)
    requests = new.requests - (old.requests if old is not None else 0)
    errors = new.errors - (old.errors if old is not None else 0)
    old_buckets = list(old.duration_buckets) if old is not None else []
    deltas = [
        count - (old_buckets[i] if i < len(old_buckets) else 0)
        for i, count in enumerate(new.duration_buckets)
    ]
    return StepResult(
        share,
        requests,
        requests / seconds,
        p99_ms(deltas),
        errors / requests if requests > 0 else 0.0,
    )


class _Run:
    """One stress test against a core; the waits poll the core's state (no callbacks into it)."""

    def __init__(
        self,
        core: StressCore,
        plan: _Plan,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.core = core
        self.plan = plan
        self.clock = clock
        self.sleep = sleep

    def provider(self) -> NodeView:
        return _provider(self.core.nodes(), self.plan.service, self.plan.instance)

    async def applied(self, version: int) -> None:
        """Until every sidecar consuming the service runs ``version`` (or APPLY_TIMEOUT passes)."""
        started = self.clock()
        deadline = started + APPLY_TIMEOUT
        service = self.plan.service
        while True:
            callers = [v for v in self.core.nodes() if service in v.node.consumes]
            behind = [v.node.id for v in callers if v.acked_version < version]
            if not behind or self.clock() >= deadline:
                break
            await self.sleep(POLL_SECONDS)
        log.info(
            "stress test of %s: version %d applied by %d of %d callers' sidecars after %.2f s%s",
            service, version, len(callers) - len(behind), len(callers), self.clock() - started,
            f" (not by {', '.join(behind)})" if behind else "",
        )  # fmt: skip

    async def report_after(self, moment: float, timeout: float) -> pb.Report:
        """The provider sidecar's first report received after ``moment`` (the core's monotonic clock)."""
        deadline = self.clock() + timeout
        while True:
            view = self.provider()  # refuses if the instance's sidecar went away meanwhile
            if view.report is not None and view.report_time > moment:
                return view.report
            if self.clock() > deadline:
                raise StressTestError(
                    f"the sidecar of {self.plan.instance} sent no report for {timeout:.1f} s "
                    f"(is it connected with reports on?)"
                )
            await self.sleep(POLL_SECONDS)

    async def step(self, share: float, interval_s: float) -> StepResult:
        plan = self.plan
        self.core.set_stress((*self.others(), StressShare(plan.service, plan.instance, share * 100.0)))
        await self.applied(self.core.version)
        wait = 2 * interval_s + 5.0  # two intervals plus a margin for a busy control plane
        before = await self.report_after(self.clock(), wait)
        started = self.clock()
        await self.sleep(plan.step_seconds)
        after = await self.report_after(started + plan.step_seconds - interval_s / 2, wait)
        return measure(share, plan.service, before, after)

    def others(self) -> tuple[StressShare, ...]:
        return tuple(s for s in self.core.stress if s.host != self.plan.service)


def _progress(result: StepResult) -> pb.StressTestProgress:
    return pb.StressTestProgress(
        share=result.share, rate=result.rate, p99_ms=result.p99_ms, error_rate=result.error_rate
    )


async def run_stress_test(
    core: StressCore,
    request: pb.StressTestRequest,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncIterator[pb.StressTestProgress]:
    """Run one stress test, yielding a progress message per step; the last one has ``done``, why it
    stopped and the held rate. Raises StressTestError (before any step) when it cannot run as asked.
    ``clock`` must be the core's clock (``NodeView.report_time`` is compared with it)."""
    plan = _plan(request)
    run = _Run(core, plan, clock, sleep)
    run.provider()  # refuse an unknown or unmeshed instance before changing anything
    if any(s.host == plan.service for s in core.stress):
        raise StressTestError(f"a stress test of {plan.service} is already running")
    old_interval = core.report_interval_ms
    interval_ms = int(min(max(plan.step_seconds * 1000 / 5, MIN_REPORT_INTERVAL_MS), MAX_REPORT_INTERVAL_MS))
    held = 0.0
    try:
        if old_interval == 0 or old_interval > interval_ms:
            core.set_report_interval(interval_ms)
        interval_s = (core.report_interval_ms or interval_ms) / 1000
        for i, share in enumerate(plan.shares):
            result = await run.step(share, interval_s)
            message = _progress(result)
            why = _verdict(plan, result, last=i == len(plan.shares) - 1)
            if why is None or why == MAX_SHARE_REACHED:
                held = max(held, result.rate)
            if why is not None:
                message.done = True
                message.stopped_because = why
                message.held_rate = held
                yield message
                return
            yield message
    finally:
        # Whatever ended the test (done, an error, the caller cancelling): normal routing again, now.
        core.set_stress(run.others())
        if core.report_interval_ms != old_interval:
            core.set_report_interval(old_interval)


MAX_SHARE_REACHED: Final = "max share reached"


def _verdict(plan: _Plan, result: StepResult, last: bool) -> str | None:
    """Why the test stops after this step, or None to go on."""
    if result.requests == 0:
        return f"no request reached {plan.instance} during the step (is {plan.service} called?)"
    if result.p99_ms > plan.max_p99_ms:
        return f"p99 {result.p99_ms:.1f} ms over the limit of {plan.max_p99_ms:g} ms"
    if result.error_rate > plan.max_error_rate:
        return f"error rate {result.error_rate:.4f} over the limit of {plan.max_error_rate:g}"
    if last:
        return MAX_SHARE_REACHED
    return None

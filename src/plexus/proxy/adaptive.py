"""Adaptive load shedding, Sentinel-style: concurrency baselines per interface, applied under machine load.

Theory of operation. Each interface (a service's ``:rpc-method``, or its HTTP ``:path`` without the query)
keeps, per second, how many requests completed and their summed response time, over the last
``WINDOW_SECONDS`` seconds. Its capacity is Sentinel's system-rule estimate (BBR): the highest completed rate
of a finished second times the lowest mean response time of a finished second — the number of requests the
interface keeps in flight when nothing queues. Old seconds leave the window, so the baseline moves down when
the app slows and back up when it recovers, once per second.

While the machine is loaded (CPU busy fraction above ``cpuThreshold``, or the 1-minute load average per CPU
above ``loadThreshold``, as sampled by ``plexus.sidecar.load_sampler`` into a ``LoadSignal``), a request is
admitted only while the interface's in-flight count is below ``PROBE_GAIN`` * capacity (at least one request
is always admitted, and an interface with no finished second yet has no estimate and is not shed): the gain
lets the estimate grow back when the app can take more, as BBR's probing does. ``maxConcurrency`` caps the
in-flight count whatever the load. Load-test requests (carrying ``loadTestHeader``) are shed first: all of
them while the machine is loaded, and beyond ``LOAD_TEST_SHARE`` of ``maxConcurrency`` otherwise, so real
traffic is never shed while load-test traffic is admitted.

Pure: the clock is passed in, the load comes from the ``LoadSignal`` the sidecar feeds; nothing here blocks.
"""

from __future__ import annotations

import math
from typing import Final

from plexus.config.policy_kinds import AdaptiveLimit
from plexus.proxy.stream import PATH, RPC_METHOD, HeaderLookup

WINDOW_SECONDS: Final = 5  # Sentinel's system rule looks at the last seconds; 5 moves within a few seconds
PROBE_GAIN: Final = 1.25  # BBR's probing gain: room for the estimate to grow back
LOAD_TEST_SHARE: Final = (
    0.5  # load-test traffic gets at most half of maxConcurrency: real traffic keeps the rest
)
MAX_INTERFACES: Final = 256  # per service; paths come from callers, so beyond this they share one state
OVERFLOW_INTERFACE: Final = "~other"


class LoadSignal:
    """The machine's load as last sampled; written by the sidecar's sampler, read by every gate.

    ``wanted`` tells the sampler whether an installed policy reads it (it samples only then). ``None``
    values: not sampled yet (no shedding on that signal)."""

    __slots__ = ("cpu", "load_per_cpu", "wanted")

    def __init__(self) -> None:
        self.cpu: float | None = None  # busy fraction of all CPUs over the last sample interval, 0..1
        self.load_per_cpu: float | None = None  # 1-minute load average divided by the number of CPUs
        self.wanted = False


class InterfaceState:
    """One interface's in-flight count and per-second completions (a ring of ``WINDOW_SECONDS`` slots)."""

    __slots__ = ("completed", "inflight", "name", "rt_sum", "seconds")

    def __init__(self, name: str) -> None:
        self.name = name
        self.inflight = 0
        self.seconds = [-1] * WINDOW_SECONDS  # which second each slot holds
        self.completed = [0] * WINDOW_SECONDS
        self.rt_sum = [0.0] * WINDOW_SECONDS

    def record(self, now: float, rt: float) -> None:
        second = int(now)
        slot = second % WINDOW_SECONDS
        if self.seconds[slot] != second:
            self.seconds[slot] = second
            self.completed[slot] = 0
            self.rt_sum[slot] = 0.0
        self.completed[slot] += 1
        self.rt_sum[slot] += rt if rt > 0.0 else 0.0

    def capacity(self, now: float) -> float | None:
        """max completed per second * min mean response time, over the finished seconds of the window;
        None while no finished second has a completion."""
        current = int(now)
        oldest = current - WINDOW_SECONDS
        max_rate = 0
        min_rt = math.inf
        seconds, completed, rt_sum = self.seconds, self.completed, self.rt_sum
        for i in range(WINDOW_SECONDS):
            second = seconds[i]
            count = completed[i]
            if second >= current or second < oldest or count == 0:
                continue
            if count > max_rate:
                max_rate = count
            mean = rt_sum[i] / count
            if mean < min_rt:
                min_rt = mean
        if max_rate == 0:
            return None
        return max_rate * min_rt

    def view(self, now: float) -> dict[str, object]:
        capacity = self.capacity(now)
        return {"inflight": self.inflight, "capacity": None if capacity is None else round(capacity, 3)}


class AdaptiveState:
    """One service's adaptive rule and its interfaces (the interfaces are kept across policy pushes)."""

    __slots__ = (
        "cpu_threshold",
        "header",
        "interfaces",
        "limit",
        "load_cap",
        "load_threshold",
        "max_concurrency",
        "signal",
    )

    def __init__(self, limit: AdaptiveLimit, signal: LoadSignal) -> None:
        self.limit = limit
        self.signal = signal
        self.header = limit.load_test_header.lower()
        self.cpu_threshold = limit.cpu_threshold
        self.load_threshold = limit.load_threshold
        self.max_concurrency = limit.max_concurrency
        mc = limit.max_concurrency
        self.load_cap = None if mc is None else max(1, int(mc * LOAD_TEST_SHARE))
        self.interfaces: dict[str, InterfaceState] = {}

    @property
    def uses_load(self) -> bool:
        return self.limit.cpu_threshold is not None or self.limit.load_threshold is not None

    def interface(self, lookup: HeaderLookup) -> InterfaceState:
        name = lookup(RPC_METHOD)
        if name is None:
            path = lookup(PATH)
            name = path.partition("?")[0] if path is not None else ""
        interfaces = self.interfaces
        state = interfaces.get(name)
        if state is None:
            if len(interfaces) >= MAX_INTERFACES:
                name = OVERFLOW_INTERFACE
                state = interfaces.get(name)
            if state is None:
                state = interfaces[name] = InterfaceState(name)
        return state

    def overloaded(self) -> bool:
        signal = self.signal
        threshold = self.cpu_threshold
        if threshold is not None:
            cpu = signal.cpu
            if cpu is not None and cpu > threshold:
                return True
        threshold = self.load_threshold
        if threshold is None:
            return False
        load = signal.load_per_cpu
        return load is not None and load > threshold

    def shed(self, state: InterfaceState, load_test: bool, now: float) -> bool:
        """Whether to shed one more request of ``state`` now (the caller counts it in flight if not)."""
        inflight = state.inflight
        mc = self.max_concurrency
        if mc is not None:
            cap = self.load_cap if load_test else mc
            assert cap is not None
            if inflight >= cap:
                return True
        if not self.overloaded():
            return False
        if load_test:
            return True
        if inflight < 1:
            return False
        capacity = state.capacity(now)
        return capacity is not None and inflight >= capacity * PROBE_GAIN

    def view(self, now: float) -> dict[str, object]:
        return {
            "cpu_threshold": self.limit.cpu_threshold,
            "load_threshold": self.limit.load_threshold,
            "max_concurrency": self.max_concurrency,
            "overloaded": self.overloaded(),
            "interfaces": {name: s.view(now) for name, s in sorted(self.interfaces.items())},
        }

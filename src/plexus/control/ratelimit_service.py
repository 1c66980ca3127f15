"""The control plane's global rate-limit token service (``plexus.control.v1.RateLimit/Acquire``).

One budget per (policy, rule, key): ``requestsPerUnit`` per fixed window of a second or a minute, aligned to
the wall clock (epoch multiples), shared by every sidecar of the policy's host. Sidecars ask for tokens in
batches (``plexus.proxy.ratelimit``) and are granted what is left of the window, up to what they asked, with
how long the grant is valid (the rest of the window). A policy or rule the control plane does not hold (it
was deleted since the sidecar's snapshot) has no budget: everything asked is granted.

``TokenWindows`` is the pure core (clock passed in); ``RateLimitServicer`` serves it on grpc.aio;
``add_ratelimit_service`` is the one line the control plane's composition root calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Final

import grpc

from plexus.config.policy_kinds import GlobalRateLimit, RateLimitPolicy
from plexus.proto import control_pb2 as pb
from plexus.proto import control_pb2_grpc as pb_grpc

MAX_WINDOWS: Final = 100_000  # live (policy, rule, key) windows; keys are callers, bounded per sidecar too
UNBOUNDED_VALID_MS: Final = 1000  # a grant for a rule without budget is re-asked for within a second
UNIT_SECONDS: Final = {"second": 1.0, "minute": 60.0}
MAX_GRANT: Final = 2**32 - 1  # AcquireResponse.granted is a uint32

RateLimits = Callable[[], Iterable[RateLimitPolicy]]


class TokenWindows:
    """Fixed-window counters per (policy, rule, key); ``limits`` gives the policies in force now."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.time) -> None:
        self._limits = limits
        self._clock = clock
        self._source: object = None  # the policies the index was built from (rebuilt when they change)
        self._index: dict[tuple[str, str], GlobalRateLimit] = {}
        self._windows: dict[tuple[str, str, str], list[float]] = {}  # → [window start, used]
        self.granted_total = 0
        self.refused_total = 0  # tokens asked for and not granted

    def rule(self, policy: str, rule: str) -> GlobalRateLimit | None:
        policies = self._limits()
        if policies is not self._source:
            self._source = policies
            self._index = {(f"{p.namespace}/{p.name}", g.name): g for p in policies for g in p.global_}
        return self._index.get((policy, rule))

    def acquire(self, policy: str, rule: str, key: str, tokens: int) -> tuple[int, int]:
        """(granted, valid_ms) for an ask of ``tokens``."""
        config = self.rule(policy, rule)
        if config is None:
            return min(tokens, MAX_GRANT), UNBOUNDED_VALID_MS
        now = self._clock()
        unit = UNIT_SECONDS[config.unit]
        start = math.floor(now / unit) * unit
        valid_ms = max(1, math.ceil((start + unit - now) * 1000))
        name = (policy, rule, key)
        window = self._windows.get(name)
        if window is None or window[0] != start:
            if window is None and len(self._windows) >= MAX_WINDOWS:
                self._prune(now)
                if len(self._windows) >= MAX_WINDOWS:
                    self.refused_total += tokens
                    return 0, valid_ms  # refuse rather than grow without bound
            window = self._windows[name] = [start, 0.0]
        left = config.requests_per_unit - int(window[1])
        granted = max(0, min(tokens, left))
        window[1] += granted
        self.granted_total += granted
        self.refused_total += tokens - granted
        return granted, valid_ms

    def _prune(self, now: float) -> None:
        """Drop windows that have ended (their next ask starts a new one anyway)."""
        limits = {name: UNIT_SECONDS[g.unit] for name, g in self._index.items()}
        ended = [
            name
            for name, (start, _) in self._windows.items()
            if start + limits.get((name[0], name[1]), 60.0) <= now
        ]
        for name in ended:
            del self._windows[name]

    def view(self) -> dict[str, object]:
        return {
            "windows": len(self._windows),
            "granted_total": self.granted_total,
            "refused_total": self.refused_total,
        }


class RateLimitServicer(pb_grpc.RateLimitServicer):
    def __init__(self, windows: TokenWindows) -> None:
        self.windows = windows

    async def Acquire(
        self, request: pb.AcquireRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.AcquireResponse:
        granted, valid_ms = self.windows.acquire(request.policy, request.rule, request.key, request.tokens)
        return pb.AcquireResponse(granted=granted, valid_ms=valid_ms)


def add_ratelimit_service(
    server: grpc.aio.Server, limits: RateLimits, clock: Callable[[], float] = time.time
) -> TokenWindows:
    """Serve the token service on ``server`` (before it starts); ``limits()`` answers the RateLimitPolicy
    resources in force (called per ask: return the same object while they do not change)."""
    windows = TokenWindows(limits, clock)
    pb_grpc.add_RateLimitServicer_to_server(RateLimitServicer(windows), server)  # type: ignore[no-untyped-call]
    return windows

"""Admission on a provider sidecar's ingress: local and global rate limits and adaptive shedding.

Theory of operation. ``compile_gates`` turns the ``RateLimitPolicy`` resources into one ``Gate`` per protected
service (the policy's ``host``); the data plane puts it on that service's ingress Route. Per request the
transport calls ``gate.admit(lookup)``: None admits (the transport then calls ``gate.done(started, lookup)``
once the request has ended), ``reasons.RATE_LIMITED`` asks for a 429 (gRPC RESOURCE_EXHAUSTED) and
``reasons.LOAD_SHED`` for a 503 (UNAVAILABLE). Checks run in this order: adaptive shedding, local rules,
global rules; every rule whose ``match`` holds must admit.

- Local: a token bucket per rule (per caller value of ``callerHeader`` when ``perCaller``: at most
  ``MAX_KEYS`` buckets, then full buckets are dropped and new callers share one overflow bucket), refilled
  lazily from the clock on each take: no timers.
- Global: one budget per (policy, rule, key) shared by every sidecar of the service, kept by the control
  plane's RateLimit service in fixed windows. A request never waits on the network: each key holds a lease of
  tokens granted in a batch, and the next batch is asked for in the background (``QuotaSource``) when the
  lease runs low. When the lease is empty (at a window's start, or after a burst), requests are admitted on
  credit (at most ``MAX_SHARE`` of the budget) while the ask is on its way; the credit is charged to the
  grant. When the service says the window is spent (it grants less than asked), the key refuses until the
  window ends. While the service cannot be reached (``RETRY_AFTER`` after each failure),
  ``fallbackPerSecond`` applies as a local bucket (none: admit).
  Batch size: ``ceil(rate * BATCH_SECONDS)`` from the key's own recent rate, between 1 and ``MAX_SHARE``
  of the window's budget: the trade between round trips and error. Round trips per key and sidecar stay
  near 1/BATCH_SECONDS a second at any rate (a fixed batch would cost one per request at high rates or
  strand many tokens at low ones); the error per window is bounded by what sidecars hold: tokens granted
  and left unused (at most one batch and a half per sidecar: under the limit, they expire) and credit the
  service could not grant (at most ``MAX_SHARE`` of the budget per sidecar above the limit, only in a
  window already spent by others when the credit was taken; counted as ``overrun``).
- Adaptive: see ``plexus.proxy.adaptive``.

``done`` only matters for adaptive rules (in-flight counts and response times per interface); without one it
returns at once. Counters are plain integers: ``GateStats`` per service, ``limited`` per rule; both survive a
policy push that keeps the rule (as do its buckets and leases).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Final, Protocol

from plexus.config.policy_kinds import GlobalRateLimit, LocalRateLimit, RateLimitPolicy
from plexus.config.route_config import HttpMatch
from plexus.core import reasons
from plexus.proxy.adaptive import AdaptiveState, InterfaceState, LoadSignal
from plexus.proxy.route_table import _Match
from plexus.proxy.stream import HeaderLookup

Clock = Callable[[], float]
QuotaAnswer = Callable[[int | None, float], None]

MAX_KEYS: Final = 1024  # buckets (leases) per rule when per caller: callers choose the header's value
OVERFLOW_KEY: Final = "~other"  # where callers beyond MAX_KEYS share one bucket
BATCH_SECONDS: Final = 0.1  # a batch lasts ~100 ms at the key's current rate: ~10 asks per second per key
MAX_SHARE: Final = 0.05  # a sidecar holds at most 5% of a window's budget: the bound on stranded tokens
INITIAL_BATCH: Final = 10  # before the key has a rate
PRUNE_EVERY: Final = 1.0  # seconds between scans for unused keys when a rule is full (a scan is O(MAX_KEYS))
RETRY_AFTER: Final = 1.0  # seconds of fallback after the token service failed to answer
UNITS: Final = {"second": 1.0, "minute": 60.0}


class QuotaSource(Protocol):
    """Where global tokens come from (``plexus.clients.ratelimit_async.AsyncQuotaClient`` in a sidecar).

    ``acquire`` starts one ask in the background and returns at once; later, on the same loop, it calls
    ``answer(granted, valid_seconds)``: ``granted`` tokens (0..tokens) to use within ``valid_seconds``, or
    ``granted=None`` when the service could not be reached or failed. It may answer before returning."""

    def acquire(self, policy: str, rule: str, key: str, tokens: int, answer: QuotaAnswer) -> None: ...


class GateStats:
    """One service's admission counters (kept across policy pushes)."""

    __slots__ = ("admitted", "shed", "shed_load_test")

    def __init__(self) -> None:
        self.admitted = 0
        self.shed = 0  # every request shed by the adaptive rule, load-test ones included
        self.shed_load_test = 0


# ---------------------------------------------------------------------------------------------- local
class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp

    def take(self, size: float, rate: float, now: float) -> bool:
        tokens = self.tokens + (now - self.stamp) * rate
        if tokens > size:
            tokens = size
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def full(self, size: float, rate: float, now: float) -> bool:
        return self.tokens + (now - self.stamp) * rate >= size


def _matches(match: Iterable[HttpMatch]) -> tuple[_Match, ...]:
    return tuple(_Match(m) for m in match)


def _holds(matches: tuple[_Match, ...], lookup: HeaderLookup) -> bool:
    for m in matches:  # noqa: SIM110 - a loop: no generator per request
        if m.holds(lookup):
            return True
    return False


class _Keyed:
    """Per-caller key selection shared by local and global rules."""

    __slots__ = ("caller_header", "per_caller")

    def __init__(self, per_caller: bool, caller_header: str) -> None:
        self.per_caller = per_caller
        self.caller_header = caller_header.lower()

    def key(self, lookup: HeaderLookup) -> str:
        if not self.per_caller:
            return ""
        return lookup(self.caller_header) or ""


class LocalRule(_Keyed):
    __slots__ = ("buckets", "config", "label", "limited", "matches", "pruned_at", "rate", "size")

    def __init__(self, policy: str, config: LocalRateLimit) -> None:
        super().__init__(config.per_caller, config.caller_header)
        self.config = config
        self.label = f"{policy}/{config.name}"
        self.matches = _matches(config.match)
        self.size = float(config.tokens)
        self.rate = float(config.fill_per_second)
        self.buckets: dict[str, _Bucket] = {}
        self.limited = 0
        self.pruned_at = -PRUNE_EVERY

    def take(self, lookup: HeaderLookup, now: float) -> bool:
        if not self.per_caller:  # one bucket: no key to read
            bucket = self.buckets.get("")
            if bucket is None:
                bucket = self.buckets[""] = _Bucket(self.size, now)
            return bucket.take(self.size, self.rate, now)
        key = lookup(self.caller_header) or ""
        buckets = self.buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= MAX_KEYS:
                if now - self.pruned_at >= PRUNE_EVERY:
                    self.pruned_at = now
                    self._prune(now)
                if len(buckets) >= MAX_KEYS:
                    key = OVERFLOW_KEY
                    bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = _Bucket(self.size, now)
        return bucket.take(self.size, self.rate, now)

    def _prune(self, now: float) -> None:
        """Drop the buckets that have refilled: a new one would be the same."""
        size, rate = self.size, self.rate
        for key in [k for k, b in self.buckets.items() if b.full(size, rate, now) and k != OVERFLOW_KEY]:
            del self.buckets[key]


# --------------------------------------------------------------------------------------------- global
class _Lease:
    """The tokens one sidecar holds for one global key, and the state of its asks."""

    __slots__ = (
        "asked",
        "batch",
        "debt",
        "exhausted_until",
        "expires",
        "fallback",
        "pending",
        "rate_since",
        "tokens",
        "unreachable_until",
        "used",
    )

    def __init__(self, batch: int, now: float) -> None:
        self.tokens = 0
        self.expires = 0.0
        self.debt = 0  # admitted on credit while the ask was on its way
        self.pending = False
        self.asked = 0
        self.exhausted_until = 0.0
        self.unreachable_until = 0.0
        self.batch = batch
        self.used = 0  # admitted since rate_since: the key's recent rate, for the next batch size
        self.rate_since = now
        self.fallback: _Bucket | None = None


class GlobalRule(_Keyed):
    __slots__ = (
        "asks",
        "clock",
        "config",
        "failures",
        "fallback_admitted",
        "fallback_rate",
        "label",
        "leases",
        "limited",
        "matches",
        "max_batch",
        "overrun",
        "policy",
        "pruned_at",
        "quota",
        "window",
    )

    def __init__(self, policy: str, config: GlobalRateLimit, quota: QuotaSource | None, clock: Clock) -> None:
        super().__init__(config.per_caller, config.caller_header)
        self.clock = clock  # an answer arrives later: it reads the time itself
        self.policy = policy
        self.config = config
        self.label = f"{policy}/{config.name}"
        self.matches = _matches(config.match)
        self.quota = quota
        self.window = UNITS[config.unit]
        self.max_batch = max(1, int(config.requests_per_unit * MAX_SHARE))
        self.fallback_rate = config.fallback_per_second
        self.leases: dict[str, _Lease] = {}
        self.limited = 0
        self.asks = 0
        self.failures = 0
        self.fallback_admitted = 0
        self.overrun = 0  # credit the service could not grant: admitted above the global limit
        self.pruned_at = -PRUNE_EVERY

    def take(self, lookup: HeaderLookup, now: float) -> bool:
        key = self.key(lookup)
        lease = self.leases.get(key)
        if lease is None:
            lease = self._new_lease(key, now)
        if self.quota is None or now < lease.unreachable_until:
            return self._fallback(lease, now)
        if lease.tokens > 0 and now < lease.expires:
            lease.tokens -= 1
            lease.used += 1
            if not lease.pending and lease.tokens <= lease.batch // 2:
                self._ask(key, lease, now)
            return True
        if now >= lease.expires:
            lease.tokens = 0
        if now < lease.exhausted_until:
            return False
        if not lease.pending:
            self._ask(key, lease, now)
            if now < lease.unreachable_until:  # the source answered at once that it cannot be reached
                return self._fallback(lease, now)
            if lease.tokens > 0 and now < lease.expires:  # answered at once with tokens
                lease.tokens -= 1
                lease.used += 1
                return True
            if not lease.pending and now < lease.exhausted_until:
                return False
        if lease.pending and lease.debt < self.max_batch:
            lease.debt += 1
            lease.used += 1
            return True
        return False

    def _new_lease(self, key: str, now: float) -> _Lease:
        leases = self.leases
        if len(leases) >= MAX_KEYS:
            if now - self.pruned_at >= PRUNE_EVERY:
                self.pruned_at = now
                for k in [
                    k for k, v in leases.items() if not v.pending and now >= v.expires and k != OVERFLOW_KEY
                ]:
                    del leases[k]
            if len(leases) >= MAX_KEYS:
                key = OVERFLOW_KEY
                existing = leases.get(key)
                if existing is not None:
                    return existing
        lease = leases[key] = _Lease(min(INITIAL_BATCH, self.max_batch), now)
        return lease

    def _fallback(self, lease: _Lease, now: float) -> bool:
        rate = self.fallback_rate
        if rate is None:
            self.fallback_admitted += 1
            return True
        bucket = lease.fallback
        if bucket is None:
            bucket = lease.fallback = _Bucket(max(1.0, rate), now)
        if bucket.take(max(1.0, rate), rate, now):  # burst: one second's worth
            self.fallback_admitted += 1
            return True
        return False

    def _ask(self, key: str, lease: _Lease, now: float) -> None:
        quota = self.quota
        assert quota is not None
        elapsed = now - lease.rate_since
        if elapsed >= BATCH_SECONDS:
            rate = lease.used / elapsed
            lease.batch = min(self.max_batch, max(1, math.ceil(rate * BATCH_SECONDS)))
            lease.used = 0
            lease.rate_since = now
        asked = lease.batch + lease.debt
        lease.pending = True
        lease.asked = asked
        self.asks += 1

        def answer(granted: int | None, valid: float) -> None:
            self._answered(lease, granted, valid)

        quota.acquire(self.policy, self.config.name, key, asked, answer)

    def _answered(self, lease: _Lease, granted: int | None, valid: float) -> None:
        lease.pending = False
        debt, lease.debt = lease.debt, 0
        if granted is None:
            self.failures += 1
            lease.unreachable_until = self.clock() + RETRY_AFTER
            return
        now = self.clock()
        expires = now + valid
        net = granted - debt
        if net < 0:
            self.overrun += -net
            net = 0
        same_window = now < lease.expires and abs(expires - lease.expires) < self.window / 2
        lease.tokens = (lease.tokens if same_window else 0) + net
        lease.expires = expires
        if granted < lease.asked:
            lease.exhausted_until = expires  # the window is spent: refuse once these run out


# ----------------------------------------------------------------------------------------------- gate
class Gate:
    """Admission for one service's ingress; see the module's docstring."""

    __slots__ = ("adaptive", "clock", "global_", "local", "policies", "service", "stats")

    def __init__(
        self,
        service: str,
        clock: Clock,
        local: tuple[LocalRule, ...] = (),
        global_: tuple[GlobalRule, ...] = (),
        adaptive: AdaptiveState | None = None,
        stats: GateStats | None = None,
        policies: tuple[str, ...] = (),
    ) -> None:
        self.service = service
        self.clock = clock
        self.local = local
        self.global_ = global_
        self.adaptive = adaptive
        self.stats = stats or GateStats()
        self.policies = policies  # namespace/name of every policy merged here

    @property
    def uses_load(self) -> bool:
        return self.adaptive is not None and self.adaptive.uses_load

    def admit(self, lookup: HeaderLookup) -> str | None:
        """None: admitted (call ``done`` when it ends); else the reason code of the local reply."""
        now = self.clock()
        adaptive = self.adaptive
        state: InterfaceState | None = None
        if adaptive is not None:
            state = adaptive.interface(lookup)
            load_test = lookup(adaptive.header) is not None
            if adaptive.shed(state, load_test, now):
                stats = self.stats
                stats.shed += 1
                if load_test:
                    stats.shed_load_test += 1
                return reasons.LOAD_SHED
        for rule in self.local:
            matches = rule.matches
            if matches and not _holds(matches, lookup):
                continue
            if not rule.take(lookup, now):
                rule.limited += 1
                return reasons.RATE_LIMITED
        for grule in self.global_:
            gmatches = grule.matches
            if gmatches and not _holds(gmatches, lookup):
                continue
            if not grule.take(lookup, now):
                grule.limited += 1
                return reasons.RATE_LIMITED
        self.stats.admitted += 1
        if state is not None:
            state.inflight += 1
        return None

    def done(self, started: float, lookup: HeaderLookup | None = None) -> None:
        """An admitted request ended; ``started``: when it was admitted, on ``clock`` (time.monotonic in a
        sidecar). Pass the request's ``lookup`` so adaptive baselines are kept per interface; without it the
        end is charged to the interface with the most requests in flight."""
        adaptive = self.adaptive
        if adaptive is None:
            return
        if lookup is not None:
            state = adaptive.interface(lookup)
        else:
            busiest = max(adaptive.interfaces.values(), key=_inflight, default=None)
            if busiest is None:
                return
            state = busiest
        if state.inflight > 0:
            state.inflight -= 1
        now = self.clock()
        state.record(now, now - started)

    def view(self) -> dict[str, object]:
        """For /config_dump."""
        now = self.clock()
        stats = self.stats
        return {
            "policies": list(self.policies),
            "admitted": stats.admitted,
            "shed": stats.shed,
            "shed_load_test": stats.shed_load_test,
            "local": [
                {
                    "rule": r.label,
                    "tokens": r.config.tokens,
                    "fill_per_second": r.rate,
                    "keys": len(r.buckets),
                    "limited": r.limited,
                }
                for r in self.local
            ],
            "global": [
                {
                    "rule": r.label,
                    "requests_per_unit": r.config.requests_per_unit,
                    "unit": r.config.unit,
                    "keys": len(r.leases),
                    "limited": r.limited,
                    "asks": r.asks,
                    "failures": r.failures,
                    "fallback_admitted": r.fallback_admitted,
                    "overrun": r.overrun,
                }
                for r in self.global_
            ],
            "adaptive": None if self.adaptive is None else self.adaptive.view(now),
        }


def _inflight(state: InterfaceState) -> int:
    return state.inflight


def compile_gates(
    policies: Iterable[RateLimitPolicy],
    quota: QuotaSource | None,
    clock: Clock,
    *,
    load: LoadSignal | None = None,
    previous: Mapping[str, Gate] | None = None,
) -> dict[str, Gate]:
    """One Gate per protected service; policies for the same service are merged (their rules all apply;
    the first adaptive rule in namespace/name order wins). Rules equal to one in ``previous`` keep its
    buckets, leases and counters, and a service's counters and adaptive interfaces carry over, so a
    policy push does not refill every bucket. Pure; raises nothing for a policy the parser accepted."""
    load = load or LoadSignal()
    previous = previous or {}
    grouped: dict[str, list[RateLimitPolicy]] = {}
    for policy in sorted(policies, key=lambda p: (p.namespace, p.name)):
        grouped.setdefault(policy.host, []).append(policy)
    gates: dict[str, Gate] = {}
    for service, group in grouped.items():
        old = previous.get(service)
        old_local = {(r.label, r.config): r for r in old.local} if old is not None else {}
        old_global = {(r.label, r.config): r for r in old.global_} if old is not None else {}
        local: list[LocalRule] = []
        global_: list[GlobalRule] = []
        adaptive: AdaptiveState | None = None
        for policy in group:
            name = f"{policy.namespace}/{policy.name}"
            for lrule in policy.local:
                kept = old_local.get((f"{name}/{lrule.name}", lrule))
                local.append(kept if kept is not None else LocalRule(name, lrule))
            for grule in policy.global_:
                gkept = old_global.get((f"{name}/{grule.name}", grule))
                if gkept is not None and gkept.quota is quota:
                    global_.append(gkept)
                else:
                    global_.append(GlobalRule(name, grule, quota, clock))
            if policy.adaptive is not None and adaptive is None:
                adaptive = AdaptiveState(policy.adaptive, load)
                if old is not None and old.adaptive is not None:
                    adaptive.interfaces = old.adaptive.interfaces  # in-flight counts span the push
        gates[service] = Gate(
            service,
            clock,
            tuple(local),
            tuple(global_),
            adaptive,
            old.stats if old is not None else None,
            tuple(f"{p.namespace}/{p.name}" for p in group),
        )
    return gates


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(gates: Mapping[str, Gate]) -> str:
    """Prometheus text for /stats/prometheus: admitted, limited per rule, shed (load test apart)."""
    if not gates:
        return ""
    lines = [
        "# TYPE plexus_ratelimit_admitted_total counter",
        *(
            f'plexus_ratelimit_admitted_total{{service="{_label(s)}"}} {g.stats.admitted}'
            for s, g in sorted(gates.items())
        ),
        "# TYPE plexus_ratelimit_limited_total counter",
    ]
    for service, gate in sorted(gates.items()):
        for kind, rules in (("local", gate.local), ("global", gate.global_)):
            for rule in rules:
                lines.append(
                    f'plexus_ratelimit_limited_total{{service="{_label(service)}",kind="{kind}",'
                    f'rule="{_label(rule.label)}"}} {rule.limited}'
                )
    lines.append("# TYPE plexus_ratelimit_shed_total counter")
    for service, gate in sorted(gates.items()):
        if gate.adaptive is not None:
            s = _label(service)
            stats = gate.stats
            lines.append(
                f'plexus_ratelimit_shed_total{{service="{s}",load_test="false"}} '
                f"{stats.shed - stats.shed_load_test}"
            )
            lines.append(
                f'plexus_ratelimit_shed_total{{service="{s}",load_test="true"}} {stats.shed_load_test}'
            )
    lines.append("# TYPE plexus_ratelimit_global_fallback_total counter")
    for service, gate in sorted(gates.items()):
        for grule in gate.global_:
            lines.append(
                f'plexus_ratelimit_global_fallback_total{{service="{_label(service)}",'
                f'rule="{_label(grule.label)}"}} {grule.fallback_admitted}'
            )
    return "\n".join(lines) + "\n"

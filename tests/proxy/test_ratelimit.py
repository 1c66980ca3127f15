"""Gates: local token buckets, per-caller buckets, global leases over the real token windows, carry-over."""

from __future__ import annotations

from plexus.config.policy_kinds import (
    AdaptiveLimit,
    GlobalRateLimit,
    LocalRateLimit,
    RateLimitPolicy,
)
from plexus.config.route_config import HttpMatch, StringMatch
from plexus.control.ratelimit_service import TokenWindows
from plexus.core import reasons
from plexus.proxy import ratelimit
from plexus.proxy.adaptive import LoadSignal
from plexus.proxy.ratelimit import Gate, QuotaAnswer, compile_gates, render_metrics
from plexus.proxy.stream import HeaderLookup, lookup_from_mapping


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def req(**headers: str) -> HeaderLookup:
    return lookup_from_mapping({k.replace("_", "-"): v for k, v in headers.items()})


def rpc(method: str, caller: str | None = None) -> HeaderLookup:
    headers = {":rpc-method": method}
    if caller is not None:
        headers["x-plexus-caller"] = caller
    return lookup_from_mapping(headers)


def policy(
    *,
    local: tuple[LocalRateLimit, ...] = (),
    global_: tuple[GlobalRateLimit, ...] = (),
    adaptive: AdaptiveLimit | None = None,
    name: str = "p",
    host: str = "orders",
) -> RateLimitPolicy:
    return RateLimitPolicy(name, "default", host, local, global_, adaptive)


def method_match(method: str) -> tuple[HttpMatch, ...]:
    return (HttpMatch(headers=((":rpc-method", StringMatch("exact", method)),)),)


def admitted(gate: Gate, lookup: HeaderLookup, n: int) -> int:
    return sum(gate.admit(lookup) is None for _ in range(n))


# -------------------------------------------------------------------------------------------- local
def test_local_bucket_limits_beyond_its_size_and_refills_from_the_clock() -> None:
    clock = Clock()
    gates = compile_gates([policy(local=(LocalRateLimit("all", 3, 2.0),))], None, clock)
    gate = gates["orders"]
    assert admitted(gate, rpc("get"), 3) == 3
    assert gate.admit(rpc("get")) == reasons.RATE_LIMITED
    clock.now += 0.5  # one token at 2/s
    assert gate.admit(rpc("get")) is None
    assert gate.admit(rpc("get")) == reasons.RATE_LIMITED
    clock.now += 100.0  # refills up to the bucket's size, not beyond
    assert admitted(gate, rpc("get"), 10) == 3
    assert gate.stats.admitted == 7
    assert gate.local[0].limited == 9
    text = render_metrics(gates)
    assert 'plexus_ratelimit_limited_total{service="orders",kind="local",rule="default/p/all"} 9' in text
    assert 'plexus_ratelimit_admitted_total{service="orders"} 7' in text


def test_rules_apply_only_where_their_match_holds() -> None:
    clock = Clock()
    rule = LocalRateLimit("create", 1, 0.001, match=method_match("create"))
    gate = compile_gates([policy(local=(rule,))], None, clock)["orders"]
    assert gate.admit(rpc("create")) is None
    assert gate.admit(rpc("create")) == reasons.RATE_LIMITED
    assert admitted(gate, rpc("get"), 50) == 50  # another method: no rule applies
    assert admitted(gate, req(), 5) == 5  # no :rpc-method at all


def test_per_caller_buckets_are_separate_and_bounded() -> None:
    clock = Clock()
    rule = LocalRateLimit("caller", 2, 0.001, per_caller=True)
    gate = compile_gates([policy(local=(rule,))], None, clock)["orders"]
    assert admitted(gate, rpc("m", "a"), 5) == 2
    assert admitted(gate, rpc("m", "b"), 5) == 2  # b has its own bucket
    assert admitted(gate, rpc("m"), 5) == 2  # no caller header: one bucket for all such callers
    for i in range(ratelimit.MAX_KEYS * 2):
        gate.admit(rpc("m", f"c{i}"))
    buckets = gate.local[0].buckets
    assert len(buckets) <= ratelimit.MAX_KEYS + 1
    assert ratelimit.OVERFLOW_KEY in buckets  # late callers share one bucket: they cannot mint tokens
    clock.now += 10_000.0  # every bucket refilled: a new caller's bucket replaces full ones
    assert gate.admit(rpc("m", "late")) is None
    assert "late" in buckets


def test_policies_for_one_host_merge_and_a_push_keeps_unchanged_buckets() -> None:
    clock = Clock()
    one = policy(local=(LocalRateLimit("a", 2, 0.001),), name="one")
    two = policy(local=(LocalRateLimit("b", 5, 0.001),), name="two")
    other = policy(local=(LocalRateLimit("c", 1, 0.001),), name="three", host="users")
    gates = compile_gates([two, one, other], None, clock)
    assert set(gates) == {"orders", "users"}
    assert gates["orders"].policies == ("default/one", "default/two")
    assert admitted(gates["orders"], rpc("m"), 5) == 2  # both rules apply: the smaller wins
    again = compile_gates([one, two, other], None, clock, previous=gates)
    assert again["orders"].admit(rpc("m")) == reasons.RATE_LIMITED  # bucket kept: the push refilled nothing
    assert again["orders"].stats is gates["orders"].stats
    changed = policy(local=(LocalRateLimit("a", 3, 0.001),), name="one")
    fresh = compile_gates([changed, two], None, clock, previous=again)
    assert fresh["orders"].admit(rpc("m")) is None  # a changed rule starts full


# ------------------------------------------------------------------------------------------- global
class DeferredQuota:
    """Answers asks later (as the network does), from the real token windows of the control plane."""

    def __init__(self, windows: TokenWindows) -> None:
        self.windows = windows
        self.asks: list[tuple[str, str, str, int, QuotaAnswer]] = []
        self.reachable = True
        self.asked_tokens: list[int] = []

    def acquire(self, policy: str, rule: str, key: str, tokens: int, answer: QuotaAnswer) -> None:
        self.asks.append((policy, rule, key, tokens, answer))
        self.asked_tokens.append(tokens)

    def deliver(self) -> int:
        asks, self.asks = self.asks, []
        for policy, rule, key, tokens, answer in asks:
            if not self.reachable:
                answer(None, 0.0)
                continue
            granted, valid_ms = self.windows.acquire(policy, rule, key, tokens)
            answer(granted, valid_ms / 1000.0)
        return len(asks)


def test_global_limit_is_shared_by_two_sidecars_within_the_batch_bounds() -> None:
    clock = Clock(5000.0)
    rule = GlobalRateLimit("all", 200, "second")
    pol = policy(global_=(rule,))
    windows = TokenWindows(lambda: (pol,), clock)
    quotas = [DeferredQuota(windows), DeferredQuota(windows)]
    gates = [compile_gates([pol], q, clock)["orders"] for q in quotas]
    per_window: list[int] = []
    for _second in range(4):
        start = clock.now
        total = 0
        for step in range(1000):  # 1000 requests per second offered to each sidecar, 200 allowed in all
            clock.now = start + step / 1000.0
            for gate, quota in zip(gates, quotas, strict=True):
                total += gate.admit(rpc("m")) is None
                if step % 3 == 0:
                    quota.deliver()  # an answer every ~3 ms
        per_window.append(total)
        clock.now = start + 1.0
    max_batch = ratelimit.GlobalRule("p", rule, None, clock).max_batch
    for total in per_window:
        assert 200 - 2 * (max_batch + max_batch // 2) <= total <= 200 + 2 * max_batch, per_window
    overrun = sum(g.global_[0].overrun for g in gates)
    assert sum(per_window) <= 4 * 200 + overrun
    assert gates[0].global_[0].limited > 0
    assert max(quotas[0].asked_tokens) <= 2 * max_batch  # batch plus at most one batch of credit


def test_global_batch_follows_the_rate_and_stays_within_its_share() -> None:
    clock = Clock(7000.0)
    rule = GlobalRateLimit("all", 10_000, "second")
    pol = policy(global_=(rule,))
    quota = DeferredQuota(TokenWindows(lambda: (pol,), clock))
    gate = compile_gates([pol], quota, clock)["orders"]
    for step in range(2000):  # 2000/s for one second
        clock.now = 7000.0 + step / 2000.0
        assert gate.admit(rpc("m")) is None
        quota.deliver()
    asked = quota.asked_tokens
    assert asked[0] == ratelimit.INITIAL_BATCH
    # 2000/s * 0.1 s = 200 per batch, capped at 5% of 10 000 = 500: far fewer asks than requests
    assert max(asked) <= 500
    assert 150 <= asked[-1] <= 500
    assert len(asked) < 40


def test_global_window_spent_refuses_until_it_ends() -> None:
    clock = Clock(9000.0)
    rule = GlobalRateLimit("all", 5, "second")
    pol = policy(global_=(rule,))
    quota = DeferredQuota(TokenWindows(lambda: (pol,), clock))
    gate = compile_gates([pol], quota, clock)["orders"]
    results = []
    for _ in range(40):
        results.append(gate.admit(rpc("m")))
        quota.deliver()
    grule = gate.global_[0]
    # 5 in the window; credit taken when the window was already spent is the only excess, at most a batch
    assert results.count(None) == 5 + grule.overrun
    assert grule.overrun <= grule.max_batch
    assert set(results) - {None} == {reasons.RATE_LIMITED}
    assert quota.deliver() == 0  # spent: no more asks in this window
    clock.now = 9001.0
    assert gate.admit(rpc("m")) is None  # a new window


def test_global_per_caller_budgets_are_separate() -> None:
    clock = Clock(11_000.0)
    rule = GlobalRateLimit("each", 5, "second", per_caller=True)
    pol = policy(global_=(rule,))
    windows = TokenWindows(lambda: (pol,), clock)
    quota = DeferredQuota(windows)
    gate = compile_gates([pol], quota, clock)["orders"]
    counts = {}
    for caller in ("alice", "bob"):
        answers = []
        for _ in range(20):
            answers.append(gate.admit(rpc("m", caller)))
            quota.deliver()
        counts[caller] = answers.count(None)
    grule = gate.global_[0]
    assert set(grule.leases) == {"alice", "bob"}
    assert {k for _, _, k, _, _ in quota.asks} <= {"alice", "bob"}
    for caller in ("alice", "bob"):
        assert 5 <= counts[caller] <= 5 + grule.max_batch, counts


def test_global_falls_back_locally_while_the_service_cannot_be_reached() -> None:
    clock = Clock(3000.0)
    limited = GlobalRateLimit("fb", 1000, "second", fallback_per_second=3.0)
    open_ = GlobalRateLimit("open", 1000, "second", per_caller=True)
    quota = DeferredQuota(TokenWindows(lambda: (), clock))
    quota.reachable = False
    gates = compile_gates(
        [policy(global_=(limited,), name="a", host="x"), policy(global_=(open_,), name="b", host="y")],
        quota,
        clock,
    )
    x, y = gates["x"], gates["y"]
    x.admit(rpc("m"))
    y.admit(rpc("m"))
    quota.deliver()  # both asks fail: fallback for RETRY_AFTER
    assert admitted(x, rpc("m"), 20) == 3  # fallbackPerSecond's bucket (one second of burst)
    assert admitted(y, rpc("m"), 20) == 20  # no fallback: admit
    assert quota.deliver() == 0  # no asks while in fallback
    clock.now += ratelimit.RETRY_AFTER
    quota.reachable = True
    x.admit(rpc("m"))
    assert quota.deliver() == 1  # asks again after RETRY_AFTER
    assert admitted(x, rpc("m"), 20) == 20  # the service's budget again
    assert x.global_[0].failures == 1
    no_source = compile_gates([policy(global_=(limited,))], None, clock)["orders"]
    assert admitted(no_source, rpc("m"), 10) == 3  # no --control: the fallback is the limit


def test_quota_answering_at_once_is_handled() -> None:
    clock = Clock(100.0)
    rule = GlobalRateLimit("all", 3, "second")
    pol = policy(global_=(rule,))
    windows = TokenWindows(lambda: (pol,), clock)

    class Immediate:
        def acquire(self, policy: str, rule: str, key: str, tokens: int, answer: QuotaAnswer) -> None:
            granted, valid_ms = windows.acquire(policy, rule, key, tokens)
            answer(granted, valid_ms / 1000.0)

    gate = compile_gates([pol], Immediate(), clock)["orders"]
    assert admitted(gate, rpc("m"), 10) == 3


# ------------------------------------------------------------------------------------------ adaptive
def test_adaptive_gate_counts_in_flight_and_sheds_by_concurrency() -> None:
    clock = Clock()
    signal = LoadSignal()
    pol = policy(adaptive=AdaptiveLimit(cpu_threshold=None, max_concurrency=4))
    gates = compile_gates([pol], None, clock, load=signal)
    gate = gates["orders"]
    assert not gate.uses_load
    assert admitted(gate, rpc("a"), 6) == 4
    assert admitted(gate, rpc("b"), 2) == 2  # another interface has its own count
    gate.done(clock.now, rpc("a"))
    assert gate.admit(rpc("a")) is None
    assert gate.stats.shed == 2
    assert 'plexus_ratelimit_shed_total{service="orders",load_test="false"} 2' in render_metrics(gates)
    # done without a lookup ends one request of the busiest interface
    gate.done(clock.now)
    assert gate.adaptive is not None
    assert gate.adaptive.interfaces["a"].inflight == 3

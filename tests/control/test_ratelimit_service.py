"""The global token service on a real grpcio server: fixed windows per (policy, rule, key), asked through
grpcio's own client and through the sidecar's grpc_h2 quota client."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc

from plexus.clients.ratelimit_async import MAX_CALLS, AsyncQuotaClient
from plexus.config.policy_kinds import GlobalRateLimit, RateLimitPolicy
from plexus.control.ratelimit_service import TokenWindows, add_ratelimit_service
from plexus.proto import control_pb2 as pb
from plexus.proto import control_pb2_grpc as pb_grpc

T = TypeVar("T")
WAIT = 10.0  # bounds, not timings: several helpers share two cores

POLICY = RateLimitPolicy(
    "limits",
    "shop",
    "orders",
    global_=(
        GlobalRateLimit("per-second", 10, "second"),
        GlobalRateLimit("per-minute", 25, "minute", per_caller=True),
    ),
)


class WallClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def serve(
    clock: WallClock, policies: list[RateLimitPolicy]
) -> tuple[grpc.aio.Server, int, TokenWindows]:
    server = grpc.aio.server()
    held = tuple(policies)
    windows = add_ratelimit_service(server, lambda: held, clock)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, windows


def test_windows_grant_what_is_left_and_reset_each_window_through_grpcio() -> None:
    clock = WallClock(1_000_000.25)

    async def main() -> None:
        server, port, windows = await serve(clock, [POLICY])
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.RateLimitStub(channel)  # type: ignore[no-untyped-call]

                async def ask(rule: str, tokens: int, key: str = "") -> tuple[int, int]:
                    r = await stub.Acquire(
                        pb.AcquireRequest(
                            node_id="n1", policy="shop/limits", rule=rule, key=key, tokens=tokens
                        ),
                        timeout=WAIT,
                    )
                    return r.granted, r.valid_ms

                assert await ask("per-second", 6) == (6, 750)  # valid for the rest of the second
                assert await ask("per-second", 6) == (4, 750)  # what is left
                assert await ask("per-second", 6) == (0, 750)
                clock.now = 1_000_001.9
                assert await ask("per-second", 6) == (6, 100)  # a new window
                # per caller: one budget per key, per minute
                assert (await ask("per-minute", 20, "a"))[0] == 20
                assert (await ask("per-minute", 20, "a"))[0] == 5
                assert (await ask("per-minute", 20, "b"))[0] == 20
                granted, valid_ms = await ask("per-minute", 1, "a")
                assert granted == 0 and 0 < valid_ms <= 60_000
                # a policy the control plane does not hold (deleted since the snapshot): no budget
                r = await stub.Acquire(
                    pb.AcquireRequest(policy="shop/gone", rule="x", tokens=7), timeout=WAIT
                )
                assert r.granted == 7
            assert windows.granted_total == 6 + 4 + 6 + 20 + 5 + 20  # budgeted grants only
        finally:
            await server.stop(0)

    run(main())


def test_the_policies_in_force_are_read_per_ask() -> None:
    clock = WallClock(2_000_000.0)
    current: list[tuple[RateLimitPolicy, ...]] = [()]
    windows = TokenWindows(lambda: current[0], clock)
    assert windows.acquire("shop/limits", "per-second", "", 50) == (50, 1000)  # not applied yet: no budget
    current[0] = (POLICY,)
    assert windows.acquire("shop/limits", "per-second", "", 50) == (10, 1000)


def test_sidecar_quota_client_asks_over_grpc_h2_and_reports_an_unreachable_service() -> None:
    clock = WallClock(3_000_000.5)

    async def main() -> None:
        server, port, _ = await serve(clock, [POLICY])
        client = AsyncQuotaClient(f"127.0.0.1:{port}", "node-1", reconnect_after=0.2)
        answers: asyncio.Queue[tuple[int | None, float]] = asyncio.Queue()

        def answer(granted: int | None, valid: float) -> None:
            answers.put_nowait((granted, valid))

        try:
            for _ in range(3):  # asks made while connecting wait for the connection
                client.acquire("shop/limits", "per-second", "", 4, answer)
            got = [await asyncio.wait_for(answers.get(), WAIT) for _ in range(3)]
            assert sorted(g for g, _ in got) == [2, 4, 4]  # type: ignore[type-var]
            assert all(abs(v - 0.5) < 1e-6 for _, v in got)
            assert client.connected
        finally:
            await server.stop(0)
        # the service went away: the ask fails, and further asks fail at once for reconnect_after
        client.acquire("shop/limits", "per-second", "", 1, answer)
        assert (await asyncio.wait_for(answers.get(), WAIT))[0] is None
        client.acquire("shop/limits", "per-second", "", 1, answer)
        assert (await asyncio.wait_for(answers.get(), WAIT))[0] is None
        assert client.failures >= 2
        await client.aclose()

    run(main())


def test_quota_client_keeps_asks_beyond_its_call_limit_for_later() -> None:
    clock = WallClock(4_000_000.0)

    async def main() -> None:
        server, port, windows = await serve(clock, [POLICY])
        client = AsyncQuotaClient(f"127.0.0.1:{port}", "node-2")
        answers: list[int | None] = []
        every = asyncio.Event()
        asks = MAX_CALLS * 3

        def answer(granted: int | None, valid: float) -> None:
            answers.append(granted)
            if len(answers) == asks:
                every.set()

        try:
            client.acquire("shop/limits", "per-minute", "warm-up", 1, answer)  # connect first
            await asyncio.wait_for(_until(lambda: client.connected), WAIT)
            for i in range(asks - 1):  # one key per caller: more calls than the connection takes at once
                client.acquire("shop/limits", "per-minute", f"caller-{i}", 2, answer)
            await asyncio.wait_for(every.wait(), WAIT)
            assert answers.count(2) == asks - 1 and answers.count(1) == 1, answers
            assert windows.granted_total == 2 * (asks - 1) + 1
        finally:
            await client.aclose()
            await server.stop(0)

    run(main())


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)

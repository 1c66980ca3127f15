"""The app health check: TCP connect or HTTP GET, 2 failures withdraw, 1 success restores."""

from __future__ import annotations

import asyncio
from typing import cast

import uvloop

from plexus.core.address import HostPort
from plexus.sidecar.health import HealthChecker, HealthSpec, check_once


class _App(asyncio.Protocol):
    """Answers every request with the status the test sets."""

    status = 200

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            path = data.split(b" ", 2)[1]
            status = _App.status if path == b"/healthz" else 404
            self.transport.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
            self.transport.close()


def _run(coro: object) -> object:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def test_tcp_and_http_checks_against_a_real_socket() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_App, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        app = HostPort("127.0.0.1", port)
        assert (await check_once(HealthSpec(app, None), 1.0))[0]
        _App.status = 200
        assert await check_once(HealthSpec(app, "/healthz"), 1.0) == (True, "status 200")
        _App.status = 302
        assert (await check_once(HealthSpec(app, "/healthz"), 1.0))[0]
        _App.status = 503
        assert await check_once(HealthSpec(app, "/healthz"), 1.0) == (False, "status 503")
        assert not (await check_once(HealthSpec(app, "/other"), 1.0))[0]
        server.close()
        await server.wait_closed()
        ok, detail = await check_once(HealthSpec(app, None), 1.0)
        assert not ok and detail

    _run(scenario())


def test_a_silent_app_fails_by_timeout() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)  # accepts, never answers
        port = server.sockets[0].getsockname()[1]
        ok, detail = await check_once(HealthSpec(HostPort("127.0.0.1", port), "/healthz"), 0.2)
        assert not ok and "0.2" in detail
        server.close()

    _run(scenario())


def test_two_failures_withdraw_one_success_restores() -> None:
    changes: list[tuple[str, bool]] = []
    checker = HealthChecker(
        "orders", HealthSpec(HostPort("127.0.0.1", 1), None), 1.0, lambda s, h: changes.append((s, h))
    )
    checker.record(False)
    assert checker.healthy and changes == []
    checker.record(True)
    checker.record(False)
    assert checker.healthy  # the success in between reset the count
    checker.record(False)
    assert not checker.healthy and changes == [("orders", False)]
    checker.record(False)
    assert changes == [("orders", False)]  # reported once
    checker.record(True)
    assert checker.healthy and changes == [("orders", False), ("orders", True)]


def test_the_task_checks_periodically_and_reports_flips() -> None:
    async def scenario() -> list[bool]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        flips: list[bool] = []
        results: list[bool] = []
        checker = HealthChecker(
            "svc",
            HealthSpec(HostPort("127.0.0.1", port), None),
            0.05,
            lambda s, h: flips.append(h),
            lambda s, ok: results.append(ok),
        )
        checker.start()
        await asyncio.sleep(0.2)
        server.close()
        await server.wait_closed()
        for _ in range(100):
            if flips:
                break
            await asyncio.sleep(0.02)
        await checker.stop()
        assert results[0] is True and False in results
        return flips

    assert _run(scenario()) == [False]

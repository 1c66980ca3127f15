"""Health checks of the sidecar's own app: one asyncio task per published service, never one per request.

A check is a TCP connect to the app's host:port, or, when the provider gave ``health.path``, an HTTP/1.1
``GET path`` that must answer 2xx or 3xx. After ``FAILURES_TO_WITHDRAW`` failures in a row the checker reports
the service unhealthy (the sidecar withdraws it); one success reports it healthy again (the sidecar
republishes it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from plexus.core.address import HostPort

FAILURES_TO_WITHDRAW: Final = 2  # one lost check is noise; two in a row mean the app is gone
MAX_CHECK_TIMEOUT: Final = 2.0  # a check slower than this is a failure even with a long interval
MIN_CHECK_TIMEOUT: Final = 0.2
MAX_STATUS_LINE: Final = 8 * 1024  # we only read the status line; anything longer is not HTTP


@dataclass(frozen=True, slots=True)
class HealthSpec:
    app: HostPort
    path: str | None  # None: TCP connect check


class _Connected(asyncio.Protocol):
    """Closes as soon as the connection is made: a TCP check needs nothing more."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _StatusLine(asyncio.Protocol):
    """Sends one GET and resolves ``status`` with the response's status code (0 when it is not HTTP)."""

    def __init__(self, request: bytes, status: asyncio.Future[int]) -> None:
        self._request = request
        self._status = status
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n")
        if end < 0 and len(self._buffer) < MAX_STATUS_LINE:
            return
        self._finish(_parse_status(bytes(self._buffer[: end if end >= 0 else MAX_STATUS_LINE])))

    def connection_lost(self, exc: Exception | None) -> None:
        end = self._buffer.find(b"\r\n")
        self._finish(_parse_status(bytes(self._buffer[:end])) if end >= 0 else 0)

    def _finish(self, status: int) -> None:
        if not self._status.done():
            self._status.set_result(status)
        if self._transport is not None:
            self._transport.close()


def _parse_status(line: bytes) -> int:
    parts = line.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return 0


async def check_once(spec: HealthSpec, timeout: float) -> tuple[bool, str]:
    """One check: (healthy, detail)."""
    loop = asyncio.get_running_loop()
    host, port = spec.app
    try:
        async with asyncio.timeout(timeout):
            if spec.path is None:
                await loop.create_connection(_Connected, host, port)
                return True, "connected"
            status: asyncio.Future[int] = loop.create_future()
            authority = str(spec.app)
            request = (
                f"GET {spec.path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: plexus-sidecar-health\r\n"
                "Accept: */*\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            transport, _ = await loop.create_connection(lambda: _StatusLine(request, status), host, port)
            try:
                code = await status
            finally:
                transport.close()
            return 200 <= code < 400, f"status {code}" if code else "no HTTP status line"
    except TimeoutError:
        return False, f"no answer within {timeout:.1f}s"
    except OSError as exc:
        return False, exc.strerror or type(exc).__name__


class HealthChecker:
    """Checks one service periodically; calls ``on_change(service, healthy)`` when the verdict flips."""

    def __init__(
        self,
        service: str,
        spec: HealthSpec,
        interval: float,
        on_change: Callable[[str, bool], None],
        on_result: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.service = service
        self.spec = spec
        self.interval = interval
        self.healthy = True  # a freshly registered app is trusted until checks say otherwise
        self.failures = 0
        self.last_detail = ""
        self._on_change = on_change
        self._on_result = on_result
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"health:{self.service}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        timeout = max(MIN_CHECK_TIMEOUT, min(self.interval, MAX_CHECK_TIMEOUT))
        while True:
            await asyncio.sleep(self.interval)
            ok, self.last_detail = await check_once(self.spec, timeout)
            if self._on_result is not None:
                self._on_result(self.service, ok)
            self.record(ok)

    def record(self, ok: bool) -> None:
        """Feed one result into the verdict (public so the policy can be driven directly).

        One success restores at once: an app that answers again should take traffic again.
        """
        if ok:
            self.failures = 0
            if not self.healthy:
                self.healthy = True
                self._on_change(self.service, True)
            return
        self.failures += 1
        if self.healthy and self.failures >= FAILURES_TO_WITHDRAW:
            self.healthy = False
            self._on_change(self.service, False)

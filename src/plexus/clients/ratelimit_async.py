"""The sidecar's quota client: asks the control plane's RateLimit service for global rate-limit tokens.

It implements ``plexus.proxy.ratelimit.QuotaSource`` (structurally: clients do not import the proxy): each
``acquire`` is one unary ``Acquire`` call on a single HTTP/2 connection (``plexus.clients.grpc_h2``, no
grpcio in the sidecar), answered through a callback on the loop; no task per call. The connection is made
on the first ask and again after it is lost; while it cannot be made (``RECONNECT_AFTER`` after a failure)
asks are answered at once with ``granted=None``, and the gate applies its fallback. A call that takes longer
than ``ACQUIRE_TIMEOUT`` is cancelled and answered the same way, so a control plane that hangs costs a sidecar
no more than that much credit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Final

from plexus.clients.grpc_h2 import Channel, GrpcStatus
from plexus.core.address import parse_host_port
from plexus.proto import control_pb2 as pb

log = logging.getLogger("plexus.clients.ratelimit")

ACQUIRE_PATH: Final = "/plexus.control.v1.RateLimit/Acquire"
ACQUIRE_TIMEOUT: Final = 1.0  # seconds; a grant later than this is of little use to a batch of ~100 ms
CONNECT_TIMEOUT: Final = 1.0  # the control plane is near: a slow connect means it is not there
RECONNECT_AFTER: Final = 1.0  # seconds between connection attempts while the service is down
MAX_WAITING: Final = 4096  # asks queued while connecting or busy (one per global key at most, in practice)
MAX_CALLS: Final = 64  # calls in flight on the connection; grpc servers allow 100 streams by default

Answer = Callable[[int | None, float], None]


class AsyncQuotaClient:
    """``acquire(policy, rule, key, tokens, answer)``; see the module's docstring. Use on one loop."""

    def __init__(
        self,
        address: str,
        node_id: str,
        *,
        timeout: float = ACQUIRE_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        reconnect_after: float = RECONNECT_AFTER,
    ) -> None:
        self.address = parse_host_port(address, "--control")
        self.node_id = node_id
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._reconnect_after = reconnect_after
        self._channel: Channel | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._waiting: list[tuple[bytes, Answer]] = []  # while connecting
        self._backlog: deque[tuple[bytes, Answer]] = deque()  # while MAX_CALLS are in flight
        self._in_flight = 0
        self._down_until = 0.0
        self._closed = False
        self.calls = 0
        self.failures = 0

    @property
    def connected(self) -> bool:
        return self._channel is not None and self._channel.is_open

    def acquire(self, policy: str, rule: str, key: str, tokens: int, answer: Answer) -> None:
        request = pb.AcquireRequest(
            node_id=self.node_id, policy=policy, rule=rule, key=key, tokens=tokens
        ).SerializeToString()
        channel = self._channel
        if channel is not None and channel.is_open:
            if self._in_flight < MAX_CALLS:
                self._call(channel, request, answer)
            elif len(self._backlog) < MAX_WAITING:
                self._backlog.append((request, answer))
            else:
                self.failures += 1
                answer(None, 0.0)
            return
        loop = asyncio.get_running_loop()
        if self._closed or loop.time() < self._down_until or len(self._waiting) >= MAX_WAITING:
            self.failures += 1
            answer(None, 0.0)
            return
        self._waiting.append((request, answer))
        if self._connecting is None:
            self._connecting = loop.create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            channel = await Channel.connect(
                self.address.host, self.address.port, timeout=self._connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            log.warning("rate-limit service %s unreachable: %s", self.address, exc)
            self._down_until = loop.time() + self._reconnect_after
            waiting, self._waiting = self._waiting, []
            self.failures += len(waiting)
            for _, answer in waiting:
                answer(None, 0.0)
            return
        finally:
            self._connecting = None
        if self._closed:
            channel.close()
            return
        self._channel = channel
        waiting, self._waiting = self._waiting, []
        for request, answer in waiting:
            self._call(channel, request, answer)

    def _call(self, channel: Channel, request: bytes, answer: Answer) -> None:
        self.calls += 1
        responses: list[pb.AcquireResponse] = []

        def on_message(data: bytes) -> None:
            responses.append(pb.AcquireResponse.FromString(data))

        try:
            call = channel.open(ACQUIRE_PATH, on_message)
            call.send(request)
            call.close_send()
        except Exception as exc:  # closed under us, or refused by h2: the gate falls back, never fails
            log.debug("rate-limit ask not sent: %r", exc)
            if self._channel is channel:
                self._channel = None
            self.failures += 1
            answer(None, 0.0)
            return
        self._in_flight += 1
        timer = asyncio.get_running_loop().call_later(self._timeout, call.cancel)

        def finished(done: asyncio.Future[GrpcStatus]) -> None:
            timer.cancel()
            self._in_flight -= 1
            status = done.result()
            if status.ok and responses:
                response = responses[-1]
                answer(response.granted, response.valid_ms / 1000.0)
            else:
                self.failures += 1
                if not channel.is_open and self._channel is channel:
                    self._channel = None
                answer(None, 0.0)
            self._drain()

        call.done.add_done_callback(finished)

    def _drain(self) -> None:
        """Send the asks that waited for a free call slot (or fail them when the connection is gone)."""
        backlog = self._backlog
        channel = self._channel
        while backlog and self._in_flight < MAX_CALLS:
            request, answer = backlog.popleft()
            if channel is None or not channel.is_open:
                self.failures += 1
                answer(None, 0.0)
            else:
                self._call(channel, request, answer)

    async def aclose(self) -> None:
        self._closed = True
        task = self._connecting
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        waiting, self._waiting = self._waiting, []
        waiting.extend(self._backlog)
        self._backlog.clear()
        for _, answer in waiting:
            answer(None, 0.0)

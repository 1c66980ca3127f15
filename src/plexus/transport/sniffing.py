"""A per-service egress connection whose protocol is unknown: read the first bytes, then hand the
transport to the HTTP or the TCP protocol. Bytes that decide nothing within the sniff timeout go TCP
(server-first protocols send nothing at all)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from plexus.codec import Sniffed, sniff_http

MAX_SNIFF_BYTES = 16  # longer than any method prefix we look for


class SniffingProtocol(asyncio.Protocol):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        make_http: Callable[[], asyncio.Protocol],
        make_tcp: Callable[[bytes], asyncio.Protocol],
    ) -> None:
        self.loop = loop
        self.timeout = timeout
        self.make_http = make_http
        self.make_tcp = make_tcp
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.decided = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.timer = self.loop.call_later(self.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        verdict = sniff_http(self.buffer)
        if verdict is Sniffed.HTTP:
            self._hand_over(self.make_http(), feed=True)
        elif verdict is Sniffed.OTHER or len(self.buffer) >= MAX_SNIFF_BYTES:
            self._hand_over(self.make_tcp(self.buffer), feed=False)

    def _timed_out(self) -> None:
        self.timer = None
        if not self.decided and self.transport is not None and not self.transport.is_closing():
            self._hand_over(self.make_tcp(self.buffer), feed=False)

    def _hand_over(self, protocol: asyncio.Protocol, feed: bool) -> None:
        self.decided = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.transport
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if feed and self.buffer:
            protocol.data_received(self.buffer)
        self.buffer = b""

    def eof_received(self) -> bool | None:
        if not self.decided:
            self._hand_over(self.make_tcp(self.buffer), feed=False)
            protocol = self.transport.get_protocol() if self.transport else None
            return protocol.eof_received() if isinstance(protocol, asyncio.Protocol) else None
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

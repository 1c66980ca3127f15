"""A per-service egress connection whose protocol is unknown: read the first bytes, then hand the
transport to the HTTP, the RPC (SOFA Bolt, Dubbo) or the TCP protocol. Bytes that decide nothing within the
sniff timeout go TCP (server-first protocols send nothing at all)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, cast

from plexus.codec import Sniffed, bolt, dubbo, sniff_http

MAX_SNIFF_BYTES = 16  # longer than any method prefix we look for

# Checked in this order after HTTP (their first bytes, 0x01/0x02 and 0xda, never open a method token).
_RPC_MATCHERS: Final = ((dubbo.PROTOCOL, dubbo.matches), (bolt.PROTOCOL, bolt.matches))


def sniff_rpc(prefix: bytes) -> str | bool | None:
    """The RPC protocol ``prefix`` opens, None while it cannot tell yet, False when it is none of them."""
    undecided = False
    for name, matches in _RPC_MATCHERS:
        verdict = matches(prefix)
        if verdict:
            return name
        if verdict is None:
            undecided = True
    return None if undecided else False


class SniffingProtocol(asyncio.Protocol):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        make_http: Callable[[], asyncio.Protocol],
        make_tcp: Callable[[bytes], asyncio.Protocol],
        make_rpc: Callable[[str], asyncio.Protocol] | None = None,
    ) -> None:
        self.loop = loop
        self.timeout = timeout
        self.make_http = make_http
        self.make_tcp = make_tcp
        self.make_rpc = make_rpc
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
            return
        rpc: str | bool | None = False
        if verdict is Sniffed.OTHER and self.make_rpc is not None:
            rpc = sniff_rpc(self.buffer)
            if isinstance(rpc, str):
                self._hand_over(self.make_rpc(rpc), feed=True)
                return
        if len(self.buffer) >= MAX_SNIFF_BYTES or (verdict is Sniffed.OTHER and rpc is False):
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

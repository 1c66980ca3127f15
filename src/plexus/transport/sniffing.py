"""Protocol detection on a listener: read a connection's first bytes, then hand the transport on.

The order is fixed (PROTOCOLS.md, "Sniffing the first bytes"):

1. ``0x16 0x03`` — a TLS ClientHello. No TLS listener yet: closed, counted as ``tls_not_supported``.
2. ``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n`` — HTTP/2 with prior knowledge (h2c): ``make_h2``.
3. An HTTP/1 method and a space — ``make_http``.
4. SOFA Bolt's proto code or Dubbo's magic ``0xdabb`` — ``make_rpc(protocol)``; a listener that serves no
   RPC (``make_rpc`` None, or it returns None) closes the connection, counted as ``rpc_not_served``.

Their first bytes never overlap except ``P`` (``PRI`` / ``POST`` / ``PUT`` / ``PATCH``), which the second
byte settles, so the checks can run cheapest first: HTTP/1 (the common case) costs one method comparison.
On a listener with no TCP fallback (the shared ingress and egress), any other upper-case start goes to
HTTP/1 too, whose parser answers an unknown method (501) or garbage (400) in HTTP's terms. Bytes that
decide nothing within ``timeout`` (server-first protocols send nothing at all) go to ``make_tcp`` where
the listener has one (a per-service egress), else the connection is closed and counted (``sniff_timeout``
/ ``sniff_unknown_protocol``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, cast

from plexus.codec import Sniffed, bolt, dubbo, sniff_http
from plexus.codec.http2 import CONNECTION_PREFACE
from plexus.proxy import DataPlaneStats

MAX_SNIFF_BYTES: Final = len(CONNECTION_PREFACE)  # the longest prefix any check needs (24 bytes)

# Reason codes in plexus_downstream_rejects_total for connections no protocol took.
TLS_NOT_SUPPORTED: Final = "tls_not_supported"
RPC_NOT_SERVED: Final = "rpc_not_served"  # Bolt/Dubbo bytes on a listener that serves no RPC
SNIFF_TIMEOUT: Final = "sniff_timeout"  # too few bytes to decide within the sniff timeout
SNIFF_UNKNOWN: Final = "sniff_unknown_protocol"  # bytes of no protocol this listener speaks

_TOKEN_FIRST: Final = ord("A")  # HTTP methods are upper-case tokens (RFC 9110 §9.1 registers no other)
_TOKEN_LAST: Final = ord("Z")
_TLS_RECORD: Final = 0x16  # TLS handshake record (RFC 8446 §5.1), then legacy version 0x03 0x0{1..4}

# Checked in this order after HTTP (their first bytes, 0x01/0x02 and 0xda, never open a method token).
_RPC_MATCHERS: Final = ((dubbo.PROTOCOL, dubbo.matches), (bolt.PROTOCOL, bolt.matches))

MakeProtocol = Callable[[], asyncio.Protocol]


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


def sniff_tls(prefix: bytes) -> bool | None:
    """True for a TLS handshake record's start, None while one byte says maybe, else False."""
    if not prefix or prefix[0] != _TLS_RECORD:
        return False
    if len(prefix) < 2:
        return None
    return prefix[1] == 0x03


def sniff_h2(prefix: bytes) -> bool | None:
    """True for the whole HTTP/2 client preface, None for a prefix of it, else False."""
    if prefix.startswith(CONNECTION_PREFACE):
        return True
    return None if CONNECTION_PREFACE.startswith(prefix) else False


class SniffingProtocol(asyncio.Protocol):
    """Reads first bytes, then ``transport.set_protocol`` to the chosen protocol and replays them into it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        make_http: MakeProtocol,
        make_tcp: Callable[[bytes], asyncio.Protocol] | None,
        make_rpc: Callable[[str], asyncio.Protocol | None] | None = None,
        make_h2: MakeProtocol | None = None,
        stats: DataPlaneStats | None = None,
    ) -> None:
        self.loop = loop
        self.timeout = timeout
        self.make_http = make_http
        self.make_tcp = make_tcp
        self.make_rpc = make_rpc
        self.make_h2 = make_h2
        self.stats = stats
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.decided = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.timer = self.loop.call_later(self.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer = self.buffer + data if self.buffer else data
        verdict = sniff_http(buffer)
        if verdict is Sniffed.HTTP:  # the common case: one comparison
            self._hand_over(self.make_http(), feed=True)
            return
        first = buffer[0]
        if first == _TLS_RECORD:
            tls = sniff_tls(buffer)
            if tls:
                self._reject(TLS_NOT_SUPPORTED)
                return
            if tls is None:
                return
        h2 = sniff_h2(buffer)
        if h2:
            if self.make_h2 is None:
                self._unknown(SNIFF_UNKNOWN)
            else:
                self._hand_over(self.make_h2(), feed=True)
            return
        undecided = h2 is None or verdict is Sniffed.UNDECIDED
        rpc = sniff_rpc(buffer)
        if isinstance(rpc, str):
            protocol = self.make_rpc(rpc) if self.make_rpc is not None else None
            if protocol is None:
                self._reject(RPC_NOT_SERVED)
            else:
                self._hand_over(protocol, feed=True)
            return
        if rpc is None:
            undecided = True
        if undecided and len(buffer) < MAX_SNIFF_BYTES:
            return
        if self.make_tcp is None and _TOKEN_FIRST <= first <= _TOKEN_LAST:
            # A shared listener speaks HTTP/1 to any other request-line token (``FOO /``, ``CONNECT``), so
            # the HTTP/1 parser answers it (400 / 501 with a reason) as before sniffing existed.
            self._hand_over(self.make_http(), feed=True)
            return
        self._unknown(SNIFF_UNKNOWN)

    def _timed_out(self) -> None:
        self.timer = None
        if not self.decided and self.transport is not None and not self.transport.is_closing():
            self._unknown(SNIFF_TIMEOUT)

    def _unknown(self, reason: str) -> None:
        """No protocol of this listener: TCP where the listener falls back to it, else closed."""
        if self.make_tcp is not None:
            self._hand_over(self.make_tcp(self.buffer), feed=False)
        else:
            self._reject(reason)

    def _reject(self, reason: str) -> None:
        self.decided = True
        self._cancel_timer()
        if self.stats is not None:
            self.stats.downstream_reject(reason)
        self.buffer = b""
        if self.transport is not None:
            self.transport.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _hand_over(self, protocol: asyncio.Protocol, feed: bool) -> None:
        self.decided = True
        self._cancel_timer()
        transport = self.transport
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        buffer, self.buffer = self.buffer, b""
        if feed and buffer:
            protocol.data_received(buffer)

    def eof_received(self) -> bool | None:
        if self.decided:
            return None
        if self.make_tcp is None:
            if self.buffer:
                self._reject(SNIFF_UNKNOWN)
            else:  # a connect-and-close probe (a port check): nothing to count
                self.decided = True
                self._cancel_timer()
                if self.transport is not None:
                    self.transport.close()
            return None
        self._hand_over(self.make_tcp(self.buffer), feed=False)
        protocol = self.transport.get_protocol() if self.transport else None
        return protocol.eof_received() if isinstance(protocol, asyncio.Protocol) else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()

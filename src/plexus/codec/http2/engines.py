"""The HTTP/2 engines behind the codec seam, chosen by name: ``h2`` (pure Python) or ``nghttp2`` (libnghttp2).

Both give the same events, commands, limits and reason codes (connection.py, ngh2_engine.py); the transport
picks one with a setting. ``nghttp2`` is imported only when chosen, so ``ngh2`` stays an optional wheel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol

from plexus.codec.http2.connection import Http2ClientCodec, Http2ServerCodec
from plexus.codec.http2.events import Event, Headers
from plexus.codec.http2.limits import Http2Limits
from plexus.core.errors import ConfigError

H2: Final = "h2"
NGHTTP2: Final = "nghttp2"
ENGINES: Final = (H2, NGHTTP2)
DEFAULT_ENGINE: Final = H2


class ServerCodec(Protocol):
    """The server end of one connection, whichever engine (see Http2ServerCodec for each member)."""

    limits: Http2Limits
    closed: bool
    goaway_received: bool

    def receive_data(self, data: bytes) -> list[Event]: ...
    def data_to_send(self) -> bytes: ...
    @property
    def outbound_pending(self) -> int: ...
    @property
    def open_streams(self) -> int: ...
    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None: ...
    def send_trailers(self, stream_id: int, headers: Headers) -> None: ...
    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int: ...
    def send_window(self, stream_id: int) -> int: ...
    def end_stream(self, stream_id: int) -> None: ...
    def acknowledge(self, stream_id: int, n: int) -> None: ...
    def reset_stream(self, stream_id: int, error_code: int = ...) -> None: ...
    def goaway(
        self, error_code: int = ..., last_stream_id: int | None = None, debug: bytes = b""
    ) -> None: ...


class ClientCodec(ServerCodec, Protocol):
    """The client end of one connection, whichever engine (see Http2ClientCodec)."""

    def can_open_stream(self) -> bool: ...
    def send_request(self, headers: Headers, end_stream: bool = False) -> int: ...


def _check(engine: str) -> None:
    if engine not in ENGINES:
        choices = ", ".join(ENGINES)
        raise ConfigError("h2_engine", f"unknown HTTP/2 engine {engine!r}: choose one of {choices}")


def server_codec(
    engine: str = DEFAULT_ENGINE,
    limits: Http2Limits | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ServerCodec:
    """A new server codec on ``engine`` ("h2" or "nghttp2")."""
    _check(engine)
    if engine == NGHTTP2:
        from plexus.codec.http2.ngh2_engine import Ngh2ServerCodec

        return Ngh2ServerCodec(limits, clock)
    return Http2ServerCodec(limits, clock)


def client_codec(
    engine: str = DEFAULT_ENGINE,
    limits: Http2Limits | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ClientCodec:
    """A new client codec on ``engine`` ("h2" or "nghttp2")."""
    _check(engine)
    if engine == NGHTTP2:
        from plexus.codec.http2.ngh2_engine import Ngh2ClientCodec

        return Ngh2ClientCodec(limits, clock)
    return Http2ClientCodec(limits, clock)

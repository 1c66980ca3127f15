"""Message heads as the codec hands them up: raw bytes, already stripped of hop-by-hop headers.

Headers keep their original case and order as ``(name, value)`` byte pairs so a proxy can forward them
without re-encoding text; the fields a proxy decides on (framing, keep-alive, host, service) are parsed once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    version: str  # "1.1" or "1.0"
    headers: list[tuple[bytes, bytes]]  # end-to-end headers only (no Connection, Keep-Alive, TE, Expect, ...)
    host: bytes | None  # the Host header value, as sent
    content_length: int | None
    chunked: bool
    keep_alive: bool  # the client lets the connection live after this exchange
    expect_continue: bool  # "Expect: 100-continue" was sent (and stripped)
    upgrade: bytes | None  # the Upgrade header value when the client asks to switch protocols
    service: bytes | None  # the x-plexus-service header value, when present

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    version: str
    headers: list[tuple[bytes, bytes]]  # end-to-end headers only
    content_length: int | None
    chunked: bool
    keep_alive: bool  # the upstream lets the connection live after this response
    error_reason: bytes | None  # the x-plexus-error header value when present (kept in ``headers`` too)

    @property
    def close_delimited(self) -> bool:
        """The body ends at close: no Content-Length, not chunked, a status with a body."""
        return (
            self.content_length is None
            and not self.chunked
            and self.status >= 200
            and self.status not in (204, 304)
        )

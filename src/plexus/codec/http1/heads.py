"""Message heads as the codec hands them up: raw bytes, already stripped of hop-by-hop headers.

Headers keep their original case and order as ``(name, value)`` byte pairs so a proxy can forward them
without re-encoding text; the fields a proxy decides on (framing, keep-alive, host, service) are parsed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Headers held apart from ``RequestHead.headers`` (see ``RequestHead.trace``): W3C and B3 trace context and
# the request id. ``tracestate`` is not among them: it passes through untouched.
TRACE_HEADERS: Final = (
    b"traceparent",
    b"x-request-id",
    b"x-b3-traceid",
    b"x-b3-spanid",
    b"x-b3-parentspanid",
    b"x-b3-sampled",
)


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
    # Captured while parsing, for telemetry (no second scan of the headers):
    user_agent: bytes | None = None  # forwarded as is (also in ``headers``)
    caller: bytes | None = None  # x-plexus-caller (a consumer sidecar's workload); forwarded as is
    # The trace-context headers (``TRACE_HEADERS``) by lower-case name, None when the client sent none. They
    # are NOT in ``headers``: the proxy forwards the ones its tracer does not replace (see
    # plexus.proxy.tracing), so an incoming traceparent is never sent on next to the new one.
    trace: dict[bytes, bytes] | None = None
    # Header lines the proxy adds after ``headers`` when it forwards the head (``name: value\r\n`` each, ready
    # bytes): the trace context its tracer wrote (see plexus.proxy.tracing, TraceStart.block).
    trace_lines: bytes = b""

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class ResponseHead:
    """A response head as the upstream sent it, minus hop-by-hop lines, plus the facts the proxy acts on.

    ``raw`` keeps the end-to-end header lines as received, each as ``\\r\\nName: value`` (CRLF first, none
    after the last), so the proxy writes ``status line + raw + its own lines + \\r\\n\\r\\n`` without touching
    one header in Python. ``headers`` parses it for the rare caller that needs pairs.
    """

    __slots__ = ("chunked", "error_reason", "has_length", "keep_alive", "raw", "status")

    def __init__(
        self,
        status: int,
        raw: bytes,
        has_length: bool,
        chunked: bool,
        keep_alive: bool,
        error_reason: bytes | None,
    ) -> None:
        self.status = status
        self.raw = raw
        self.has_length = has_length  # a Content-Length line (llhttp frames the body by it; we need not)
        self.chunked = chunked
        self.keep_alive = keep_alive  # the upstream lets the connection live after this response
        self.error_reason = error_reason  # the x-plexus-error value when present (kept in ``raw`` too)

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        pairs = []
        for line in self.raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            pairs.append((name, value.strip(b" \t")))
        return pairs

    @property
    def close_delimited(self) -> bool:
        """The body ends at close: no Content-Length, not chunked, a status with a body."""
        return (
            not self.has_length and not self.chunked and self.status >= 200 and self.status not in (204, 304)
        )

"""Message heads as the codec hands them up: raw bytes, already stripped of hop-by-hop headers.

Headers keep their original case and order as ``(name, value)`` byte pairs so a proxy can forward them
without re-encoding text; the fields a proxy decides on (framing, keep-alive, host, service) are parsed once.
"""

from __future__ import annotations

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


class RequestHead:
    """A request head as the decoder hands it up.

    The end-to-end header lines are kept in one of two forms. The decoder's fast path keeps them as ``raw``:
    the lines as received, each ``Name: value\\r\\n``, minus the ones it held apart or dropped, so the
    proxy forwards them as one ``bytes`` without touching a header in Python. ``headers`` is the same as
    ``(name, value)`` pairs (original case and order, values without leading whitespace, as llhttp hands
    them over): made from ``raw`` the first time it is read, and then the form that is encoded (a caller
    may append to it).
    """

    __slots__ = (
        "_headers",
        "caller",
        "chunked",
        "content_length",
        "expect_continue",
        "host",
        "keep_alive",
        "method",
        "raw",
        "service",
        "target",
        "trace",
        "trace_block",
        "trace_lines",
        "upgrade",
        "user_agent",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]] | None,
        host: bytes | None,
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
        expect_continue: bool,
        upgrade: bytes | None,
        service: bytes | None,
        user_agent: bytes | None = None,
        caller: bytes | None = None,
        trace: dict[bytes, bytes] | None = None,
        trace_lines: bytes = b"",
        raw: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self.version = version  # "1.1" or "1.0" ("2" for a head made from an HTTP/2 request)
        # End-to-end headers only (no Connection, Keep-Alive, TE, Expect, ...); None: ``raw`` holds them.
        self._headers = headers
        self.raw = raw
        self.host = host  # the Host header value, as sent
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive  # the client lets the connection live after this exchange
        self.expect_continue = expect_continue  # "Expect: 100-continue" was sent (and stripped)
        self.upgrade = upgrade  # the Upgrade header value when the client asks to switch protocols
        self.service = service  # the x-plexus-service header value, when present
        # Captured while parsing, for telemetry (no second scan of the headers):
        self.user_agent = user_agent  # forwarded as is (also among the headers)
        self.caller = caller  # x-plexus-caller (a consumer sidecar's workload); forwarded as is
        # The trace-context headers (``TRACE_HEADERS``) by lower-case name, None when the client sent none
        # or when they came as ``trace_block`` (``trace_context()`` gives them either way). They are NOT
        # among the headers: the proxy forwards the ones its tracer does not replace (see
        # plexus.proxy.tracing), so an incoming traceparent is never sent on next to the new one.
        self.trace = trace
        # The incoming trace lines as they came, ``x-request-id: ID\r\ntraceparent: TP\r\n``, when they were
        # the head's only trace lines and in exactly that spelling (what a Plexus proxy forwards, see
        # plexus.proxy.tracing), and of a shape the decoder's ``block_check`` approved, so the tracer can
        # follow them without formatting (Tracer.follow_approved; follow_block with no check); b"" otherwise.
        # Set by the decoder's fast path only, which then leaves ``trace`` None: the usual inbound hop never
        # needs the headers apart (no dict, no slices per request). Not one of ``fields()`` (they hold
        # ``trace_context()``), so the form the lines came in takes no part in equality.
        self.trace_block = b""
        # Header lines the proxy adds after the headers when it forwards the head (``name: value\r\n`` each,
        # ready bytes): the trace context its tracer wrote (see plexus.proxy.tracing, TraceStart.block).
        self.trace_lines = trace_lines

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = self._headers
        if headers is None:
            headers = self._headers = split_lines(self.raw)
            self.raw = b""
        return headers

    @headers.setter
    def headers(self, value: list[tuple[bytes, bytes]]) -> None:
        self._headers = value
        self.raw = b""

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def trace_context(self) -> dict[bytes, bytes] | None:
        """The trace-context headers that came, by lower-case name (``trace``, or those of ``trace_block``);
        None when none came."""
        trace = self.trace
        if trace is None and self.trace_block:
            return trace_of_block(self.trace_block)
        return trace

    def fields(self) -> tuple[object, ...]:
        """Every field, headers as pairs and the trace context as ``trace_context()`` (for comparisons in
        tests and for copies); not ``trace_block``, the form its lines came in."""
        return (
            self.method,
            self.target,
            self.version,
            self.headers,
            self.host,
            self.content_length,
            self.chunked,
            self.keep_alive,
            self.expect_continue,
            self.upgrade,
            self.service,
            self.user_agent,
            self.caller,
            self.trace_context(),
            self.trace_lines,
        )

    def copy(self) -> RequestHead:
        """A head with the same fields (its own list of headers)."""
        copy = RequestHead(*self.fields())  # type: ignore[arg-type]
        copy._headers = list(self.headers)
        copy.trace_block = self.trace_block
        return copy

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RequestHead) and self.fields() == other.fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaced

    def __repr__(self) -> str:
        return f"RequestHead{self.fields()!r}"


def trace_of_block(block: bytes) -> dict[bytes, bytes]:
    """The two headers of a trace block, ``x-request-id: ID\r\ntraceparent: TP\r\n``, by name."""
    middle = block.index(b"\r\n")
    return {b"x-request-id": block[len(b"x-request-id: ") : middle], b"traceparent": block[middle + 15 : -2]}


def split_lines(raw: bytes) -> list[tuple[bytes, bytes]]:
    """``Name: value\\r\\n`` lines as ``(name, value)`` pairs, leading whitespace of values removed."""
    pairs = []
    for line in raw.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        pairs.append((name, value.lstrip(b" \t")))
    return pairs


class ResponseHead:
    """A response head as the upstream sent it, minus hop-by-hop lines, plus the facts the proxy acts on.

    ``raw`` keeps the end-to-end header lines as received, each as ``\\r\\nName: value`` (CRLF first, none
    after the last), so the proxy writes ``status line + raw + its own lines + \\r\\n\\r\\n`` without touching
    one header in Python. ``headers`` parses it for the rare caller that needs pairs. The response decoder
    hands the same object out again for byte-identical heads: never mutate one.
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

"""A request's trace context: W3C ``traceparent``/``tracestate``, B3 when present, ``x-request-id``.

Sans-IO and protocol-free: a transport reads the incoming values of the headers below (``None`` when absent),
calls ``Tracer.begin``, forwards the request with ``TraceStart.headers`` set (replacing the incoming values of
the same names), and puts the ids into the request's ``RequestEntry``. Envoy's behaviour, which Istio users
expect:

- Each hop is one span: a sidecar's outbound side opens a CLIENT span, its inbound side a SERVER span. The
  forwarded ``traceparent`` names this hop's span as the parent, so the next hop's span is its child.
- The sampling decision is made once, by the first hop that sees no ``traceparent`` (``sample_percent``, 1%
  by default as in Istio), and then followed: an incoming sampled flag is kept, whatever this hop's rate.
- ``tracestate`` is passed through untouched (it belongs to the vendors that wrote it).
- B3 (``x-b3-traceid``...) is read only when there is no ``traceparent``, and then updated for the next hop.
- ``x-request-id`` is generated when absent and kept when present: it names the request in access logs and
  in ``plexus explain``.
"""

from __future__ import annotations

import random
from typing import Final

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
REQUEST_ID: Final = "x-request-id"
B3_TRACE_ID: Final = "x-b3-traceid"
B3_SPAN_ID: Final = "x-b3-spanid"
B3_PARENT_SPAN_ID: Final = "x-b3-parentspanid"
B3_SAMPLED: Final = "x-b3-sampled"
B3_SINGLE: Final = "b3"

DEFAULT_SAMPLE_PERCENT: Final = 1.0  # Istio's default sampling
_HEX: Final = frozenset("0123456789abcdef")
_HEX_DIGITS: Final = "0123456789abcdef"
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
MAX_REQUEST_ID: Final = 128  # longer incoming ids are replaced (they land in logs and labels)


class TraceStart:
    """This hop's trace identity and the headers to forward (name, value), lower-case names."""

    __slots__ = ("headers", "parent_span_id", "request_id", "sampled", "span_id", "trace_id")

    def __init__(self, trace_id: str, span_id: str, parent_span_id: str, sampled: bool, request_id: str,
                 headers: list[tuple[str, str]]) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.sampled = sampled
        self.request_id = request_id
        self.headers = headers


def _is_hex(value: str, length: int) -> bool:
    # (str.strip in C: nothing is left when every character is a lower-case hex digit; no set built)
    return len(value) == length and not value.strip(_HEX_DIGITS)


def parse_traceparent(value: str) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) of a valid ``traceparent`` (version 00 or later); else None."""
    parts = value.strip().lower().split("-")
    if len(parts) < 4:
        return None
    version, trace_id, span_id, flags = parts[0], parts[1], parts[2], parts[3]
    if not _is_hex(version, 2) or version == "ff" or (version == "00" and len(parts) != 4):
        return None
    if not _is_hex(trace_id, 32) or trace_id == _ZERO_TRACE:
        return None
    if not _is_hex(span_id, 16) or span_id == _ZERO_SPAN:
        return None
    if not _is_hex(flags, 2):
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


class Tracer:
    """Starts each request's trace context; one per sidecar. ``rand`` is injectable for tests."""

    def __init__(
        self, sample_percent: float = DEFAULT_SAMPLE_PERCENT, rand: random.Random | None = None
    ) -> None:
        if not 0.0 <= sample_percent <= 100.0:
            raise ValueError(f"tracing sample percent must be within 0..100, got {sample_percent}")
        self.sample_rate = sample_percent / 100.0
        self._rand = rand or random.Random()

    def new_trace_id(self) -> str:
        return f"{self._rand.getrandbits(128) or 1:032x}"

    def new_span_id(self) -> str:
        return f"{self._rand.getrandbits(64) or 1:016x}"

    def new_request_id(self) -> str:
        """A UUID4-shaped id, from the fast generator (not for secrets: it only names a request)."""
        h = f"{self._rand.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"

    def begin(
        self,
        traceparent: str | None,
        request_id: str | None,
        *,
        b3_trace_id: str | None = None,
        b3_span_id: str | None = None,
        b3_sampled: str | None = None,
    ) -> TraceStart:
        headers: list[tuple[str, str]] = []
        if not request_id or len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
            request_id = self.new_request_id()
            headers.append((REQUEST_ID, request_id))
        span_id = self.new_span_id()
        parsed = parse_traceparent(traceparent) if traceparent is not None else None
        b3 = False
        if parsed is not None:
            trace_id, parent, sampled = parsed
        elif b3_trace_id is not None and _is_b3_trace(b3_trace_id.lower()):
            b3 = True
            trace_id = b3_trace_id.lower().rjust(32, "0")
            parent = b3_span_id.lower() if b3_span_id is not None and _is_hex(b3_span_id.lower(), 16) else ""
            sampled = (
                b3_sampled in ("1", "true", "d")
                if b3_sampled is not None
                else self._rand.random() < self.sample_rate
            )
        else:
            trace_id, parent = self.new_trace_id(), ""
            sampled = self._rand.random() < self.sample_rate
        headers.append((TRACEPARENT, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"))
        if b3:
            headers.append((B3_TRACE_ID, b3_trace_id.lower() if b3_trace_id is not None else trace_id))
            headers.append((B3_SPAN_ID, span_id))
            if parent:
                headers.append((B3_PARENT_SPAN_ID, parent))
            headers.append((B3_SAMPLED, "1" if sampled else "0"))
        return TraceStart(trace_id, span_id, parent, sampled, request_id, headers)


def _is_b3_trace(value: str) -> bool:
    return (_is_hex(value, 32) or _is_hex(value, 16)) and set(value) != {"0"}

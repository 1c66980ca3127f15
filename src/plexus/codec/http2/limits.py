"""Limits of one HTTP/2 connection and the reason codes of what breaks them."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# Stable reason codes: the key in ``codec.rejects`` and in logs and counters.
REFUSED_STREAM: Final = (
    "h2_refused_stream"  # a stream beyond max_concurrent_streams (RST_STREAM REFUSED_STREAM)
)
RAPID_RESET: Final = "h2_rapid_reset"  # CVE-2023-44487: streams opened and reset by the peer in a burst
SETTINGS_FLOOD: Final = "h2_settings_flood"
PING_FLOOD: Final = "h2_ping_flood"
CONTINUATION_FLOOD: Final = "h2_continuation_flood"  # h2 bounds a header block to 64 CONTINUATION frames
HPACK_BOMB: Final = "h2_header_list_too_large"  # decoded header list over max_header_list_bytes
FRAME_TOO_LARGE: Final = "h2_frame_too_large"
FLOW_CONTROL: Final = "h2_flow_control_error"
OUTBOUND_OVERFLOW: Final = "h2_outbound_overflow"  # the peer makes us write (ACKs, RSTs) faster than it reads
STREAM_ERROR: Final = "h2_stream_error"  # h2 reset one stream for breaking the protocol
GOAWAY_RECEIVED: Final = "h2_goaway_received"  # a local misuse: a new stream after the peer's GOAWAY
PROTOCOL: Final = "h2_protocol_error"  # any other connection error h2 detected


@dataclass(frozen=True, slots=True)
class Http2Limits:
    # RFC 9113 §6.5.2 recommends at least 100; Envoy and grpc-go default to 100 / 2^31-1.
    max_concurrent_streams: int = 100
    # Decoded size (RFC 9113 §6.5.2 counts name + value + 32 per field); h2's own default is 64 KiB too.
    max_header_list_bytes: int = 64 * 1024
    # RFC 9113 §4.2: 16 KiB is the initial and smallest allowed SETTINGS_MAX_FRAME_SIZE.
    max_frame_size: int = 16 * 1024
    # RFC 9113 §6.9.2 initial window; the proxy acknowledges data as it forwards it.
    initial_window_size: int = 65_535
    # One sliding window for all rate limits below.
    window_seconds: float = 1.0
    # Resets by the peer (plus streams we refused) per window before GOAWAY ENHANCE_YOUR_CALM; a busy
    # well-behaved gRPC client cancels far fewer (Envoy's overload manager uses a similar bound).
    max_resets_per_window: int = 200
    # SETTINGS and PING each force an ACK; a handful per second is plenty for any real peer.
    max_settings_per_window: int = 50
    max_pings_per_window: int = 50
    # Bytes queued for the peer that it has not read; above this the peer is flooding us.
    max_outbound_bytes: int = 4 * 1024 * 1024


class RateWindow:
    """Sliding-window counter for the flood limits; memory bounded by ``limit + 1`` timestamps."""

    __slots__ = ("_clock", "_hits", "_limit", "_window")

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._hits: deque[float] = deque(maxlen=limit + 1)

    def hit(self) -> bool:
        """Record one occurrence; True when the window now holds more than the limit."""
        now = self._clock()
        hits = self._hits
        hits.append(now)
        while hits and hits[0] <= now - self._window:
            hits.popleft()
        return len(hits) > self._limit

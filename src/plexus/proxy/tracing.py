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
- B3 (``x-b3-traceid``...) decides the trace only when there is no ``traceparent``; when it came in, it is
  updated for the next hop either way (this hop's span id, the sampling decision followed).
- ``x-request-id`` is generated when absent and kept when present: it names the request in access logs and
  in ``plexus explain``.
"""

from __future__ import annotations

import math
import os
import random
from binascii import hexlify
from typing import Final

from plexus.core import speedups

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


# Per-request fast paths for HTTP/1 (``Tracer.fresh_lines``, ``Tracer.follow_lines``): the forwarded lines
# as one ready bytes block (the ids are read back from it only when a sink asks). A byte's class through one
# translate table checks a whole value in one C pass (a regex or a handful of bytes methods cost 2-4x more).
_MASK64: Final = (1 << 64) - 1
_COUNTER_MASK: Final = (1 << 48) - 1  # a request id's last group: 12 hex digits
_ZERO_TRACE_B: Final = b"0" * 32
_ZERO_SPAN_B: Final = b"0" * 16
_SAMPLED_FLAGS: Final = frozenset(b"13579bdf")  # the last hex digit of the flags: bit 0 = sampled
# A UUID's variant digit (10xx) from any hex digit: its two low bits kept.
_VARIANT: Final = {d: "89ab"[int(d, 16) & 3] for d in _HEX_DIGITS}
# Where the ids sit in a block of lines (fresh_lines/follow_lines), counted from its end:
# "traceparent: 00-" TRACE(32) "-" SPAN(16) "-" FLAGS(2) "\r\n"; before it, "x-request-id: " ID "\r\n".
_LINES_TAIL: Final = len("traceparent: 00-") + 32 + 1 + 16 + 1 + 2 + 2
# A traceparent's shape: lower-case hex digits -> "x", "-" stays, anything else -> "?". A version-00 value has
# exactly this shape (its version digits checked apart).
_TRACEPARENT_CLASSES: Final = bytes(
    ord("x") if c in b"0123456789abcdef" else c if c == ord("-") else ord("?") for c in range(256)
)
_TRACEPARENT_SHAPE: Final = b"xx-" + b"x" * 32 + b"-" + b"x" * 16 + b"-xx"
# A request id written into an access line as it is: printable ASCII but the quote and the backslash ("a"),
# anything else "?" (the line would need escaping: begin's general path takes such an id).
_PLAIN_CLASSES: Final = bytes(
    ord("a") if 0x20 <= c <= 0x7E and c not in b'"\\' else ord("?") for c in range(256)
)
_FRESH_BATCH: Final = 256  # fresh_lines blocks made at once (the counter's last two digits: _make_fresh)
_HEX_B: Final = b"0123456789abcdef"
# _make_fresh lays a batch out as 256 units of _UNIT bytes: _PAD, a block, _PAD; the random digits go in by
# 8-byte columns (memoryviews cast to "Q"), so the trace id starts one byte before a multiple of 8 and the
# span id at one. _PAD never occurs in a block: a split on two of them cuts the batch into its blocks.
_UNIT: Final = 128
_PAD: Final = b"\0\0\0"
_TRACE_AT: Final = len(_PAD) + len("x-request-id: ") + 36 + len("\r\ntraceparent: 00-")  # in a unit: 71
_TRACE_WORDS: Final = range((_TRACE_AT + 1) // 8, (_TRACE_AT + 1) // 8 + 4)  # its last 31 digits, and the "-"
_SPAN_WORDS: Final = range(_TRACE_WORDS.stop, _TRACE_WORDS.stop + 2)  # the span id, 8-aligned
_COUNTER_AT: Final = len(_PAD) + len("x-request-id: ") + 34  # the counter's last two digits
_SAMPLED_AT: Final = _TRACE_AT + 32 + 1 + 16 + 2  # the flags' last digit
# The counter's last two digits, as columns, the last unit first (fresh_lines pops from the end of the list).
_COUNTER_HI: Final = bytes(_HEX_B[i >> 4] for i in reversed(range(_FRESH_BATCH)))
_COUNTER_LO: Final = bytes(_HEX_B[i & 15] for i in reversed(range(_FRESH_BATCH)))
_RANDOM_BYTES: Final = 24 * _FRESH_BATCH + _FRESH_BATCH // 2  # 6 words of hex digits a unit, and one digit
_FOLLOW_LINE: Final = b"x-request-id: %b\r\ntraceparent: %b\r\n"
# follow_block: a block's last _LINES_TAIL + 2 bytes ("\r\ntraceparent: " and a 55-byte value, then CRLF)
# through _TAIL_CLASSES must be _TAIL_SHAPE: lower-case hex digits -> "x", "-" and the name's letters as they
# are, anything else "?" (CR and LF too: the shape pins them where the template has them).
_BLOCK_TAIL: Final = b"\r\ntraceparent: 00-" + _ZERO_TRACE_B + b"-" + _ZERO_SPAN_B + b"-00\r\n"
_TAIL_CLASSES: Final = bytes(
    ord("x") if c in _HEX_B else c if c in b"-traceprn: " else ord("?") for c in range(256)
)
_TAIL_SHAPE: Final = _BLOCK_TAIL.translate(_TAIL_CLASSES)
_BLOCK_ID_AT: Final = len("x-request-id: ")
_BLOCK_MIN: Final = _BLOCK_ID_AT + len(_BLOCK_TAIL)  # (a block with an empty request id)


# _make_fresh's batch written in C when built (plexus.core.speedups); its Python below stays the reference.
_native_blocks = speedups.fresh_blocks


def _passes_through_py(block: bytes) -> bool:
    """``passes_through`` in Python: Tracer.follow_approved's checks, and the sampled flag off."""
    return (
        len(block) >= 57
        and block[-57] == 48 == block[-56]
        and block[-54:-22] != _ZERO_TRACE_B
        and block[-21:-5] != _ZERO_SPAN_B
        and block[-3] not in _SAMPLED_FLAGS
    )


# Whether ``Tracer.follow_approved(block) is block``: a block the decoder approved (its usual inbound hop's,
# valid and not sampled) is forwarded as it came. Asked per request, before any tracer is called (C when
# built: plexus.core.speedups).
passes_through: Final = speedups.block_passes or _passes_through_py


def ids_from_lines(lines: bytes) -> tuple[str, str, str, bool]:
    """(request id, trace id, span id, sampled) of a block that ``fresh_lines``/``follow_lines`` wrote."""
    return (
        lines[len("x-request-id: ") : -_LINES_TAIL - 2].decode("latin-1"),
        lines[-54:-22].decode(),
        lines[-21:-5].decode(),
        lines[-3] in _SAMPLED_FLAGS,
    )


def sampled_in_lines(lines: bytes) -> bool:
    """The sampled flag of a block that ``fresh_lines``/``follow_lines`` wrote (b"" = not sampled)."""
    return len(lines) > 3 and lines[-3] in _SAMPLED_FLAGS


class TraceStart:
    """This hop's trace identity and the headers to forward (name, value), lower-case names."""

    __slots__ = ("headers", "parent_span_id", "request_id", "sampled", "span_id", "trace_id")

    def __init__(
        self,
        trace_id: str,
        span_id: str,
        parent_span_id: str,
        sampled: bool,
        request_id: str,
        headers: list[tuple[str, str]],
    ) -> None:
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
        injected = rand
        self._rand = rand = rand or random.Random()
        self._getrandbits = rand.getrandbits  # bound once: the fast paths call them per request
        self._random = rand.random
        # fresh_lines's trace and span ids, 24 random bytes a block: from the OS (one call for a batch,
        # cheaper than the generator's bits and their conversion), or from ``rand`` when one is given (so a
        # seeded tracer repeats its ids).
        self._random_bytes = os.urandom if injected is None else rand.randbytes
        # Request ids: UUID-shaped, a random prefix drawn once per tracer and a counter in the last group.
        # They only have to be unique (a request id is no secret and no sampling input, unlike trace ids,
        # which stay random): 72 random bits tell sidecars and restarts apart, the counter the requests.
        h = f"{rand.getrandbits(80):020x}"
        self._id_prefix = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-"
        self._id_prefix_b = self._id_prefix.encode()
        self._id_count = 0
        self._fresh: list[bytes] = []  # fresh_lines's blocks made ahead, the next one last
        self.sample_rate = sample_percent / 100.0

    @property
    def sample_rate(self) -> float:
        return self._sample_rate

    @sample_rate.setter
    def sample_rate(self, rate: float) -> None:
        self._sample_rate = rate
        self._fresh.clear()  # blocks made ahead were sampled at the old rate

    def new_trace_id(self) -> str:
        return f"{self._rand.getrandbits(128) or 1:032x}"

    def new_span_id(self) -> str:
        return f"{self._rand.getrandbits(64) or 1:016x}"

    def new_request_id(self) -> str:
        """A UUID-shaped id, unique per tracer (see __init__)."""
        count = self._id_count = (self._id_count + 1) & _COUNTER_MASK
        return f"{self._id_prefix}{count:012x}"

    def fresh_lines(self) -> bytes:
        """``begin(None, None)`` for HTTP/1 (no trace header came in), as the lines to forward:
        ``x-request-id: ID\r\ntraceparent: 00-TRACE-SPAN-FLAGS\r\n`` (``ids_from_lines`` reads the ids back).
        Blocks are made _FRESH_BATCH at a time (``_make_fresh``); each is taken once."""
        fresh = self._fresh
        if not fresh:
            self._make_fresh()
        return fresh.pop()

    def _make_fresh(self) -> None:
        """_FRESH_BATCH blocks at once, with no per-block formatting or slicing in Python: a row of copies of
        one unit (see _UNIT: the request id prefix and the counter's first ten digits are the same for the
        whole batch, which starts at a multiple of 256); then, column by column (strided assignments, in C),
        the counter's last two digits and the hex digits of one draw of random bytes: 8 digits a column but
        the trace id's first, 128 random bits a trace id and 64 a span id. The sampled blocks are drawn apart,
        at the rate (a geometric gap to the next one: the loop runs only for them). An all-zero id, which W3C
        forbids, has odds of 2**-64 or less and is not tested for."""
        n = _FRESH_BATCH
        base = (((self._id_count >> 8) + 1) << 8) & _COUNTER_MASK
        if _native_blocks is not None:  # (C: the same blocks from the same draws, each written in place)
            digits = hexlify(self._random_bytes(_RANDOM_BYTES))
            flags = bytearray(b"1" * n if self._sample_rate >= 1.0 else b"0" * n)
            self._sample_into(flags, 0, 1)
            self._id_count = base + n - 1
            self._fresh[:] = _native_blocks(self._id_prefix_b, base, digits, bytes(flags))
            return
        unit = b"%bx-request-id: %b%010x00\r\ntraceparent: 00-%b-%b-00\r\n%b" % (
            _PAD,
            self._id_prefix_b,
            base >> 8,
            _ZERO_TRACE_B,
            _ZERO_SPAN_B,
            _PAD,
        )
        row = bytearray(unit) * n
        row[_COUNTER_AT::_UNIT] = _COUNTER_HI
        row[_COUNTER_AT + 1 :: _UNIT] = _COUNTER_LO
        digits = hexlify(self._random_bytes(_RANDOM_BYTES))
        with memoryview(digits)[: 48 * n].cast("Q") as words, memoryview(row).cast("Q") as row_words:
            step = _UNIT // 8
            row_words[_TRACE_WORDS[0] :: step] = words[0::6]
            row_words[_TRACE_WORDS[1] :: step] = words[1::6]
            row_words[_TRACE_WORDS[2] :: step] = words[2::6]
            row_words[_TRACE_WORDS[3] :: step] = words[3::6]
            row_words[_SPAN_WORDS[0] :: step] = words[4::6]
            row_words[_SPAN_WORDS[1] :: step] = words[5::6]
        row[_TRACE_AT::_UNIT] = digits[48 * n :]
        row[_TRACE_AT + 32 :: _UNIT] = b"-" * n
        if self._sample_rate >= 1.0:
            row[_SAMPLED_AT::_UNIT] = b"1" * n
        self._sample_into(row, _SAMPLED_AT, _UNIT)
        self._id_count = base + n - 1
        with memoryview(row)[len(_PAD) : -len(_PAD)] as blocks:
            self._fresh[:] = bytes(blocks).split(_PAD + _PAD)  # (the last block first)

    def _sample_into(self, row: bytearray, first: int, step: int) -> None:
        """Mark the sampled blocks of a batch (below a rate of 1): "1" at ``row[first + step * block]``, a
        geometric gap to the next one (the loop runs only for them)."""
        rate = self._sample_rate
        if 0.0 < rate < 1.0:
            one, log_miss, random_ = ord("1"), math.log(1.0 - rate), self._random
            at = int(math.log(1.0 - random_()) / log_miss)
            while at < _FRESH_BATCH:
                row[first + at * step] = one
                at += 1 + int(math.log(1.0 - random_()) / log_miss)

    def fresh_start(self) -> tuple[TraceStart, bytes, bytes]:
        """``begin(None, None)`` from one draw (HTTP/2, gRPC: no trace field came in): the TraceStart and the
        two values to forward as bytes, ``x-request-id`` then ``traceparent`` (``TraceStart.headers`` holds
        the same as text)."""
        request_id = self.new_request_id()
        ids = self._getrandbits(192)
        trace_id, span_id = f"{ids >> 64:032x}", f"{ids & _MASK64:016x}"
        sampled = self._random() < self.sample_rate
        traceparent = f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"
        start = TraceStart(
            trace_id, span_id, "", sampled, request_id, [(REQUEST_ID, request_id), (TRACEPARENT, traceparent)]
        )
        return start, request_id.encode(), traceparent.encode()

    def follow_lines(self, traceparent: bytes, request_id: bytes) -> bytes | None:
        """``begin`` for HTTP/1 when the request came with a version-00 ``traceparent`` (lower-case, as W3C
        tracers write it) and an ``x-request-id`` of printable ASCII without quotes or backslashes (the usual
        inbound hop), as the lines to forward (same shape as ``fresh_lines``); None when either value needs
        ``begin``'s full checks. The request id is kept and the sampled flag followed. A sampled request gets
        this hop's span as the parent; an unsampled one is passed through unchanged, as W3C allows a proxy
        (no span of this hop is ever recorded for it, so there is no id to name)."""
        if (
            traceparent.translate(_TRACEPARENT_CLASSES) != _TRACEPARENT_SHAPE
            or traceparent[0] != 48  # "0": version 00
            or traceparent[1] != 48
            or len(request_id) > MAX_REQUEST_ID
            or not request_id.translate(_PLAIN_CLASSES).isalpha()  # (False when empty too)
            or traceparent[3:35] == _ZERO_TRACE_B
            or traceparent[36:52] == _ZERO_SPAN_B
        ):
            return None
        if traceparent[54] not in _SAMPLED_FLAGS:
            return _FOLLOW_LINE % (request_id, traceparent)
        return b"x-request-id: %b\r\ntraceparent: %b%016x%b\r\n" % (
            request_id,
            traceparent[:36],
            self._getrandbits(64) or 1,
            traceparent[52:],
        )

    def follow_block(self, block: bytes) -> bytes | None:
        """``follow_lines(traceparent, request_id)`` for a block of the lines a proxy forwards,
        ``x-request-id: ID\r\ntraceparent: TP\r\n`` with values of printable ASCII and no spaces (as the
        decoder hands it over, ``RequestHead.trace_block``): the same result, ``block`` itself when the
        request is not sampled (then the lines forwarded are the lines that came). A traceparent that
        follow_lines takes is 55 bytes long, so it is the block's last 55 bytes before the CRLF."""
        return self.follow_approved(block) if self.approves_block(block) else None

    @staticmethod
    def approves_block(block: bytes) -> bool:
        """follow_block's checks that depend only on the classes of the block's bytes (its length, where
        lower-case hex digits, "-", quotes and backslashes are, and any other byte): a decoder asks once per
        shape of block (the ``block_check`` of plexus.codec.http1's RequestDecoder) and hands over as
        ``trace_block`` only blocks of approved shapes, for ``follow_approved``."""
        return (
            _BLOCK_MIN < len(block) <= _BLOCK_MIN + MAX_REQUEST_ID
            and block[-_LINES_TAIL - 2 :].translate(_TAIL_CLASSES) == _TAIL_SHAPE
            and 34 not in block  # '"' (the request id would need escaping in an access line; an int: memchr)
            and 92 not in block  # "\\"
        )

    def follow_approved(self, block: bytes) -> bytes | None:
        """follow_block for a block ``approves_block`` approved: what is left to check is in the values."""
        if (
            block[-57] != 48  # "0": version 00 (the traceparent is block[-57:-2])
            or block[-56] != 48
            # A zero trace or span id (a look at two of their digits first: found is cheaper than sliced)
            or (block[-54] == 48 == block[-23] and block[-54:-22] == _ZERO_TRACE_B)
            or (block[-21] == 48 == block[-6] and block[-21:-5] == _ZERO_SPAN_B)
        ):
            return None
        if block[-3] not in _SAMPLED_FLAGS:
            return block
        return b"%b%016x%b" % (block[:-21], self._getrandbits(64) or 1, block[-5:])

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
        # B3 that came in is rewritten for the next hop too, even when traceparent decides the trace: an app
        # reading only B3 must see this hop's span as its parent, not the previous hop's.
        b3 = b3_trace_id is not None and _is_b3_trace(b3_trace_id.lower())
        if parsed is not None:
            trace_id, parent, sampled = parsed
        elif b3 and b3_trace_id is not None:
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

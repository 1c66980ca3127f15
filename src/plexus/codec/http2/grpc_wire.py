"""gRPC over HTTP/2, the pure parts: message framing, grpc-timeout, status codes, grpc-message encoding.

Spec: "gRPC over HTTP2" (github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md).

A gRPC message rides in the DATA frames of one stream, split across frames at any byte::

    0       1                               5
    +-------+-------------------------------+---------------------------+
    | flag  | length (4 bytes, big-endian)  | message (length bytes)    |
    +-------+-------------------------------+---------------------------+
    flag: 0 = uncompressed, 1 = compressed with the stream's grpc-encoding; other values are errors.

A call's response is HEADERS (``:status 200``), DATA, then trailers carrying ``grpc-status`` and a
percent-encoded ``grpc-message``. An error before any message may be sent as one HEADERS frame with
END_STREAM that holds both (a "trailers-only" response).
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass
from typing import Final

from plexus.core import reasons
from plexus.core.errors import ProtocolError

PREFIX_BYTES: Final = 5  # 1 flag byte + 4 length bytes
# grpcio's default receive limit; a peer that announces more is refused before buffering it.
DEFAULT_MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024

GRPC_MESSAGE_TOO_LARGE: Final = "grpc_message_too_large"
GRPC_BAD_FLAG: Final = "grpc_bad_compressed_flag"
GRPC_TRUNCATED: Final = "grpc_truncated_message"
GRPC_BAD_PATH: Final = "grpc_bad_path"
GRPC_BAD_TIMEOUT: Final = "grpc_bad_timeout"

_PREFIX = struct.Struct(">BI")


class GrpcStatus(enum.IntEnum):
    """Status codes of grpc/doc/statuscodes.md."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# Reasons not (yet) in plexus.core.reasons; named here so the mapping below is total for the list.
RATE_LIMITED: Final = "rate_limited"
DENIED: Final = "denied"

# Mesh failure reason -> gRPC status (PROTOCOLS.md, "Map mesh errors to gRPC codes").
_STATUS_FOR_REASON: Final[dict[str, GrpcStatus]] = {
    reasons.NO_HEALTHY_UPSTREAM: GrpcStatus.UNAVAILABLE,
    reasons.UPSTREAM_CONNECT_FAILED: GrpcStatus.UNAVAILABLE,
    reasons.UPSTREAM_CONNECT_TIMEOUT: GrpcStatus.UNAVAILABLE,  # no connection: the call never started
    reasons.LOCAL_APP_UNAVAILABLE: GrpcStatus.UNAVAILABLE,
    reasons.UPSTREAM_RESET: GrpcStatus.UNAVAILABLE,
    reasons.UNKNOWN_SERVICE: GrpcStatus.UNIMPLEMENTED,
    reasons.UPSTREAM_REQUEST_TIMEOUT: GrpcStatus.DEADLINE_EXCEEDED,
    RATE_LIMITED: GrpcStatus.RESOURCE_EXHAUSTED,
    DENIED: GrpcStatus.PERMISSION_DENIED,
    reasons.UPSTREAM_PROTOCOL_ERROR: GrpcStatus.INTERNAL,
    reasons.DOWNSTREAM_PROTOCOL_ERROR: GrpcStatus.INTERNAL,
    reasons.REQUEST_HEADERS_TOO_LARGE: GrpcStatus.RESOURCE_EXHAUSTED,
    reasons.REQUEST_BODY_TOO_LARGE: GrpcStatus.RESOURCE_EXHAUSTED,
    reasons.NOT_IMPLEMENTED: GrpcStatus.UNIMPLEMENTED,
}

_TEXT_FOR_REASON: Final[dict[str, str]] = {
    reasons.NO_HEALTHY_UPSTREAM: "no healthy upstream",
    reasons.UPSTREAM_CONNECT_FAILED: "upstream connect failed",
    reasons.UPSTREAM_CONNECT_TIMEOUT: "upstream connect timeout",
    reasons.UPSTREAM_REQUEST_TIMEOUT: "upstream request timeout",
    RATE_LIMITED: "rate limited",
    DENIED: "denied",
}


def grpc_status_for_reason(reason: str) -> GrpcStatus:
    """The gRPC status a mesh failure ``reason`` is reported as (UNKNOWN for a reason with no mapping)."""
    return _STATUS_FOR_REASON.get(reason, GrpcStatus.UNKNOWN)


def grpc_error_text(reason: str, service: str | None = None) -> str:
    """``no healthy upstream for orders``: the grpc-message of a local reply."""
    text = _TEXT_FOR_REASON.get(reason, reason.replace("_", " "))
    return f"{text} for {service}" if service else text


# --- message framing -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GrpcMessage:
    data: bytes
    compressed: bool = False


def encode_grpc_message(data: bytes, compressed: bool = False) -> bytes:
    """The length-prefixed form of one message."""
    return _PREFIX.pack(1 if compressed else 0, len(data)) + data


class GrpcMessageDecoder:
    """Reassembles length-prefixed messages from DATA payloads cut at any byte.

    A declared length over ``max_message_bytes`` is refused as soon as its prefix is complete, before any of
    its body is buffered, so memory stays bounded by the limit whatever the peer announces.
    """

    __slots__ = ("_buffer", "max_message_bytes")

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[GrpcMessage]:
        self._buffer += data
        out: list[GrpcMessage] = []
        while len(self._buffer) >= PREFIX_BYTES:
            flag, length = _PREFIX.unpack_from(self._buffer)
            if flag > 1:
                raise ProtocolError(GRPC_BAD_FLAG, f"gRPC message flag {flag}: only 0 and 1 are defined")
            if length > self.max_message_bytes:
                raise ProtocolError(
                    GRPC_MESSAGE_TOO_LARGE,
                    f"gRPC message of {length} bytes is over the limit of {self.max_message_bytes}",
                    status_hint=413,
                )
            end = PREFIX_BYTES + length
            if len(self._buffer) < end:
                break
            out.append(GrpcMessage(bytes(self._buffer[PREFIX_BYTES:end]), flag == 1))
            del self._buffer[:end]
        return out

    @property
    def pending(self) -> int:
        """Bytes held for a message not yet complete."""
        return len(self._buffer)

    def end(self) -> None:
        """The stream ended: a partial message left over is an error."""
        if self._buffer:
            raise ProtocolError(
                GRPC_TRUNCATED, f"stream ended inside a gRPC message ({len(self._buffer)} bytes)"
            )


# --- grpc-timeout ----------------------------------------------------------------------------------------

# "Timeout → TimeoutValue TimeoutUnit", TimeoutValue "positive integer as ASCII string of at most 8 digits".
_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_UNIT_SECONDS: Final[dict[str, float]] = {
    "H": 3600.0,
    "M": 60.0,
    "S": 1.0,
    "m": 1e-3,
    "u": 1e-6,
    "n": 1e-9,
}


def parse_grpc_timeout(value: str | bytes) -> float:
    """``"100m"`` -> 0.1 seconds. Raises ProtocolError(grpc_bad_timeout) on anything off the grammar."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    match = _TIMEOUT.fullmatch(text)
    if match is None:
        raise ProtocolError(
            GRPC_BAD_TIMEOUT, f"grpc-timeout {text!r}: want 1-8 digits then one of H M S m u n"
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _ceil_nanos(seconds: float) -> int:
    """``seconds`` in whole nanoseconds, rounded up, read from the float's shortest decimal form (0.1 is 1/10,
    not 0.1000000000000000055...) in exact integers. (Not Fraction: it would load fractions and decimal,
    0.4 MiB, into every sidecar for this one sum.)"""
    mantissa, _, exponent = repr(float(seconds)).partition("e")  # "0.25", "1e-05", "1.5e+20"
    whole, _, decimals = mantissa.partition(".")
    digits = int(whole + decimals)  # the value is digits * 10^(exponent - len(decimals))
    power = int(exponent or "0") - len(decimals) + 9
    scale: int = 10 ** abs(power)  # (an int: typeshed calls int ** int Any, as a negative power is a float)
    return digits * scale if power >= 0 else -(-digits // scale)


def format_grpc_timeout(seconds: float) -> str:
    """The finest unit that fits in 8 digits, rounded up so that a deadline is never shortened."""
    if seconds < 0:
        raise ValueError("a timeout cannot be negative")
    nanos = _ceil_nanos(seconds)
    for unit, per in (
        ("n", 1),
        ("u", 10**3),
        ("m", 10**6),
        ("S", 10**9),
        ("M", 60 * 10**9),
        ("H", 3600 * 10**9),
    ):
        count = -(-nanos // per)
        if count <= _MAX_TIMEOUT_VALUE:
            return f"{count}{unit}"
    return f"{_MAX_TIMEOUT_VALUE}H"


_MAX_TIMEOUT_VALUE: Final = 99_999_999  # "at most 8 digits"


# --- grpc-message percent-encoding -------------------------------------------------------------------------

_HEX = b"0123456789ABCDEF"


def encode_grpc_message_text(text: str) -> bytes:
    """Percent-encode: bytes of the UTF-8 form outside 0x20-0x7E, and '%' itself, become %XX."""
    out = bytearray()
    for byte in text.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%" + bytes((_HEX[byte >> 4], _HEX[byte & 15]))
    return bytes(out)


def decode_grpc_message_text(value: bytes) -> str:
    """Undo percent-encoding; a malformed %XX is kept as is (the spec asks receivers to be lenient)."""
    out = bytearray()
    i = 0
    while i < len(value):
        byte = value[i]
        if byte == 0x25 and _is_hex(value[i + 1 : i + 3]):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


# --- responses and routing -------------------------------------------------------------------------------

Headers = list[tuple[bytes, bytes]]


def grpc_trailers(status: GrpcStatus, message: str = "") -> Headers:
    """Trailers closing a call: grpc-status, and grpc-message when there is one."""
    out: Headers = [(b"grpc-status", str(int(status)).encode())]
    if message:
        out.append((b"grpc-message", encode_grpc_message_text(message)))
    return out


def trailers_only_response(status: GrpcStatus, message: str = "") -> Headers:
    """One HEADERS block (sent with END_STREAM) answering a call with an error and no message."""
    return [(b":status", b"200"), (b"content-type", b"application/grpc"), *grpc_trailers(status, message)]


def mesh_error_response(reason: str, service: str | None = None) -> Headers:
    """Trailers-only answer for a mesh failure, e.g. UNAVAILABLE ``no healthy upstream for orders``."""
    return trailers_only_response(grpc_status_for_reason(reason), grpc_error_text(reason, service))


def split_grpc_path(path: bytes | str) -> tuple[str, str]:
    """``/package.Service/Method`` -> (``package.Service``, ``Method``)."""
    text = path.decode("ascii", "replace") if isinstance(path, bytes) else path
    parts = text.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        raise ProtocolError(GRPC_BAD_PATH, f"gRPC :path {text!r}: want /package.Service/Method")
    return parts[1], parts[2]


def grpc_route_headers(path: bytes | str) -> Headers:
    """Plexus-internal pseudo-headers ``:service`` and ``:rpc-method`` for routing (never on the wire)."""
    service, method = split_grpc_path(path)
    return [(b":service", service.encode()), (b":rpc-method", method.encode())]


def is_grpc_content_type(value: bytes) -> bool:
    """``application/grpc`` or ``application/grpc+proto`` / ``;params`` variants."""
    base = value.split(b";", 1)[0].strip().lower()
    return base == b"application/grpc" or base.startswith(b"application/grpc+")

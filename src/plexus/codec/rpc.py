"""The vocabulary shared by the RPC codecs (SOFA Bolt, Dubbo 2.x): frames, limits, reason codes, seams.

Theory of operation: a decoder is fed raw bytes as they arrive (split anywhere, many frames per chunk) and
returns whole frames. A frame keeps the exact bytes it came in (``raw``) so the proxy forwards it untouched
and, when it multiplexes callers on one upstream connection, patches only the request id
(``RpcCodec.with_request_id``). The body is never deserialized: Bolt's routing facts live in its string
header map, Dubbo's in the first four Hessian2 strings of a request body. Each decoded request carries the
pseudo-headers ``:service``, ``:rpc-method`` and ``:rpc-version`` beside the protocol's own headers, so
routes, rate limits and authorization see every RPC protocol the same way.

A rejection is an ``RpcProtocolError`` (a ``ProtocolError``) with a stable reason code from this module.
After a rejection the decoder is dead: framing is in doubt, so the connection must close. The frames that
were complete before the bad bytes travel on the error (``error.frames``), so the outcome does not depend
on how the bytes were split.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from plexus.core.errors import ProtocolError

# --- Limits -------------------------------------------------------------------------------------------------

# MOSN accepts 1 GiB frames by default; a sidecar buffers a whole frame before routing it, so the cap is
# the memory one connection may pin. 16 MiB covers SOFA RPC's and Dubbo's usual payload cap (8 MiB).
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
MAX_HEADER_BYTES: Final = 64 * 1024  # Bolt's headerLen is 16 bits anyway; Envoy's header cap is 60 KiB
MAX_HEADERS: Final = 128  # Bolt header entries; SOFA RPC sends about ten, tracing a few more
MAX_CLASS_NAME: Final = 1024  # a Java class name; the longest seen in practice is well under 200 bytes
# Routing strings (service path, method, versions) in UTF-16 units. Java allows 65535 per chunk; a service
# name longer than this is an attack, not a name.
MAX_HESSIAN_STRING: Final = 4096
# Chunks in one Hessian2 string ('R' non-final chunks chained before the final one). Honest writers use one
# chunk per 32 Ki units, so a routing string needs one; empty 'R' chunks could otherwise chain forever.
MAX_HESSIAN_CHUNKS: Final = 8


@dataclass(frozen=True, slots=True)
class RpcLimits:
    max_frame_bytes: int = MAX_FRAME_BYTES  # whole frame, fixed header included
    max_header_bytes: int = MAX_HEADER_BYTES  # encoded header map (Bolt)
    max_headers: int = MAX_HEADERS  # entries in the header map (Bolt)
    max_class_name: int = MAX_CLASS_NAME  # Bolt class name bytes
    max_string_units: int = MAX_HESSIAN_STRING  # one Hessian2 routing string, UTF-16 units
    max_string_chunks: int = MAX_HESSIAN_CHUNKS  # chunk chain depth of one Hessian2 string


DEFAULT_LIMITS: Final = RpcLimits()

# --- Reason codes (stable: counters and logs use them) ------------------------------------------------------

FRAME_TOO_LARGE: Final = "rpc_frame_too_large"  # a declared length beyond max_frame_bytes
HEADERS_TOO_LARGE: Final = "rpc_headers_too_large"  # header map bytes beyond max_header_bytes
TOO_MANY_HEADERS: Final = "rpc_too_many_headers"
BAD_HEADER_MAP: Final = "rpc_bad_header_map"  # lengths that overrun the map, bad UTF-8, a ':' key
BAD_ROUTING_FIELD: Final = "rpc_bad_routing_field"  # a service/method/version that cannot be routed on
BAD_REQUEST_ID: Final = "rpc_bad_request_id"  # a request id outside the protocol's range (encoders)

BOLT_UNKNOWN_PROTOCOL: Final = "bolt_unknown_protocol"  # proto byte not 1 (v1) or 2 (v2)
BOLT_UNKNOWN_VERSION: Final = "bolt_unknown_version"  # v2's ver1 not 1 or 2
BOLT_UNKNOWN_TYPE: Final = "bolt_unknown_type"  # type not response/request/oneway
BOLT_UNKNOWN_CMDCODE: Final = "bolt_unknown_cmdcode"  # cmdcode not heartbeat/request/response for the type
BOLT_CODEC_NOT_ALLOWED: Final = "bolt_codec_not_allowed"  # a serializer not in the allowed set
BOLT_CLASS_TOO_LONG: Final = "bolt_class_too_long"
BOLT_BAD_CLASS: Final = "bolt_bad_class"  # class name not UTF-8
BOLT_BAD_CRC: Final = "bolt_bad_crc"  # v2 CRC32 mismatch

DUBBO_BAD_MAGIC: Final = "dubbo_bad_magic"
DUBBO_SERIALIZATION_NOT_ALLOWED: Final = "dubbo_serialization_not_allowed"  # CVE-2021-25641
DUBBO_BAD_LENGTH: Final = "dubbo_bad_length"  # a negative body length
DUBBO_BAD_BODY: Final = "dubbo_bad_body"  # the request body does not start with the routing strings

HESSIAN_NOT_STRING: Final = "hessian_not_string"  # a tag that does not open a string where one must be
HESSIAN_STRING_TOO_LONG: Final = "hessian_string_too_long"
HESSIAN_TOO_DEEP: Final = "hessian_too_deep"  # more chunks than max_string_chunks
HESSIAN_TRUNCATED: Final = "hessian_truncated"  # the string runs past the end of its body
HESSIAN_INVALID_UTF8: Final = "hessian_invalid_utf8"  # bad UTF-8 or an unpaired surrogate


class RpcProtocolError(ProtocolError):
    """Bytes from a peer break an RPC protocol. ``frames``: frames completed in this ``feed`` before them."""

    def __init__(self, reason: str, message: str, status_hint: int = 400) -> None:
        super().__init__(reason, message, status_hint)
        self.frames: list[RpcFrame] = []


def rpc_error(reason: str, message: str) -> RpcProtocolError:
    status = 413 if reason in (FRAME_TOO_LARGE, HEADERS_TOO_LARGE, HESSIAN_STRING_TOO_LONG) else 400
    return RpcProtocolError(reason, message, status)


# --- Frames -------------------------------------------------------------------------------------------------

SERVICE: Final = ":service"
RPC_METHOD: Final = ":rpc-method"
RPC_VERSION: Final = ":rpc-version"


class FrameKind(enum.Enum):
    REQUEST = "request"  # two-way call: a response with the same request id follows
    ONEWAY = "oneway"  # no response will come
    RESPONSE = "response"
    HEARTBEAT = "heartbeat"  # a heartbeat request: answer with ``RpcCodec.heartbeat_reply``
    HEARTBEAT_REPLY = "heartbeat_reply"
    EVENT = "event"  # Dubbo: an event that is not a heartbeat (e.g. the provider's "readonly" notice)

    @property
    def expects_reply(self) -> bool:
        return self is FrameKind.REQUEST or self is FrameKind.HEARTBEAT

    @property
    def is_reply(self) -> bool:
        return self is FrameKind.RESPONSE or self is FrameKind.HEARTBEAT_REPLY


class RpcFrame:
    """One whole frame. ``raw`` is exactly the bytes received; everything else is read from it.

    ``headers`` is flat: for requests the pseudo-headers (``:service``, ``:rpc-method``, ``:rpc-version``,
    empty when the frame does not say) beside the protocol's own headers. ``meta`` holds the protocol's
    fixed-header fields that routing does not use (Bolt codec byte and class name, Dubbo serialization id...).

    Immutable by convention, but for ``RpcCodec.set_header`` on a request its caller just decoded, and
    ``trace``, which the proxy sets. A plain slotted class rather than a frozen dataclass: one is built per
    frame on the hot path, and the dataclass ``__init__`` (each field set through ``object.__setattr__``)
    cost more than the rest of a response's decoding. A codec's subclass may leave ``headers`` and ``meta``
    as None and build them from ``raw`` when first read (``_decode_headers`` / ``_decode_meta``): the proxy
    never reads them on responses.
    """

    __slots__ = (
        "_headers",
        "_meta",
        "kind",
        "protocol",
        "raw",
        "request_id",
        "status",
        "timeout_ms",
        "trace",
    )

    def __init__(
        self,
        protocol: str,  # "bolt" or "dubbo"
        kind: FrameKind,
        request_id: int,
        headers: Mapping[str, str] | None,
        raw: bytes,
        status: int | None = None,  # responses only, in the protocol's own codes
        timeout_ms: int | None = None,  # requests that carry one (Bolt)
        meta: Mapping[str, int | str] | None = None,
    ) -> None:
        self.protocol = protocol
        self.kind = kind
        self.request_id = request_id
        self._headers = headers
        self.raw = raw
        self.status = status
        self.timeout_ms = timeout_ms
        self._meta = meta
        # Set by the proxy (plexus.transport.rpc_proxy): (trace id, span id, parent span id, sampled) of the
        # request's trace context at this hop; None when it has none.
        self.trace: tuple[str, str, str, bool] | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        headers = self._headers
        if headers is None:
            headers = self._headers = self._decode_headers()
        return headers

    @property
    def meta(self) -> Mapping[str, int | str]:
        meta = self._meta
        if meta is None:
            meta = self._meta = self._decode_meta()
        return meta

    def _decode_headers(self) -> Mapping[str, str]:
        return {}

    def _decode_meta(self) -> Mapping[str, int | str]:
        return {}

    def _fields(self) -> tuple[object, ...]:
        return (
            self.protocol,
            self.kind,
            self.request_id,
            self.headers,
            self.raw,
            self.status,
            self.timeout_ms,
            self.meta,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RpcFrame):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # equal by value; the header map is not hashable anyway

    def __repr__(self) -> str:
        return (
            f"RpcFrame(protocol={self.protocol!r}, kind={self.kind}, request_id={self.request_id}, "
            f"headers={self.headers!r}, raw={self.raw!r}, status={self.status}, "
            f"timeout_ms={self.timeout_ms}, meta={self.meta!r})"
        )


class LocalError(enum.Enum):
    """Why the proxy answers a request itself; each codec maps it to its own status codes."""

    NO_UPSTREAM = "no_upstream"  # unknown service or no healthy endpoint
    UNAVAILABLE = "unavailable"  # connect failed, upstream reset
    TIMEOUT = "timeout"
    OVERLOADED = "overloaded"  # rate limited, circuit breaker open
    DENIED = "denied"  # authorization refused the call
    BAD_REQUEST = "bad_request"


# --- Seams --------------------------------------------------------------------------------------------------


class RpcDecoder(Protocol):
    def feed(self, data: bytes) -> list[RpcFrame]:
        """Whole frames completed by ``data``; ``RpcProtocolError`` on bytes that break the protocol."""
        ...


class FramedDecoder:
    """The buffering loop every length-prefixed RPC decoder shares; subclasses write ``_parse`` only.

    ``_parse(buf, pos)`` returns ``(frame, end)`` for a whole frame at ``pos``, ``(None, pos)`` when more
    bytes are needed, or raises RpcProtocolError. Input split at any offset or coalesced gives the same
    frames. After a rejection the decoder is dead: framing is lost, so nothing later on the connection
    is trusted.
    """

    def __init__(self, limits: RpcLimits) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._dead: RpcProtocolError | None = None

    def feed(self, data: bytes) -> list[RpcFrame]:
        if self._dead is not None:
            raise rpc_error(self._dead.reason, f"decoder stopped after: {self._dead}")
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data  # the common case: whole frames in one read, no copy
        frames: list[RpcFrame] = []
        pos = 0
        try:
            while pos < len(buf):
                frame, end = self._parse(buf, pos)
                if frame is None:
                    break
                frames.append(frame)
                pos = end
        except RpcProtocolError as exc:
            self._buf = bytearray()
            self._dead = exc
            exc.frames = frames
            raise
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < len(buf):
            self._buf = bytearray(buf[pos:])
        return frames

    def _parse(self, buf: bytes | bytearray, pos: int) -> tuple[RpcFrame | None, int]:
        raise NotImplementedError


class RpcCodec(Protocol):
    """What the proxy needs of an RPC protocol besides decoding: cheap re-ids and its own local replies."""

    name: str
    max_request_id: int

    def decoder(self, limits: RpcLimits = DEFAULT_LIMITS, *, lazy_responses: bool = False) -> RpcDecoder:
        """``lazy_responses``: responses' headers and meta are decoded only when read (a proxy's upstream
        side); framing and every limit are still checked as the bytes come."""
        ...

    def encode_request(
        self,
        request_id: int,
        service: str,
        method: str,
        version: str = "",
        body: bytes = b"",
        *,
        oneway: bool = False,
        timeout_ms: int | None = None,
    ) -> bytes: ...

    def heartbeat(self, request_id: int) -> bytes: ...

    def heartbeat_reply(self, frame: RpcFrame) -> bytes: ...

    def error_reply(self, frame: RpcFrame, error: LocalError, message: str) -> bytes: ...

    def with_request_id(self, frame: RpcFrame, request_id: int) -> bytes: ...

    # Whether set_header can rewrite a header (Bolt's map, read whole); Dubbo's attachments follow the
    # arguments, which are never decoded.
    writes_headers: bool

    def set_header(self, frame: RpcFrame, name: str, value: str) -> bool:
        """Give the request ``frame``'s header ``name``, which it carries, the value ``value``: its ``raw``
        and ``headers`` change, every other byte stays. For a frame its caller owns alone (one just decoded,
        which nothing else holds yet). False, the frame left as it was, when the codec cannot write it
        there (``writes_headers`` False; an absent or pseudo-header; a map that would outgrow its limit)."""
        ...

    # Re-id without copying the frame twice: a proxy appends ``raw`` to its connection's out buffer and
    # packs the new id over the old with ``id_struct.pack_into`` (unchecked: only for ids known to be in
    # range). ``id_offset`` is where the id starts, or -1 when more than the id must change (a Bolt v2 CRC)
    # and ``with_request_id`` is needed.
    id_struct: struct.Struct

    def id_offset(self, raw: bytes) -> int: ...


def check_request_id(request_id: int, maximum: int) -> None:
    if not 0 <= request_id <= maximum:
        raise ValueError(f"{BAD_REQUEST_ID}: request id {request_id} outside 0..{maximum}")


_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


def routing_field_ok(value: str) -> bool:
    """No control characters: routing strings end up in logs, metrics labels and HTTP headers."""
    if value.isascii():
        return value.isprintable()  # exact for ASCII: only C0 controls and DEL are not printable
    return _CONTROL.search(value) is None

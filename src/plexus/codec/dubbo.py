"""Dubbo 2.x frames, sans-IO: bytes in, ``RpcFrame``s out; encoders for requests and local replies.

Header (Dubbo ``ExchangeCodec``, 16 bytes, big-endian)::

    0           2     3      4                                               12                      16
    +-----------+-----+------+-----------------------------------------------+-----------------------+
    | 0xda 0xbb |flags|status| requestId (8)                                 | body length (4)       |
    +-----------+-----+------+-----------------------------------------------+-----------------------+
    flags: 0x80 request (else response) | 0x40 two-way | 0x20 event | low 5 bits: serialization id
    status: responses only: 20 OK, 30 client timeout, 31 server timeout, 40 bad request, 50 bad response,
            60 service not found, 70 service error, 80 server error, 90 client error,
            100 server thread pool exhausted

Request body (``DubboCodec.encodeRequestData``, Hessian2 when serialization id is 2)::

    dubbo version (string) | service path (string) | service version (string or N) | method (string)
    | parameter descriptor | arguments... | attachments (map)

Only the first four values are read, as strings with hard caps (``plexus.codec.hessian2``); everything after
them (arguments, attachments) is passed through untouched and never turned into objects. An event frame
whose body is Hessian2 null (``N``) is a heartbeat. A response with a status other than OK carries an error
message (a Hessian2 string) as its body.

Only the configured serialization ids are accepted (Hessian2 by default): a peer that picks a Java-native
serializer gets to run gadget chains in the provider (CVE-2021-25641). Every length is checked from the
fixed header alone, before the body is buffered.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from plexus.codec import hessian2, rpc
from plexus.codec.rpc import FrameKind, LocalError, RpcFrame, RpcLimits, rpc_error

PROTOCOL: Final = "dubbo"
MAGIC: Final = 0xDABB
_MAGIC_HIGH: Final = 0xDA
_MAGIC_LOW: Final = 0xBB
HEADER_LENGTH: Final = 16

FLAG_REQUEST: Final = 0x80
FLAG_TWOWAY: Final = 0x40
FLAG_EVENT: Final = 0x20
SERIALIZATION_MASK: Final = 0x1F

SERIALIZATION_HESSIAN2: Final = 2
DEFAULT_SERIALIZATIONS: Final = frozenset({SERIALIZATION_HESSIAN2})

DUBBO_VERSION: Final = "2.0.2"  # the protocol version Dubbo 2.7 writes first in every request body
MAX_REQUEST_ID: Final = 0xFFFFFFFFFFFFFFFF  # a Java long, carried here unsigned

# What follows the method name when a test or tool builds a call without arguments: an empty parameter
# descriptor and an empty attachments map ('H' ... 'Z').
EMPTY_CALL_TAIL: Final = hessian2.encode_string("") + b"HZ"
_NULL_BODY: Final = b"N"

_HEADER: Final = struct.Struct(">HBBQi")
_ID: Final = struct.Struct(">Q")
_ID_OFFSET: Final = 4


class DubboStatus(enum.IntEnum):
    OK = 20
    CLIENT_TIMEOUT = 30
    SERVER_TIMEOUT = 31
    BAD_REQUEST = 40
    BAD_RESPONSE = 50
    SERVICE_NOT_FOUND = 60
    SERVICE_ERROR = 70
    SERVER_ERROR = 80
    CLIENT_ERROR = 90
    SERVER_THREADPOOL_EXHAUSTED = 100


LOCAL_ERROR_STATUS: Final = {
    LocalError.NO_UPSTREAM: DubboStatus.SERVICE_NOT_FOUND,
    LocalError.UNAVAILABLE: DubboStatus.SERVER_ERROR,
    LocalError.TIMEOUT: DubboStatus.SERVER_TIMEOUT,
    LocalError.OVERLOADED: DubboStatus.SERVER_THREADPOOL_EXHAUSTED,
    LocalError.DENIED: DubboStatus.SERVICE_ERROR,
    LocalError.BAD_REQUEST: DubboStatus.BAD_REQUEST,
}

# Header names for the routing fields (the names Dubbo uses for them in attachments).
HEADER_DUBBO_VERSION: Final = "dubbo"
HEADER_PATH: Final = "path"
HEADER_VERSION: Final = "version"
HEADER_METHOD: Final = "method"


def matches(prefix: bytes) -> bool | None:
    """Whether a connection's first bytes are Dubbo (magic 0xdabb): True, False, or None for too few bytes."""
    if not prefix:
        return None
    if prefix[0] != _MAGIC_HIGH:
        return False
    return None if len(prefix) < 2 else prefix[1] == _MAGIC_LOW


class DubboFrame(RpcFrame):
    """A Dubbo frame whose ``meta`` (flags, serialization id) is read from ``raw`` when first asked for."""

    __slots__ = ()

    def _decode_meta(self) -> dict[str, int | str]:
        flags = self.raw[2]
        return {"flags": flags, "serialization": flags & SERIALIZATION_MASK}


class DubboDecoder(rpc.FramedDecoder):
    """Decodes Dubbo frames. ``lazy_responses`` is accepted for the ``RpcCodec`` seam: a Dubbo response
    is never decoded past its 16-byte header anyway."""

    def __init__(
        self,
        limits: RpcLimits = rpc.DEFAULT_LIMITS,
        allowed_serializations: frozenset[int] = DEFAULT_SERIALIZATIONS,
        *,
        lazy_responses: bool = False,
    ) -> None:
        super().__init__(limits)
        self._serializations = allowed_serializations

    def _parse(self, buf: bytes | bytearray, pos: int) -> tuple[RpcFrame | None, int]:
        avail = len(buf) - pos
        # Refuse a wrong magic on its first byte: a peer speaking something else is cut off at once.
        if buf[pos] != _MAGIC_HIGH or (avail > 1 and buf[pos + 1] != _MAGIC_LOW):
            raise rpc_error(
                rpc.DUBBO_BAD_MAGIC, f"dubbo magic expected, got {bytes(buf[pos : pos + 2]).hex()}"
            )
        if avail > 2:
            serialization = buf[pos + 2] & SERIALIZATION_MASK
            if serialization not in self._serializations:
                raise rpc_error(
                    rpc.DUBBO_SERIALIZATION_NOT_ALLOWED, f"dubbo serialization id {serialization} not allowed"
                )
        if avail < HEADER_LENGTH:
            return None, pos
        _, flags, status, request_id, body_len = _HEADER.unpack_from(buf, pos)
        if body_len < 0:
            raise rpc_error(rpc.DUBBO_BAD_LENGTH, f"dubbo body length {body_len} is negative")
        size = HEADER_LENGTH + body_len
        if size > self._limits.max_frame_bytes:
            raise rpc_error(
                rpc.FRAME_TOO_LARGE, f"dubbo frame of {size} bytes over {self._limits.max_frame_bytes}"
            )
        if avail < size:
            return None, pos
        end = pos + size
        raw = bytes(buf[pos:end])  # no copy when buf is bytes and holds exactly this frame
        event = flags & FLAG_EVENT
        if not flags & FLAG_REQUEST:
            kind = FrameKind.HEARTBEAT_REPLY if event else FrameKind.RESPONSE
            return DubboFrame(PROTOCOL, kind, request_id, {}, raw, status), end
        headers: dict[str, str] = {}
        two_way = flags & FLAG_TWOWAY
        if event:
            body = raw[HEADER_LENGTH:]
            heartbeat = two_way and body in (_NULL_BODY, b"")
            kind = FrameKind.HEARTBEAT if heartbeat else FrameKind.EVENT
        else:
            kind = FrameKind.REQUEST if two_way else FrameKind.ONEWAY
            _read_routing(raw, headers, self._limits)
        return DubboFrame(PROTOCOL, kind, request_id, headers, raw), end


def _read_routing(raw: bytes, headers: dict[str, str], limits: RpcLimits) -> None:
    pos, end = HEADER_LENGTH, len(raw)
    units, chunks = limits.max_string_units, limits.max_string_chunks
    dubbo_version, pos = hessian2.read_string(
        raw, pos, end, max_units=units, max_chunks=chunks, allow_null=True
    )
    path, pos = hessian2.read_string(raw, pos, end, max_units=units, max_chunks=chunks)
    version, pos = hessian2.read_string(raw, pos, end, max_units=units, max_chunks=chunks, allow_null=True)
    method, pos = hessian2.read_string(raw, pos, end, max_units=units, max_chunks=chunks)
    if not path or not method:
        raise rpc_error(rpc.DUBBO_BAD_BODY, "dubbo request without a service path or method name")
    values = (dubbo_version or "", path, version or "", method)
    for value in values:
        if not rpc.routing_field_ok(value):
            raise rpc_error(rpc.BAD_ROUTING_FIELD, f"dubbo routing field {value!r} holds control characters")
    headers[HEADER_DUBBO_VERSION] = values[0]
    headers[HEADER_PATH] = path
    headers[HEADER_VERSION] = values[2]
    headers[HEADER_METHOD] = method
    headers[rpc.SERVICE] = path
    headers[rpc.RPC_METHOD] = method
    headers[rpc.RPC_VERSION] = values[2]


# --- Encoders -----------------------------------------------------------------------------------------------


def _frame(flags: int, status: int, request_id: int, body: bytes) -> bytes:
    rpc.check_request_id(request_id, MAX_REQUEST_ID)
    if len(body) > 0x7FFFFFFF:
        raise ValueError("dubbo body over 2 GiB")
    return _HEADER.pack(MAGIC, flags, status, request_id, len(body)) + body


def encode_request(
    request_id: int,
    path: str,
    method: str,
    *,
    version: str | None = "",
    dubbo_version: str | None = DUBBO_VERSION,
    tail: bytes = EMPTY_CALL_TAIL,
    two_way: bool = True,
    serialization: int = SERIALIZATION_HESSIAN2,
) -> bytes:
    """A Dubbo request: the four routing strings, then ``tail`` (descriptor, arguments, attachments) as is."""
    body = b"".join(
        (
            hessian2.encode_string(dubbo_version),
            hessian2.encode_string(path),
            hessian2.encode_string(version),
            hessian2.encode_string(method),
            tail,
        )
    )
    flags = FLAG_REQUEST | (FLAG_TWOWAY if two_way else 0) | (serialization & SERIALIZATION_MASK)
    return _frame(flags, 0, request_id, body)


def encode_response(
    request_id: int,
    status: int,
    body: bytes,
    *,
    event: bool = False,
    serialization: int = SERIALIZATION_HESSIAN2,
) -> bytes:
    flags = (FLAG_EVENT if event else 0) | (serialization & SERIALIZATION_MASK)
    return _frame(flags, status, request_id, body)


def encode_heartbeat(request_id: int, serialization: int = SERIALIZATION_HESSIAN2) -> bytes:
    flags = FLAG_REQUEST | FLAG_TWOWAY | FLAG_EVENT | (serialization & SERIALIZATION_MASK)
    return _frame(flags, 0, request_id, _NULL_BODY)


def _serialization(frame: RpcFrame) -> int:
    value = frame.meta.get("serialization", SERIALIZATION_HESSIAN2)
    return value if isinstance(value, int) else SERIALIZATION_HESSIAN2


def heartbeat_reply(frame: RpcFrame) -> bytes:
    """What Dubbo's HeartbeatHandler answers: an OK event response with a null body and the same id."""
    return encode_response(
        frame.request_id, DubboStatus.OK, _NULL_BODY, event=True, serialization=_serialization(frame)
    )


def error_reply(frame: RpcFrame, status: int, message: str) -> bytes:
    """A response to ``frame`` with ``status`` (not OK) and ``message`` as its Hessian2 string body."""
    if status == DubboStatus.OK:
        raise ValueError("an error reply needs a status other than OK (20)")
    # The body is always Hessian2: only the Hessian2 writer is here, and it is the only id allowed by default.
    return encode_response(frame.request_id, status, hessian2.encode_string(message))


def rewrite_request_id(raw: bytes, request_id: int) -> bytes:
    """``raw`` with its 8-byte request id replaced; the body is not touched."""
    rpc.check_request_id(request_id, MAX_REQUEST_ID)
    out = bytearray(raw)
    _ID.pack_into(out, _ID_OFFSET, request_id)
    return bytes(out)


class DubboCodec:
    """Dubbo behind the protocol-neutral ``rpc.RpcCodec`` seam."""

    name: str = PROTOCOL
    max_request_id: int = MAX_REQUEST_ID

    def __init__(self, allowed_serializations: frozenset[int] = DEFAULT_SERIALIZATIONS) -> None:
        self.allowed_serializations = allowed_serializations

    def decoder(
        self, limits: RpcLimits = rpc.DEFAULT_LIMITS, *, lazy_responses: bool = False
    ) -> DubboDecoder:
        return DubboDecoder(limits, self.allowed_serializations, lazy_responses=lazy_responses)

    def encode_request(
        self,
        request_id: int,
        service: str,
        method: str,
        version: str = "",
        body: bytes = b"",
        *,
        oneway: bool = False,
        timeout_ms: int | None = None,  # Dubbo carries its timeout in the attachments, inside ``body``
    ) -> bytes:
        return encode_request(
            request_id, service, method, version=version, tail=body or EMPTY_CALL_TAIL, two_way=not oneway
        )

    def heartbeat(self, request_id: int) -> bytes:
        return encode_heartbeat(request_id)

    def heartbeat_reply(self, frame: RpcFrame) -> bytes:
        return heartbeat_reply(frame)

    def error_reply(self, frame: RpcFrame, error: LocalError, message: str) -> bytes:
        return error_reply(frame, LOCAL_ERROR_STATUS[error], message)

    def with_request_id(self, frame: RpcFrame, request_id: int) -> bytes:
        return rewrite_request_id(frame.raw, request_id)

    writes_headers: bool = False

    def set_header(self, frame: RpcFrame, name: str, value: str) -> bool:
        """Never: a Dubbo request's attachments come after its arguments, which the proxy does not decode
        (only the routing strings before them), so its headers hold none to write."""
        return False

    id_struct: struct.Struct = _ID

    def id_offset(self, raw: bytes) -> int:
        """Where ``raw``'s request id starts: patching those bytes alone re-ids any Dubbo frame."""
        return _ID_OFFSET

"""SOFA Bolt v1 and v2 frames, sans-IO: bytes in, ``RpcFrame``s out; encoders for requests and local replies.

Bolt v1 (proto 1; sofa-bolt ``RpcProtocol``), big-endian, byte offsets above the fields::

    request, 22-byte fixed header
    0     1     2     4     5          9     10         14     16     18         22
    +-----+-----+-----+-----+----------+-----+----------+------+------+----------+
    |proto|type |cmd  |ver2 |requestId |codec|timeout ms|class |header|content   |
    |     |     |code |     |   (4)    |     |   (4)    |Len(2)|Len(2)|Len (4)   |
    +-----+-----+-----+-----+----------+-----+----------+------+------+----------+
    response, 20-byte fixed header
    0     1     2     4     5          9     10     12     14     16         20
    +-----+-----+-----+-----+----------+-----+------+------+------+----------+
    |proto|type |cmd  |ver2 |requestId |codec|resp  |class |header|content   |
    |     |     |code |     |   (4)    |     |Status|Len(2)|Len(2)|Len (4)   |
    +-----+-----+-----+-----+----------+-----+------+------+------+----------+
    then: className (classLen) | header map (headerLen) | content (contentLen)

Bolt v2 (proto 2; sofa-bolt ``RpcProtocolV2``) adds ``ver1`` after proto and ``switch`` after codec::

    request, 24-byte fixed header
    0     1     2     3     5     6          10    11    12         16     18     20         24
    +-----+-----+-----+-----+-----+----------+-----+-----+----------+------+------+----------+
    |proto|ver1 |type |cmd  |ver2 |requestId |codec|swi- |timeout ms|class |header|content   |
    |     |     |     |code |     |   (4)    |     |tch  |   (4)    |Len(2)|Len(2)|Len (4)   |
    +-----+-----+-----+-----+-----+----------+-----+-----+----------+------+------+----------+
    response, 22-byte fixed header
    0     1     2     3     5     6          10    11    12     14     16     18         22
    +-----+-----+-----+-----+-----+----------+-----+-----+------+------+------+----------+
    |proto|ver1 |type |cmd  |ver2 |requestId |codec|swi- |resp  |class |header|content   |
    |     |     |     |code |     |   (4)    |     |tch  |Status|Len(2)|Len(2)|Len (4)   |
    +-----+-----+-----+-----+-----+----------+-----+-----+------+------+------+----------+
    then class | header | content | CRC32(4), the CRC present only when ver1 == 2 and switch bit 0 is set;
    it covers every byte of the frame before it (``RpcCommandDecoderV2.checkCRC``, java.util.zip.CRC32).

type: 0 response, 1 request, 2 one-way request. cmdcode: 0 heartbeat, 1 RPC request, 2 RPC response.
Header map (SOFA RPC ``SimpleMapSerializer``): repeated ``keyLen(4) key valueLen(4) value``, UTF-8, a length
of -1 is a null that the reader drops. Routing keys: ``service`` (``interface:version[:uniqueId]``),
``sofa_head_target_service``, ``sofa_head_method_name``, ``sofa_head_target_app``.

Every length is checked against ``RpcLimits`` from the fixed header alone, before a byte of the body is
buffered. Content stays opaque.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Mapping
from typing import Final

from plexus.codec import hessian2, rpc
from plexus.codec.rpc import FrameKind, LocalError, RpcFrame, RpcLimits, rpc_error

PROTOCOL: Final = "bolt"
PROTO_V1: Final = 1
PROTO_V2: Final = 2

TYPE_RESPONSE: Final = 0
TYPE_REQUEST: Final = 1
TYPE_ONEWAY: Final = 2

CMD_HEARTBEAT: Final = 0
CMD_REQUEST: Final = 1
CMD_RESPONSE: Final = 2

VER2: Final = 1  # the command version every sofa-bolt release writes
CRC_SWITCH: Final = 0x01  # ProtocolSwitch.CRC_SWITCH_INDEX = 0

CODEC_HESSIAN2: Final = 1
CODEC_JAVA: Final = 2  # SOFA RPC's Java serialization: deserialization gadgets, never allowed by default
CODEC_HESSIAN2_OLD: Final = 4  # SOFA RPC's deprecated id for the same Hessian2 serializer
CODEC_PROTOBUF: Final = 11
# Codes from SOFA RPC's RemotingConstants.SERIALIZE_CODE_*. Allowed by default: the serializers a provider
# decodes without running arbitrary classes' code (Hessian2 with SOFA's blacklist, protobuf). Java
# serialization (2) is left out on purpose, as Dubbo's native serializers are (CVE-2021-25641).
DEFAULT_CODECS: Final = frozenset({CODEC_HESSIAN2, CODEC_HESSIAN2_OLD, CODEC_PROTOBUF})

SOFA_REQUEST_CLASS: Final = "com.alipay.sofa.rpc.core.request.SofaRequest"
SOFA_RESPONSE_CLASS: Final = "com.alipay.sofa.rpc.core.response.SofaResponse"
ERROR_CLASS: Final = "java.lang.String"  # the class of a local reply's content: a Hessian2 string

HEADER_SERVICE: Final = "service"
HEADER_TARGET_SERVICE: Final = "sofa_head_target_service"
HEADER_METHOD: Final = "sofa_head_method_name"
HEADER_TARGET_APP: Final = "sofa_head_target_app"

MAX_REQUEST_ID: Final = 0xFFFFFFFF


class BoltStatus(enum.IntEnum):
    SUCCESS = 0x00
    ERROR = 0x01
    SERVER_EXCEPTION = 0x02
    UNKNOWN = 0x03
    SERVER_THREADPOOL_BUSY = 0x04
    ERROR_COMM = 0x05
    NO_PROCESSOR = 0x06
    TIMEOUT = 0x07
    CLIENT_SEND_ERROR = 0x08
    CODEC_EXCEPTION = 0x09
    CONNECTION_CLOSED = 0x10
    SERVER_SERIAL_EXCEPTION = 0x11
    SERVER_DESERIAL_EXCEPTION = 0x12


LOCAL_ERROR_STATUS: Final = {
    LocalError.NO_UPSTREAM: BoltStatus.NO_PROCESSOR,
    LocalError.UNAVAILABLE: BoltStatus.ERROR_COMM,
    LocalError.TIMEOUT: BoltStatus.TIMEOUT,
    LocalError.OVERLOADED: BoltStatus.SERVER_THREADPOOL_BUSY,
    LocalError.DENIED: BoltStatus.ERROR,
    LocalError.BAD_REQUEST: BoltStatus.CODEC_EXCEPTION,
}

# Fixed headers. Fields: see the drawing above.
_V1_REQUEST: Final = struct.Struct(">BBHBIBiHHI")  # 22
_V1_RESPONSE: Final = struct.Struct(">BBHBIBHHHI")  # 20
_V2_REQUEST: Final = struct.Struct(">BBBHBIBBiHHI")  # 24
_V2_RESPONSE: Final = struct.Struct(">BBBHBIBBHHHI")  # 22
_ID: Final = struct.Struct(">I")
_LEN: Final = struct.Struct(">i")
_CRC_BYTES: Final = 4
_ID_OFFSET: Final = {PROTO_V1: 5, PROTO_V2: 6}

_KINDS: Final = {
    (TYPE_REQUEST, CMD_REQUEST): FrameKind.REQUEST,
    (TYPE_ONEWAY, CMD_REQUEST): FrameKind.ONEWAY,
    (TYPE_REQUEST, CMD_HEARTBEAT): FrameKind.HEARTBEAT,
    (TYPE_RESPONSE, CMD_RESPONSE): FrameKind.RESPONSE,
    (TYPE_RESPONSE, CMD_HEARTBEAT): FrameKind.HEARTBEAT_REPLY,
}


def _has_crc(proto: int, ver1: int, switch: int) -> bool:
    return proto == PROTO_V2 and ver1 == 2 and bool(switch & CRC_SWITCH)


def matches(prefix: bytes) -> bool | None:
    """Whether a connection's first bytes are Bolt: True, False, or None while too few bytes have come."""
    if not prefix:
        return None
    if prefix[0] == PROTO_V1:
        return None if len(prefix) < 2 else prefix[1] in (TYPE_RESPONSE, TYPE_REQUEST, TYPE_ONEWAY)
    if prefix[0] == PROTO_V2:
        if len(prefix) < 3:
            return None if len(prefix) < 2 or prefix[1] in (1, 2) else False
        return prefix[1] in (1, 2) and prefix[2] in (TYPE_RESPONSE, TYPE_REQUEST, TYPE_ONEWAY)
    return False


class BoltDecoder(rpc.FramedDecoder):
    """Decodes Bolt v1 and v2 frames (either on the same connection, chosen per frame by the proto byte)."""

    def __init__(
        self, limits: RpcLimits = rpc.DEFAULT_LIMITS, allowed_codecs: frozenset[int] = DEFAULT_CODECS
    ) -> None:
        super().__init__(limits)
        self._codecs = allowed_codecs

    def _parse(self, buf: bytes | bytearray, pos: int) -> tuple[RpcFrame | None, int]:
        avail = len(buf) - pos
        proto = buf[pos]
        if proto not in (PROTO_V1, PROTO_V2):
            raise rpc_error(rpc.BOLT_UNKNOWN_PROTOCOL, f"bolt proto byte 0x{proto:02x} is neither 1 nor 2")
        type_at = 1 if proto == PROTO_V1 else 2
        if proto == PROTO_V2 and avail >= 2 and buf[pos + 1] not in (1, 2):
            raise rpc_error(rpc.BOLT_UNKNOWN_VERSION, f"bolt v2 ver1 {buf[pos + 1]} is neither 1 nor 2")
        if avail <= type_at:
            return None, pos
        kind_type = buf[pos + type_at]
        if kind_type == TYPE_RESPONSE:
            layout = _V1_RESPONSE if proto == PROTO_V1 else _V2_RESPONSE
        elif kind_type in (TYPE_REQUEST, TYPE_ONEWAY):
            layout = _V1_REQUEST if proto == PROTO_V1 else _V2_REQUEST
        else:
            raise rpc_error(rpc.BOLT_UNKNOWN_TYPE, f"bolt type {kind_type} is not response/request/oneway")
        if avail < layout.size:
            return None, pos
        fields = layout.unpack_from(buf, pos)
        if proto == PROTO_V1:
            ver1, switch = 1, 0
            _, _, cmdcode, ver2, request_id, codec, word, class_len, header_len, content_len = fields
        else:
            _, ver1, _, cmdcode, ver2, request_id, codec, switch, word, class_len, header_len, content_len = (
                fields
            )
        kind = _KINDS.get((kind_type, cmdcode))
        if kind is None:
            raise rpc_error(rpc.BOLT_UNKNOWN_CMDCODE, f"bolt cmdcode {cmdcode} with type {kind_type}")
        heartbeat = cmdcode == CMD_HEARTBEAT
        if not heartbeat and codec not in self._codecs:
            raise rpc_error(rpc.BOLT_CODEC_NOT_ALLOWED, f"bolt codec {codec} is not allowed here")
        limits = self._limits
        if class_len > limits.max_class_name:
            raise rpc_error(rpc.BOLT_CLASS_TOO_LONG, f"bolt class name of {class_len} bytes")
        if header_len > limits.max_header_bytes:
            raise rpc_error(rpc.HEADERS_TOO_LARGE, f"bolt header map of {header_len} bytes")
        crc = _has_crc(proto, ver1, switch)
        size = layout.size + class_len + header_len + content_len + (_CRC_BYTES if crc else 0)
        if size > limits.max_frame_bytes:
            raise rpc_error(rpc.FRAME_TOO_LARGE, f"bolt frame of {size} bytes over {limits.max_frame_bytes}")
        if avail < size:
            return None, pos
        end = pos + size
        raw = bytes(buf[pos:end])
        if crc:
            (expected,) = _ID.unpack_from(raw, size - _CRC_BYTES)
            if zlib.crc32(memoryview(raw)[: size - _CRC_BYTES]) != expected:
                raise rpc_error(rpc.BOLT_BAD_CRC, "bolt v2 frame fails its CRC32")
        at = layout.size
        try:
            class_name = raw[at : at + class_len].decode("utf-8")
        except UnicodeDecodeError:
            raise rpc_error(rpc.BOLT_BAD_CLASS, "bolt class name is not UTF-8") from None
        at += class_len
        headers = _decode_header_map(raw, at, at + header_len, limits)
        is_request = kind_type != TYPE_RESPONSE
        if is_request and not heartbeat:
            _add_pseudo_headers(headers)
        meta: dict[str, int | str] = {
            "proto": proto,
            "ver1": ver1,
            "switch": switch,
            "codec": codec,
            "cmdcode": cmdcode,
            "ver2": ver2,
            "class": class_name,
        }
        frame = RpcFrame(
            protocol=PROTOCOL,
            kind=kind,
            request_id=request_id,
            headers=headers,
            raw=raw,
            status=None if is_request else word,
            timeout_ms=word if is_request else None,
            meta=meta,
        )
        return frame, end


def _decode_header_map(raw: bytes, at: int, end: int, limits: RpcLimits) -> dict[str, str]:
    # One flat loop (no call per string): this runs for every request on the hot path.
    headers: dict[str, str] = {}
    count = 0
    unpack = _LEN.unpack_from
    try:
        while at < end:
            count += 1
            if count > limits.max_headers:
                raise rpc_error(
                    rpc.TOO_MANY_HEADERS, f"bolt header map has over {limits.max_headers} entries"
                )
            pair: list[str | None] = []
            for _ in (0, 1):
                if at + 4 > end:
                    raise rpc_error(rpc.BAD_HEADER_MAP, "bolt header map ends inside a length")
                (length,) = unpack(raw, at)
                at += 4
                if length == -1:
                    pair.append(None)  # SimpleMapSerializer writes null as -1 and drops such entries
                    continue
                if length < 0 or at + length > end:
                    raise rpc_error(rpc.BAD_HEADER_MAP, f"bolt header length {length} overruns the map")
                pair.append(raw[at : at + length].decode("utf-8"))
                at += length
            key, value = pair
            if key is None or value is None:
                continue
            if key[:1] == ":":
                raise rpc_error(
                    rpc.BAD_HEADER_MAP, f"bolt header {key!r}: ':' names are Plexus pseudo-headers"
                )
            headers[key] = value
    except UnicodeDecodeError:
        raise rpc_error(rpc.BAD_HEADER_MAP, "bolt header is not UTF-8") from None
    return headers


def _add_pseudo_headers(headers: dict[str, str]) -> None:
    unique = headers.get(HEADER_SERVICE) or headers.get(HEADER_TARGET_SERVICE) or ""
    # SOFA's unique service name: interface:version[:uniqueId] (the uniqueId stays in the `service` header).
    parts = unique.split(":", 2)
    service = parts[0]
    version = parts[1] if len(parts) > 1 else ""
    method = headers.get(HEADER_METHOD, "")
    for value in (service, version, method):
        if not rpc.routing_field_ok(value):
            raise rpc_error(rpc.BAD_ROUTING_FIELD, f"bolt routing field {value!r} holds control characters")
    headers[rpc.SERVICE] = service
    headers[rpc.RPC_METHOD] = method
    headers[rpc.RPC_VERSION] = version


# --- Encoders -----------------------------------------------------------------------------------------------


def encode_header_map(headers: Mapping[str, str]) -> bytes:
    out = bytearray()
    for key, value in headers.items():
        for text in (key, value):
            data = text.encode("utf-8")
            out += _LEN.pack(len(data))
            out += data
    return bytes(out)


def _frame(
    proto: int,
    ver1: int,
    switch: int,
    kind_type: int,
    cmdcode: int,
    request_id: int,
    codec: int,
    word: int,
    class_name: str,
    headers: Mapping[str, str] | None,
    content: bytes,
) -> bytes:
    rpc.check_request_id(request_id, MAX_REQUEST_ID)
    if proto not in (PROTO_V1, PROTO_V2):
        raise ValueError(f"bolt proto {proto} is neither 1 nor 2")
    klass = class_name.encode("utf-8")
    header = encode_header_map(headers) if headers else b""
    if len(klass) > 0xFFFF or len(header) > 0xFFFF:
        raise ValueError("bolt class name and header map are limited to 65535 bytes each")
    lens = (len(klass), len(header), len(content))
    if proto == PROTO_V1:
        layout = _V1_RESPONSE if kind_type == TYPE_RESPONSE else _V1_REQUEST
        head = layout.pack(proto, kind_type, cmdcode, VER2, request_id, codec, word, *lens)
    else:
        layout = _V2_RESPONSE if kind_type == TYPE_RESPONSE else _V2_REQUEST
        head = layout.pack(proto, ver1, kind_type, cmdcode, VER2, request_id, codec, switch, word, *lens)
    frame = head + klass + header + content
    if _has_crc(proto, ver1, switch):
        frame += _ID.pack(zlib.crc32(frame))
    return frame


def encode_request(
    request_id: int,
    headers: Mapping[str, str],
    content: bytes = b"",
    *,
    class_name: str = SOFA_REQUEST_CLASS,
    timeout_ms: int = 0,
    codec: int = CODEC_HESSIAN2,
    oneway: bool = False,
    proto: int = PROTO_V1,
    ver1: int = 1,
    switch: int = 0,
) -> bytes:
    """A Bolt RPC request (``timeout_ms`` 0: no deadline, as sofa-bolt reads it)."""
    kind_type = TYPE_ONEWAY if oneway else TYPE_REQUEST
    return _frame(
        proto,
        ver1,
        switch,
        kind_type,
        CMD_REQUEST,
        request_id,
        codec,
        timeout_ms,
        class_name,
        headers,
        content,
    )


def encode_response(
    request_id: int,
    status: int,
    content: bytes = b"",
    *,
    headers: Mapping[str, str] | None = None,
    class_name: str = SOFA_RESPONSE_CLASS,
    codec: int = CODEC_HESSIAN2,
    proto: int = PROTO_V1,
    ver1: int = 1,
    switch: int = 0,
) -> bytes:
    return _frame(
        proto,
        ver1,
        switch,
        TYPE_RESPONSE,
        CMD_RESPONSE,
        request_id,
        codec,
        status,
        class_name,
        headers,
        content,
    )


def encode_heartbeat(request_id: int, *, proto: int = PROTO_V1, ver1: int = 1, switch: int = 0) -> bytes:
    return _frame(
        proto, ver1, switch, TYPE_REQUEST, CMD_HEARTBEAT, request_id, CODEC_HESSIAN2, 0, "", None, b""
    )


def _int_meta(frame: RpcFrame, key: str, default: int) -> int:
    value = frame.meta.get(key, default)
    return value if isinstance(value, int) else default


def heartbeat_reply(frame: RpcFrame) -> bytes:
    """The answer sofa-bolt's RpcHeartBeatProcessor gives: a heartbeat ack with the same id, status 0."""
    proto = _int_meta(frame, "proto", PROTO_V1)
    return _frame(
        proto,
        _int_meta(frame, "ver1", 1),
        _int_meta(frame, "switch", 0),
        TYPE_RESPONSE,
        CMD_HEARTBEAT,
        frame.request_id,
        _int_meta(frame, "codec", CODEC_HESSIAN2),
        BoltStatus.SUCCESS,
        "",
        None,
        b"",
    )


def error_reply(frame: RpcFrame, status: int, message: str) -> bytes:
    """A response to ``frame``: ``status``, and the message as a Hessian2 string of class java.lang.String."""
    return _frame(
        _int_meta(frame, "proto", PROTO_V1),
        _int_meta(frame, "ver1", 1),
        _int_meta(frame, "switch", 0),
        TYPE_RESPONSE,
        CMD_RESPONSE,
        frame.request_id,
        CODEC_HESSIAN2,
        status,
        ERROR_CLASS,
        None,
        hessian2.encode_string(message),
    )


def rewrite_request_id(raw: bytes, request_id: int) -> bytes:
    """``raw`` with its request id replaced: four bytes patched (and v2's CRC32 recomputed when present)."""
    rpc.check_request_id(request_id, MAX_REQUEST_ID)
    proto = raw[0]
    out = bytearray(raw)
    _ID.pack_into(out, _ID_OFFSET[proto], request_id)
    if proto == PROTO_V2:
        switch_at = 11  # proto ver1 type cmdcode(2) ver2 requestId(4) codec -> switch
        if _has_crc(proto, raw[1], raw[switch_at]):
            _ID.pack_into(out, len(out) - _CRC_BYTES, zlib.crc32(memoryview(out)[: len(out) - _CRC_BYTES]))
    return bytes(out)


class BoltCodec:
    """Bolt behind the protocol-neutral ``rpc.RpcCodec`` seam. ``proto`` chooses what ``encode_*`` writes."""

    name: str = PROTOCOL
    max_request_id: int = MAX_REQUEST_ID

    def __init__(self, proto: int = PROTO_V1, allowed_codecs: frozenset[int] = DEFAULT_CODECS) -> None:
        self.proto = proto
        self.allowed_codecs = allowed_codecs

    def decoder(self, limits: RpcLimits = rpc.DEFAULT_LIMITS) -> BoltDecoder:
        return BoltDecoder(limits, self.allowed_codecs)

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
    ) -> bytes:
        unique = f"{service}:{version}" if version else service
        headers = {HEADER_SERVICE: unique, HEADER_TARGET_SERVICE: unique, HEADER_METHOD: method}
        return encode_request(
            request_id, headers, body, timeout_ms=timeout_ms or 0, oneway=oneway, proto=self.proto
        )

    def heartbeat(self, request_id: int) -> bytes:
        return encode_heartbeat(request_id, proto=self.proto)

    def heartbeat_reply(self, frame: RpcFrame) -> bytes:
        return heartbeat_reply(frame)

    def error_reply(self, frame: RpcFrame, error: LocalError, message: str) -> bytes:
        return error_reply(frame, LOCAL_ERROR_STATUS[error], message)

    def with_request_id(self, frame: RpcFrame, request_id: int) -> bytes:
        return rewrite_request_id(frame.raw, request_id)

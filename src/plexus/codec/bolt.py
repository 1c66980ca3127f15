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


class BoltFrame(RpcFrame):
    """A Bolt frame whose ``meta`` (and, when the decoder was lazy, a response's ``headers``) is read from
    ``raw`` when first asked for: the fixed header holds every field, so nothing is kept twice."""

    __slots__ = ()

    def _layout(self) -> tuple[struct.Struct, int]:
        raw = self.raw
        if raw[0] == PROTO_V1:
            return (_V1_RESPONSE if raw[1] == TYPE_RESPONSE else _V1_REQUEST), 1
        return (_V2_RESPONSE if raw[2] == TYPE_RESPONSE else _V2_REQUEST), 2

    def _decode_meta(self) -> dict[str, int | str]:
        layout, proto = self._layout()
        fields = layout.unpack_from(self.raw, 0)
        if proto == PROTO_V1:
            ver1, switch = 1, 0
            _, _, cmdcode, ver2, _, codec, _, class_len, _, _ = fields
        else:
            _, ver1, _, cmdcode, ver2, _, codec, switch, _, class_len, _, _ = fields
        at = layout.size
        try:
            class_name = self.raw[at : at + class_len].decode("utf-8")
        except UnicodeDecodeError:  # only a lazily decoded response can get here unchecked
            raise rpc_error(rpc.BOLT_BAD_CLASS, "bolt class name is not UTF-8") from None
        return {
            "proto": proto,
            "ver1": ver1,
            "switch": switch,
            "codec": codec,
            "cmdcode": cmdcode,
            "ver2": ver2,
            "class": class_name,
        }

    def _decode_headers(self) -> dict[str, str]:
        # Only a response from a lazy decoder gets here (every other frame's map is decoded up front). The
        # map's size was checked against the decoder's limits; its entry count is checked against the
        # defaults, since nothing on the proxy's path reads a response's headers.
        layout, _ = self._layout()
        class_len, header_len = struct.unpack_from(">HH", self.raw, layout.size - 8)
        at = layout.size + class_len
        return _decode_header_map(self.raw, at, at + header_len, rpc.DEFAULT_LIMITS)


class BoltDecoder(rpc.FramedDecoder):
    """Decodes Bolt v1 and v2 frames (either on the same connection, chosen per frame by the proto byte).

    ``lazy_responses``: a response's class name and header map are decoded only when its ``meta`` or
    ``headers`` is read (a proxy's upstream side needs only the id, the status and the bytes). Framing,
    the allowed codecs, every length limit and the v2 CRC are still checked up front."""

    def __init__(
        self,
        limits: RpcLimits = rpc.DEFAULT_LIMITS,
        allowed_codecs: frozenset[int] = DEFAULT_CODECS,
        *,
        lazy_responses: bool = False,
    ) -> None:
        super().__init__(limits)
        self._codecs = allowed_codecs
        self._lazy_responses = lazy_responses

    def _parse(self, buf: bytes | bytearray, pos: int) -> tuple[RpcFrame | None, int]:
        avail = len(buf) - pos
        proto = buf[pos]
        if proto == PROTO_V1:
            if avail < 2:
                return None, pos
            kind_type = buf[pos + 1]
        elif proto == PROTO_V2:
            if avail >= 2 and buf[pos + 1] not in (1, 2):
                raise rpc_error(rpc.BOLT_UNKNOWN_VERSION, f"bolt v2 ver1 {buf[pos + 1]} is neither 1 nor 2")
            if avail < 3:
                return None, pos
            kind_type = buf[pos + 2]
        else:
            raise rpc_error(rpc.BOLT_UNKNOWN_PROTOCOL, f"bolt proto byte 0x{proto:02x} is neither 1 nor 2")
        if kind_type == TYPE_RESPONSE:
            layout = _V1_RESPONSE if proto == PROTO_V1 else _V2_RESPONSE
        elif kind_type in (TYPE_REQUEST, TYPE_ONEWAY):
            layout = _V1_REQUEST if proto == PROTO_V1 else _V2_REQUEST
        else:
            raise rpc_error(rpc.BOLT_UNKNOWN_TYPE, f"bolt type {kind_type} is not response/request/oneway")
        fixed = layout.size
        if avail < fixed:
            return None, pos
        if proto == PROTO_V1:
            fields = layout.unpack_from(buf, pos)
            _, _, cmdcode, _, request_id, codec, word, class_len, header_len, content_len = fields
            crc = False
        else:
            _, ver1, _, cmdcode, _, request_id, codec, switch, word, class_len, header_len, content_len = (
                layout.unpack_from(buf, pos)
            )
            crc = ver1 == 2 and bool(switch & CRC_SWITCH)  # _has_crc, inlined: this runs per frame
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
        size = fixed + class_len + header_len + content_len + (_CRC_BYTES if crc else 0)
        if size > limits.max_frame_bytes:
            raise rpc_error(rpc.FRAME_TOO_LARGE, f"bolt frame of {size} bytes over {limits.max_frame_bytes}")
        if avail < size:
            return None, pos
        end = pos + size
        raw = bytes(buf[pos:end])  # no copy when buf is bytes and holds exactly this frame
        if crc:
            (expected,) = _ID.unpack_from(raw, size - _CRC_BYTES)
            if zlib.crc32(memoryview(raw)[: size - _CRC_BYTES]) != expected:
                raise rpc_error(rpc.BOLT_BAD_CRC, "bolt v2 frame fails its CRC32")
        if kind_type == TYPE_RESPONSE:
            if self._lazy_responses:
                return BoltFrame(PROTOCOL, kind, request_id, None, raw, word), end
            status: int | None = word
            timeout_ms: int | None = None
        else:
            status, timeout_ms = None, word
        if class_len:
            try:
                raw[fixed : fixed + class_len].decode("utf-8")  # checked here; ``meta`` decodes it again
            except UnicodeDecodeError:
                raise rpc_error(rpc.BOLT_BAD_CLASS, "bolt class name is not UTF-8") from None
        at = fixed + class_len
        headers = _decode_header_map(raw, at, at + header_len, limits) if header_len else {}
        if status is None and not heartbeat:
            _add_pseudo_headers(headers)
        return BoltFrame(PROTOCOL, kind, request_id, headers, raw, status, timeout_ms), end


def _decode_header_map(raw: bytes, at: int, end: int, limits: RpcLimits) -> dict[str, str]:
    # One flat loop, key and value unrolled (no call, list or inner loop per string): this runs for every
    # request on the hot path.
    headers: dict[str, str] = {}
    count = 0
    max_headers = limits.max_headers
    unpack = _LEN.unpack_from
    try:
        while at < end:
            count += 1
            if count > max_headers:
                raise rpc_error(rpc.TOO_MANY_HEADERS, f"bolt header map has over {max_headers} entries")
            if at + 4 > end:
                raise rpc_error(rpc.BAD_HEADER_MAP, "bolt header map ends inside a length")
            (length,) = unpack(raw, at)
            at += 4
            key: str | None = None  # SimpleMapSerializer writes null as -1; such entries are dropped
            if length != -1:
                if length < 0 or at + length > end:
                    raise rpc_error(rpc.BAD_HEADER_MAP, f"bolt header length {length} overruns the map")
                key = raw[at : at + length].decode("utf-8")
                at += length
            if at + 4 > end:
                raise rpc_error(rpc.BAD_HEADER_MAP, "bolt header map ends inside a length")
            (length,) = unpack(raw, at)
            at += 4
            if length == -1:
                continue
            if length < 0 or at + length > end:
                raise rpc_error(rpc.BAD_HEADER_MAP, f"bolt header length {length} overruns the map")
            value = raw[at : at + length].decode("utf-8")
            at += length
            if key is None:
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


def set_header_value(raw: bytes, name: str, value: str) -> bytes | None:
    """A request ``raw`` (decoded and checked: its header map walks cleanly) whose header ``name`` has
    ``value`` instead: that entry's value and length replaced (the last entry of that name, the one the
    decoder keeps), ``headerLen`` updated and v2's CRC32 recomputed, every other byte as it was. None when
    the map holds no entry ``name`` or would outgrow Bolt's 16-bit ``headerLen``."""
    fixed = _V1_REQUEST.size if raw[0] == PROTO_V1 else _V2_REQUEST.size
    class_len, header_len = _CLASS_HEADER_LEN.unpack_from(raw, fixed - 8)
    at = fixed + class_len
    end = at + header_len
    key = name.encode("utf-8")
    unpack = _LEN.unpack_from
    found = -1  # where the value's length of the last entry ``name`` starts
    while at < end:
        (length,) = unpack(raw, at)
        at += 4
        matched = length == len(key) and raw[at : at + length] == key
        if length > 0:
            at += length
        if matched:
            found = at
        (length,) = unpack(raw, at)
        at += 4 + max(length, 0)
    if found < 0:
        return None
    (old_length,) = unpack(raw, found)
    cut_to = found + 4 + max(old_length, 0)
    data = value.encode("utf-8")
    new_header_len = header_len - (cut_to - found) + 4 + len(data)
    if new_header_len > 0xFFFF:
        return None
    view = memoryview(raw)
    length_bytes = _HEADER_LEN.pack(new_header_len)
    out = b"".join(
        (view[: fixed - 6], length_bytes, view[fixed - 4 : found], _LEN.pack(len(data)), data, view[cut_to:])
    )
    if raw[0] == PROTO_V2 and _has_crc(PROTO_V2, raw[1], raw[11]):
        crc_at = len(out) - _CRC_BYTES
        out = out[:crc_at] + _ID.pack(zlib.crc32(memoryview(out)[:crc_at]))
    return out


_CLASS_HEADER_LEN: Final = struct.Struct(">HH")
_HEADER_LEN: Final = struct.Struct(">H")


class BoltCodec:
    """Bolt behind the protocol-neutral ``rpc.RpcCodec`` seam. ``proto`` chooses what ``encode_*`` writes."""

    name: str = PROTOCOL
    max_request_id: int = MAX_REQUEST_ID

    def __init__(self, proto: int = PROTO_V1, allowed_codecs: frozenset[int] = DEFAULT_CODECS) -> None:
        self.proto = proto
        self.allowed_codecs = allowed_codecs

    def decoder(self, limits: RpcLimits = rpc.DEFAULT_LIMITS, *, lazy_responses: bool = False) -> BoltDecoder:
        return BoltDecoder(limits, self.allowed_codecs, lazy_responses=lazy_responses)

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

    writes_headers: bool = True

    def set_header(self, frame: RpcFrame, name: str, value: str) -> bool:
        headers = frame.headers
        if name not in headers or name[:1] == ":":  # (a pseudo-header is not in the map)
            return False
        raw = set_header_value(frame.raw, name, value)
        if raw is None:
            return False
        frame.raw = raw
        headers[name] = value  # type: ignore[index]  # (the decoder's own dict, this frame's alone)
        return True

    id_struct: struct.Struct = _ID

    def id_offset(self, raw: bytes) -> int:
        """Where ``raw``'s request id starts, or -1 for a v2 frame with a CRC (``with_request_id`` then)."""
        if raw[0] == PROTO_V1:
            return _ID_OFFSET[PROTO_V1]
        return -1 if raw[1] == 2 and raw[11] & CRC_SWITCH else _ID_OFFSET[PROTO_V2]

"""SOFA Bolt v1/v2 codec: frames laid by hand from the protocol description, splits, limits, rejections."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.test_rpc_contract import comparable, cut, every_split, run
from plexus.codec import bolt, rpc
from plexus.codec.bolt import BoltDecoder, BoltStatus
from plexus.codec.rpc import FrameKind, RpcFrame, RpcLimits, RpcProtocolError

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "bolt"


def _entry(key: bytes, value: bytes) -> bytes:
    return struct.pack(">i", len(key)) + key + struct.pack(">i", len(value)) + value


HAND_HEADER = _entry(b"service", b"com.acme.Foo:1.0:blue") + _entry(b"sofa_head_method_name", b"get")
# A v1 request laid out byte by byte from the 22-byte fixed header of the protocol description.
HAND_V1_REQUEST = (
    bytes.fromhex("0101000101000000070100000bb80004")  # proto type cmd ver2 id codec timeout
    + struct.pack(">H", len(HAND_HEADER))
    + bytes.fromhex("00000003")
    + b"Klas"
    + HAND_HEADER
    + b"abc"
)
# A v1 response: 20-byte fixed header, status 0x11 (server serialization exception), no header map.
HAND_V1_RESPONSE = bytes.fromhex("0100000201000000070100110000000000000002") + b"ok"
_V2_HEARTBEAT_HEAD = bytes.fromhex("020201000001000000090101000000000000000000000000")
HAND_V2_HEARTBEAT_CRC = _V2_HEARTBEAT_HEAD + struct.pack(">I", zlib.crc32(_V2_HEARTBEAT_HEAD))


def _decode_one(data: bytes, **kw: object) -> RpcFrame:
    frames = BoltDecoder(**kw).feed(data)  # type: ignore[arg-type]
    assert len(frames) == 1 and frames[0].raw == data
    return frames[0]


def _reason(data: bytes, limits: RpcLimits = rpc.DEFAULT_LIMITS) -> str | None:
    return run(BoltDecoder(limits), [data])[1]


def test_hand_laid_v1_request() -> None:
    frame = _decode_one(HAND_V1_REQUEST)
    assert frame.kind is FrameKind.REQUEST
    assert frame.request_id == 7 and frame.timeout_ms == 3000 and frame.status is None
    assert frame.meta["class"] == "Klas" and frame.meta["codec"] == 1 and frame.meta["proto"] == 1
    assert dict(frame.headers) == {
        "service": "com.acme.Foo:1.0:blue",
        "sofa_head_method_name": "get",
        ":service": "com.acme.Foo",
        ":rpc-version": "1.0",
        ":rpc-method": "get",
    }


def test_hand_laid_v1_response() -> None:
    frame = _decode_one(HAND_V1_RESPONSE)
    assert frame.kind is FrameKind.RESPONSE
    assert frame.status == BoltStatus.SERVER_SERIAL_EXCEPTION and frame.timeout_ms is None
    assert frame.request_id == 7 and dict(frame.headers) == {}


def test_hand_laid_v2_heartbeat_with_crc() -> None:
    frame = _decode_one(HAND_V2_HEARTBEAT_CRC)
    assert frame.kind is FrameKind.HEARTBEAT and frame.request_id == 9
    assert (frame.meta["proto"], frame.meta["ver1"], frame.meta["switch"]) == (2, 2, 1)
    reply = bolt.heartbeat_reply(frame)
    # 22-byte v2 response header: type 0, cmdcode 0 (heartbeat), same id, status 0, then its own CRC32.
    assert reply[:14] == bytes.fromhex("0202000000010000000901010000")
    assert struct.unpack(">I", reply[-4:])[0] == zlib.crc32(reply[:-4])
    assert _decode_one(reply).kind is FrameKind.HEARTBEAT_REPLY


def test_v2_without_crc_switch_has_no_crc() -> None:
    data = bolt.encode_request(1, {"service": "a"}, b"body", proto=2, ver1=2, switch=0)
    assert len(data) == 24 + len(bolt.SOFA_REQUEST_CLASS) + len(bolt.encode_header_map({"service": "a"})) + 4
    assert _decode_one(data).headers[":service"] == "a"
    # ver1 = 1 keeps v1's length rule even with the switch on (RpcCommandDecoderV2).
    v21 = bolt.encode_request(1, {"service": "a"}, b"body", proto=2, ver1=1, switch=1)
    assert len(v21) == len(data)


def test_crc_mismatch_is_refused() -> None:
    bad = bytearray(HAND_V2_HEARTBEAT_CRC)
    bad[-1] ^= 0xFF
    assert _reason(bytes(bad)) == rpc.BOLT_BAD_CRC


def test_v2_crc_request_id_rewrite_recomputes_crc() -> None:
    data = bolt.encode_request(77, {"service": "svc:1"}, b"\x00payload\xff", proto=2, ver1=2, switch=1)
    frame = _decode_one(data)
    patched = bolt.rewrite_request_id(frame.raw, 0xFFFFFFFF)
    again = _decode_one(patched)
    assert again.request_id == 0xFFFFFFFF
    assert patched[10:-4] == data[10:-4]  # everything between the id and the CRC is untouched


def test_v1_request_id_rewrite_keeps_body_identical() -> None:
    patched = bolt.rewrite_request_id(HAND_V1_REQUEST, 123456)
    assert patched[:5] == HAND_V1_REQUEST[:5] and patched[9:] == HAND_V1_REQUEST[9:]
    assert patched[5:9] == struct.pack(">I", 123456)


def test_error_reply_carries_status_and_hessian_message() -> None:
    request = _decode_one(HAND_V1_REQUEST)
    reply = bolt.error_reply(request, BoltStatus.TIMEOUT, "upstream timeout")
    frame = _decode_one(reply)
    assert frame.kind is FrameKind.RESPONSE and frame.status == BoltStatus.TIMEOUT and frame.request_id == 7
    assert frame.meta["class"] == "java.lang.String"
    assert reply.endswith(bytes([len("upstream timeout")]) + b"upstream timeout")  # compact Hessian2 string


@pytest.mark.parametrize("data", [HAND_V1_REQUEST, HAND_V1_RESPONSE, HAND_V2_HEARTBEAT_CRC])
def test_hand_laid_frames_split_at_every_offset(data: bytes) -> None:
    stream = data + HAND_V1_RESPONSE + data
    whole = comparable(BoltDecoder().feed(stream))
    assert len(whole) == 3
    for pieces in every_split(stream):
        frames, reason = run(BoltDecoder(), pieces)
        assert reason is None and comparable(frames) == whole


def test_thousand_mixed_frames_in_one_buffer() -> None:
    parts = []
    for i in range(1000):
        proto = 1 + i % 2
        if i % 3 == 0:
            parts.append(bolt.encode_response(i, 0, b"r" * (i % 50), proto=proto, ver1=2, switch=1))
        else:
            parts.append(bolt.encode_request(i, {"service": f"s{i}:1"}, b"q", proto=proto, oneway=i % 5 == 0))
    frames = BoltDecoder().feed(b"".join(parts))
    assert [f.request_id for f in frames] == list(range(1000))
    assert [f.raw for f in frames] == parts
    assert frames[5].kind is FrameKind.ONEWAY and frames[3].kind is FrameKind.RESPONSE


def _v1_request_header(**fields: int) -> bytes:
    values = {"proto": 1, "type": 1, "cmd": 1, "codec": 1, "class_len": 0, "header_len": 0, "content_len": 0}
    values.update(fields)
    return struct.pack(
        ">BBHBIBiHHI",
        values["proto"],
        values["type"],
        values["cmd"],
        1,
        1,
        values["codec"],
        1000,
        values["class_len"],
        values["header_len"],
        values["content_len"],
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x03", rpc.BOLT_UNKNOWN_PROTOCOL),
        (b"\x00\x01", rpc.BOLT_UNKNOWN_PROTOCOL),
        (b"\x02\x09", rpc.BOLT_UNKNOWN_VERSION),
        (b"\x01\x05", rpc.BOLT_UNKNOWN_TYPE),
        (b"\x02\x01\x03", rpc.BOLT_UNKNOWN_TYPE),
        (_v1_request_header(cmd=7), rpc.BOLT_UNKNOWN_CMDCODE),
        (_v1_request_header(type=2, cmd=0), rpc.BOLT_UNKNOWN_CMDCODE),  # a one-way heartbeat
        (_v1_request_header(codec=2), rpc.BOLT_CODEC_NOT_ALLOWED),  # Java serialization
        (_v1_request_header(codec=0x63), rpc.BOLT_CODEC_NOT_ALLOWED),
        (_v1_request_header(content_len=0xFFFFFFFF), rpc.FRAME_TOO_LARGE),
        (_v1_request_header(content_len=16 * 1024 * 1024), rpc.FRAME_TOO_LARGE),
        (_v1_request_header(class_len=0xFFFF), rpc.BOLT_CLASS_TOO_LONG),
    ],
)
def test_rejected_from_the_fixed_header(data: bytes, reason: str) -> None:
    tracemalloc.start()
    try:
        assert _reason(data) == reason
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024  # refused before any body was buffered


def test_response_with_request_cmdcode_is_refused() -> None:
    data = bytes.fromhex("0100000101000000010100000000000000000000")
    assert _reason(data) == rpc.BOLT_UNKNOWN_CMDCODE


def test_heartbeat_codec_byte_is_not_checked() -> None:
    data = bytearray(bolt.encode_heartbeat(3))
    data[9] = 0  # heartbeats carry no content, so their codec byte cannot hurt anyone
    assert _decode_one(bytes(data)).kind is FrameKind.HEARTBEAT


def test_allowed_codecs_are_configurable() -> None:
    data = bolt.encode_request(1, {"service": "a"}, b"", codec=bolt.CODEC_JAVA)
    assert _reason(data) == rpc.BOLT_CODEC_NOT_ALLOWED
    assert _decode_one(data, allowed_codecs=frozenset({2})).meta["codec"] == 2


def _with_header(header: bytes, klass: bytes = b"") -> bytes:
    head = _v1_request_header(class_len=len(klass), header_len=len(header))
    return head + klass + header


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"\x00\x00\x00", rpc.BAD_HEADER_MAP),  # ends inside a length
        (struct.pack(">i", 50) + b"short", rpc.BAD_HEADER_MAP),  # overruns the map
        (struct.pack(">i", -2) + b"ab", rpc.BAD_HEADER_MAP),
        (_entry(b"k", b"\xff\xfe"), rpc.BAD_HEADER_MAP),  # not UTF-8
        (_entry(b":service", b"evil"), rpc.BAD_HEADER_MAP),  # pseudo-headers are ours
        (_entry(b"service", b"svc\x00:1"), rpc.BAD_ROUTING_FIELD),
        (_entry(b"sofa_head_method_name", b"m\r\nx"), rpc.BAD_ROUTING_FIELD),
        (_entry(b"k", b"v") * 129, rpc.TOO_MANY_HEADERS),
    ],
)
def test_bad_header_maps(header: bytes, reason: str) -> None:
    assert _reason(_with_header(header)) == reason


def test_header_map_limit() -> None:
    header = _entry(b"k", b"v" * 2000)
    limits = RpcLimits(max_header_bytes=1024)
    assert _reason(_with_header(header)[:22], limits) == rpc.HEADERS_TOO_LARGE
    assert _reason(_with_header(header)) is None


def test_lazy_response_checks_framing_now_and_the_header_map_when_read() -> None:
    bad_map = struct.pack(">i", 50) + b"short"
    # v1 response: proto type cmdcode ver2 id codec status classLen headerLen contentLen
    response = struct.pack(">BBHBIBHHHI", 1, 0, 2, 1, 7, 1, 0, 0, len(bad_map), 0) + bad_map
    assert _reason(response) == rpc.BAD_HEADER_MAP  # the eager decoder refuses it at once
    frame = BoltDecoder(lazy_responses=True).feed(response)[0]
    assert (frame.kind, frame.request_id, frame.status, frame.raw) == (FrameKind.RESPONSE, 7, 0, response)
    with pytest.raises(RpcProtocolError) as caught:
        _ = frame.headers  # nothing on the proxy's path reads it; a filter that did would get the error
    assert caught.value.reason == rpc.BAD_HEADER_MAP
    too_big = struct.pack(">BBHBIBHHHI", 1, 0, 2, 1, 8, 1, 0, 0, 0, 2**30)
    frames, reason = run(BoltDecoder(lazy_responses=True), [too_big])
    assert (frames, reason) == ([], rpc.FRAME_TOO_LARGE)  # limits are still checked from the fixed header


def test_class_name_must_be_utf8() -> None:
    assert _reason(_with_header(b"", klass=b"\xc3\x28")) == rpc.BOLT_BAD_CLASS


def test_null_header_entries_are_dropped() -> None:
    header = struct.pack(">i", -1) + _entry(b"", b"")[4:] + _entry(b"service", b"a:2")
    frame = _decode_one(_with_header(header))
    assert dict(frame.headers) == {"service": "a:2", ":service": "a", ":rpc-version": "2", ":rpc-method": ""}


def test_target_service_header_is_a_fallback() -> None:
    frame = _decode_one(_with_header(_entry(b"sofa_head_target_service", b"x.Y:3.1")))
    assert (frame.headers[":service"], frame.headers[":rpc-version"]) == ("x.Y", "3.1")


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)
_headers = st.dictionaries(_text.filter(lambda k: not k.startswith(":")), _text, max_size=6)


@st.composite
def _frames(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    proto = draw(st.sampled_from([1, 2]))
    ver1 = draw(st.sampled_from([1, 2])) if proto == 2 else 1
    switch = draw(st.integers(0, 255)) if proto == 2 else 0
    request_id = draw(st.integers(0, 2**32 - 1))
    headers = draw(_headers)
    content = draw(st.binary(max_size=300))
    class_name = draw(_text)
    codec = draw(st.sampled_from(sorted(bolt.DEFAULT_CODECS)))
    if draw(st.booleans()):
        oneway = draw(st.booleans())
        timeout = draw(st.integers(-(2**31), 2**31 - 1))
        data = bolt.encode_request(
            request_id, headers, content, class_name=class_name, timeout_ms=timeout, codec=codec,
            oneway=oneway, proto=proto, ver1=ver1, switch=switch,
        )  # fmt: skip
        kind = FrameKind.ONEWAY if oneway else FrameKind.REQUEST
        expect = {"kind": kind, "timeout_ms": timeout, "status": None}
    else:
        status = draw(st.integers(0, 0xFFFF))
        data = bolt.encode_response(
            request_id, status, content, headers=headers, class_name=class_name, codec=codec,
            proto=proto, ver1=ver1, switch=switch,
        )  # fmt: skip
        expect = {"kind": FrameKind.RESPONSE, "timeout_ms": None, "status": status}
    expect.update(request_id=request_id, headers=headers, class_name=class_name, codec=codec)
    return data, expect


@settings(max_examples=200, deadline=None)
@given(sample=_frames(), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_property_decode_encode_round_trip(sample: tuple[bytes, dict[str, object]], cuts: list[int]) -> None:
    data, expect = sample
    frames, reason = run(BoltDecoder(), cut(data, cuts))
    assert reason is None and len(frames) == 1
    frame = frames[0]
    assert frame.raw == data
    assert (frame.kind, frame.request_id, frame.status, frame.timeout_ms) == (
        expect["kind"],
        expect["request_id"],
        expect["status"],
        expect["timeout_ms"],
    )
    own = {k: v for k, v in frame.headers.items() if not k.startswith(":")}
    assert own == expect["headers"]
    assert (frame.meta["class"], frame.meta["codec"]) == (expect["class_name"], expect["codec"])


@settings(max_examples=150, deadline=None)
@given(sample=_frames(), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=3))
def test_property_corrupted_frames_never_crash(
    sample: tuple[bytes, dict[str, object]], flips: list[tuple[int, int]]
) -> None:
    data = bytearray(sample[0])
    for at, mask in flips:
        if at < len(data):
            data[at] ^= mask
    whole = run(BoltDecoder(), [bytes(data)])
    split = run(BoltDecoder(), list(every_split(bytes(data)))[-1])
    assert (comparable(whole[0]), whole[1]) == (comparable(split[0]), split[1])


def _corpus() -> list[dict[str, object]]:
    return json.loads((CORPUS / "cases.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", _corpus(), ids=lambda c: str(c["name"]))
def test_corpus(case: dict[str, object]) -> None:
    data = bytes.fromhex(str(case["hex"]))
    frames, reason = run(BoltDecoder(), [data])
    assert reason == case["reason"]
    assert len(frames) == case["frames"]
    for pieces in every_split(data):
        split_frames, split_reason = run(BoltDecoder(), pieces)
        assert (comparable(split_frames), split_reason) == (comparable(frames), reason)


# -- a header set in a request (the proxy's hop in a trace: plexus.transport.rpc_proxy) ----------------

TRACEPARENT_IN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACEPARENT_OUT = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
VERSIONS = [(bolt.PROTO_V1, 1, 0), (bolt.PROTO_V2, 2, bolt.CRC_SWITCH), (bolt.PROTO_V2, 1, 0)]


def _decoded(raw: bytes) -> RpcFrame:
    [frame] = BoltDecoder().feed(raw)
    return frame


@pytest.mark.parametrize(("proto", "ver1", "switch"), VERSIONS)
@pytest.mark.parametrize("value", [TRACEPARENT_OUT, "00-short", "x" * 300])
def test_set_header_rewrites_one_value_and_keeps_the_rest(
    proto: int, ver1: int, switch: int, value: str
) -> None:
    headers = {
        bolt.HEADER_SERVICE: "com.acme.Echo:1.0",
        "traceparent": TRACEPARENT_IN,
        "tracestate": "vendor=1",
        bolt.HEADER_METHOD: "echo",
    }
    raw = bolt.encode_request(
        77, headers, b"<content>", timeout_ms=3000, proto=proto, ver1=ver1, switch=switch
    )
    frame = _decoded(raw)
    before = dict(frame.headers)
    assert bolt.BoltCodec().set_header(frame, "traceparent", value)
    again = _decoded(frame.raw)  # a decoder takes it: lengths and (v2) the CRC32 are right
    assert again.headers["traceparent"] == value == frame.headers["traceparent"]
    assert {k: v for k, v in again.headers.items() if k != "traceparent"} == {
        k: v for k, v in before.items() if k != "traceparent"
    }
    assert again.request_id == 77 and again.timeout_ms == 3000 and again.meta == _decoded(raw).meta
    expected = bolt.encode_request(
        77,
        {**headers, "traceparent": value},
        b"<content>",
        timeout_ms=3000,
        proto=proto,
        ver1=ver1,
        switch=switch,
    )
    assert frame.raw == expected  # byte for byte the frame an encoder writes with that value


def test_set_header_rewrites_the_entry_the_decoder_keeps() -> None:
    """Two entries of one name: the decoder keeps the last, so that one is rewritten."""
    first = bolt.encode_header_map({"traceparent": "first"})
    rest = bolt.encode_header_map({bolt.HEADER_SERVICE: "com.acme.Echo", "traceparent": TRACEPARENT_IN})
    raw = bolt._frame(1, 1, 0, bolt.TYPE_REQUEST, bolt.CMD_REQUEST, 5, 1, 0, "", None, b"body")
    header = first + rest
    raw = raw[:14] + struct.pack(">HHI", 0, len(header), 4) + header + b"body"  # (v1: classLen at 14)
    frame = _decoded(raw)
    assert frame.headers["traceparent"] == TRACEPARENT_IN
    assert bolt.BoltCodec().set_header(frame, "traceparent", TRACEPARENT_OUT)
    assert frame.raw.count(b"first") == 1 and TRACEPARENT_OUT.encode() in frame.raw
    assert _decoded(frame.raw).headers["traceparent"] == TRACEPARENT_OUT


def test_set_header_leaves_what_it_cannot_write() -> None:
    codec = bolt.BoltCodec()
    raw = bolt.encode_request(1, {bolt.HEADER_SERVICE: "com.acme.Echo", "traceparent": "v"})
    frame = _decoded(raw)
    assert not codec.set_header(frame, rpc.SERVICE, "other")  # a pseudo-header is not on the wire
    assert not codec.set_header(frame, "traceparent", "x" * 70_000)  # headerLen is 16 bits
    assert not codec.set_header(frame, "tracestate", "x")  # absent: a header is never added
    assert frame.raw == raw and "tracestate" not in frame.headers  # left as it was
    assert bolt.set_header_value(raw, "tracestate", "x") is None

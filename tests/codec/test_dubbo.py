"""Dubbo 2.x codec: frames laid by hand from the spec, splits, limits, rejections, Hessian2 routing."""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.test_rpc_contract import comparable, cut, every_split, run
from plexus.codec import dubbo, hessian2, rpc
from plexus.codec.dubbo import DubboDecoder, DubboStatus
from plexus.codec.rpc import FrameKind, RpcFrame, RpcLimits

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "dubbo"


def _header(flags: int, status: int, request_id: int, body: bytes) -> bytes:
    return b"\xda\xbb" + bytes((flags, status)) + struct.pack(">Qi", request_id, len(body))


def _frame(flags: int, body: bytes, request_id: int = 5, status: int = 0) -> bytes:
    return _header(flags, status, request_id, body) + body


# A request as Dubbo 2.7 writes it: flags 0xc2 (request, two-way, Hessian2), then the body's compact strings.
HAND_BODY = (
    b"\x052.0.2"  # dubbo version, compact string of 5
    + b"\x14com.acme.DemoService"  # service path, 20 characters
    + b"\x051.0.0"  # service version
    + b"\x08sayHello"  # method
    + b"\x12Ljava/lang/String;"  # parameter descriptor
    + b"\x05world"  # the argument
    + b"H\x04path\x14com.acme.DemoServiceZ"  # attachments: untyped map
)
HAND_REQUEST = bytes.fromhex("dabbc2000000000000000005") + struct.pack(">i", len(HAND_BODY)) + HAND_BODY
# The answer: flags 0x02 (response, Hessian2), status 20, body = int 1 (RESPONSE_VALUE, 0x91) + "hello".
HAND_RESPONSE = bytes.fromhex("dabb021400000000000000050000000791") + b"\x05hello"
HAND_HEARTBEAT = bytes.fromhex("dabbe20000000000000000ff000000014e")  # event, body N
HAND_ERROR = bytes.fromhex("dabb0246000000000000000500000008530005") + b"boom!"  # status 70


def _decode_one(data: bytes, **kw: object) -> RpcFrame:
    frames = DubboDecoder(**kw).feed(data)  # type: ignore[arg-type]
    assert len(frames) == 1 and frames[0].raw == data
    return frames[0]


def _reason(data: bytes, limits: RpcLimits = rpc.DEFAULT_LIMITS) -> str | None:
    return run(DubboDecoder(limits), [data])[1]


def test_hand_laid_request() -> None:
    frame = _decode_one(HAND_REQUEST)
    assert frame.kind is FrameKind.REQUEST and frame.request_id == 5 and frame.status is None
    assert frame.meta == {"flags": 0xC2, "serialization": 2}
    assert dict(frame.headers) == {
        "dubbo": "2.0.2",
        "path": "com.acme.DemoService",
        "version": "1.0.0",
        "method": "sayHello",
        ":service": "com.acme.DemoService",
        ":rpc-method": "sayHello",
        ":rpc-version": "1.0.0",
    }


def test_hand_laid_response_heartbeat_and_error() -> None:
    response = _decode_one(HAND_RESPONSE)
    assert (response.kind, response.status, response.request_id) == (FrameKind.RESPONSE, 20, 5)
    ping = _decode_one(HAND_HEARTBEAT)
    assert ping.kind is FrameKind.HEARTBEAT and ping.request_id == 0xFF
    error = _decode_one(HAND_ERROR)
    assert error.kind is FrameKind.RESPONSE and error.status == DubboStatus.SERVICE_ERROR


def test_heartbeat_reply_matches_dubbo() -> None:
    reply = dubbo.heartbeat_reply(_decode_one(HAND_HEARTBEAT))
    # Response (no 0x80), event 0x20, Hessian2 2; status 20; same id; body N.
    assert reply == bytes.fromhex("dabb221400000000000000ff000000014e")
    assert _decode_one(reply).kind is FrameKind.HEARTBEAT_REPLY


def test_error_reply_is_status_and_hessian_string() -> None:
    request = _decode_one(HAND_REQUEST)
    reply = dubbo.error_reply(request, DubboStatus.SERVICE_NOT_FOUND, "no provider for com.acme.DemoService")
    message = "no provider for com.acme.DemoService"
    assert reply[:16] == _header(0x02, 60, 5, hessian2.encode_string(message))
    assert reply[16:] == bytes((0x30, len(message))) + message.encode()  # 0x30 b0: 32..1023 characters
    with pytest.raises(ValueError):
        dubbo.error_reply(request, DubboStatus.OK, "not an error")


def test_request_id_rewrite_keeps_body_identical() -> None:
    patched = dubbo.rewrite_request_id(HAND_REQUEST, 2**64 - 1)
    assert patched[:4] == HAND_REQUEST[:4] and patched[12:] == HAND_REQUEST[12:]
    assert _decode_one(patched).request_id == 2**64 - 1


def test_attachments_pass_through_untouched() -> None:
    tail = hessian2.encode_string("I") + b"\x91" + b"H\x07timeout\x04500\x05group\x03redZ" + b"\xff" * 5
    data = dubbo.encode_request(1, "a.B", "c", tail=tail)
    frame = _decode_one(data)
    assert frame.raw.endswith(tail)
    assert "timeout" not in frame.headers  # attachments are not read (yet)


@pytest.mark.parametrize("data", [HAND_REQUEST, HAND_RESPONSE, HAND_HEARTBEAT, HAND_ERROR])
def test_hand_laid_frames_split_at_every_offset(data: bytes) -> None:
    stream = data + HAND_HEARTBEAT + data
    whole = comparable(DubboDecoder().feed(stream))
    assert len(whole) == 3
    for pieces in every_split(stream):
        frames, reason = run(DubboDecoder(), pieces)
        assert reason is None and comparable(frames) == whole


def test_thousand_frames_in_one_buffer() -> None:
    parts = []
    for i in range(1000):
        if i % 4 == 0:
            parts.append(dubbo.encode_response(i, 20, b"\x91\x05hello"))
        elif i % 4 == 1:
            parts.append(dubbo.encode_heartbeat(i))
        else:
            parts.append(dubbo.encode_request(i, f"svc.S{i}", "m", version="1", two_way=i % 3 != 0))
    frames = DubboDecoder().feed(b"".join(parts))
    assert [f.request_id for f in frames] == list(range(1000))
    assert [f.raw for f in frames] == parts
    assert frames[2].headers[":service"] == "svc.S2"


def test_events_that_are_not_heartbeats() -> None:
    readonly = _frame(0x80 | 0x20 | 2, hessian2.encode_string("R"))  # the provider's readonly notice
    assert _decode_one(readonly).kind is FrameKind.EVENT
    assert _decode_one(_frame(0x80 | 0x20 | 2, b"N")).kind is FrameKind.EVENT  # one-way: nothing to answer
    assert _decode_one(_frame(0x80 | 0x40 | 0x20 | 2, b"")).kind is FrameKind.HEARTBEAT
    assert _decode_one(_frame(0x20 | 2, b"N", status=20)).kind is FrameKind.HEARTBEAT_REPLY


def test_null_versions_are_empty() -> None:
    data = dubbo.encode_request(3, "a.B", "m", version=None, dubbo_version=None)
    frame = _decode_one(data)
    assert (frame.headers[":rpc-version"], frame.headers["dubbo"]) == ("", "")


def test_supplementary_characters_in_routing_strings() -> None:
    # Java writes U+1F600 as two 3-byte surrogates (6 bytes), declaring 2 characters; others write 4 bytes.
    cesu = b"\x03a" + "\ud83d".encode("utf-8", "surrogatepass") + "\ude00".encode("utf-8", "surrogatepass")
    plain = b"\x03a" + "😀".encode()
    for method in (cesu, plain):
        body = b"\x052.0.2" + b"\x03a.B" + b"N" + method + dubbo.EMPTY_CALL_TAIL
        assert _decode_one(_frame(0xC2, body)).headers[":rpc-method"] == "a😀"


def _request_body(path: bytes = b"\x03a.B", method: bytes = b"\x01m", version: bytes = b"N") -> bytes:
    return b"\x052.0.2" + path + version + method + dubbo.EMPTY_CALL_TAIL


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00", rpc.DUBBO_BAD_MAGIC),
        (b"\xda\xbc", rpc.DUBBO_BAD_MAGIC),
        (b"GET / HTTP/1.1\r\n", rpc.DUBBO_BAD_MAGIC),
        (b"\xda\xbb\xc3", rpc.DUBBO_SERIALIZATION_NOT_ALLOWED),  # 3: Java
        (b"\xda\xbb\xc7", rpc.DUBBO_SERIALIZATION_NOT_ALLOWED),  # 7: native Java
        (b"\xda\xbb\xc8", rpc.DUBBO_SERIALIZATION_NOT_ALLOWED),  # 8: Kryo
        (b"\xda\xbb\x06\x14", rpc.DUBBO_SERIALIZATION_NOT_ALLOWED),  # responses are checked too
        (_header(0xC2, 0, 1, b"")[:12] + struct.pack(">i", -1), rpc.DUBBO_BAD_LENGTH),
        (_header(0xC2, 0, 1, b"")[:12] + struct.pack(">i", 0x7FFFFFFF), rpc.FRAME_TOO_LARGE),
        (_header(0xC2, 0, 1, b"")[:12] + struct.pack(">i", 16 * 1024 * 1024 - 15), rpc.FRAME_TOO_LARGE),
    ],
)
def test_rejected_from_the_fixed_header(data: bytes, reason: str) -> None:
    tracemalloc.start()
    try:
        assert _reason(data) == reason
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_request_body(path=b"S\xff\xff" + b"a" * 100), rpc.HESSIAN_STRING_TOO_LONG),  # 65535 declared
        (
            _request_body(path=b"R\x10\x00" + b"a" * 4096 + b"\x01a"),
            rpc.HESSIAN_STRING_TOO_LONG,
        ),  # over the cap
        (_request_body(path=b"R\x00\x00" * 50 + b"\x01a"), rpc.HESSIAN_TOO_DEEP),  # a chain of empty chunks
        (_request_body(path=b"R\x00\x01a" * 9 + b"\x01a"), rpc.HESSIAN_TOO_DEEP),
        (b"\x052.0.2\x10abc", rpc.HESSIAN_TRUNCATED),  # declares 16 characters, the body ends after 3
        (b"\x052.0.2\x03a.B", rpc.HESSIAN_TRUNCATED),  # the version is missing
        (b"\x052.0.2S\x00", rpc.HESSIAN_TRUNCATED),  # the length itself is cut
        (_request_body(path=b"\x02\xc3\x28"), rpc.HESSIAN_INVALID_UTF8),  # bad continuation byte
        (_request_body(path=b"\x01\xc0\x80"), rpc.HESSIAN_INVALID_UTF8),  # overlong NUL
        (_request_body(path=b"\x01\x80"), rpc.HESSIAN_INVALID_UTF8),  # stray continuation
        (_request_body(path=b"\x01\xed\xa0\x80"), rpc.HESSIAN_INVALID_UTF8),  # unpaired high surrogate
        (
            _request_body(path=b"\x01\xf0\x9f\x98\x80"),
            rpc.HESSIAN_INVALID_UTF8,
        ),  # 4 bytes but 1 unit declared
        (_request_body(path=b"\x02\xf8\x88\x80\x80\x80"), rpc.HESSIAN_INVALID_UTF8),
        (_request_body(path=b"\x91"), rpc.HESSIAN_NOT_STRING),  # an int where the path must be
        (_request_body(path=b"N"), rpc.HESSIAN_NOT_STRING),  # no service: nothing to route on
        (_request_body(path=b"R\x00\x01aN"), rpc.HESSIAN_NOT_STRING),  # a chunk chain must end in a string
        (_request_body(method=b"\x00"), rpc.DUBBO_BAD_BODY),  # empty method
        (_request_body(method=b"\x02m\n"), rpc.BAD_ROUTING_FIELD),
        (_request_body(path=b"\x03a\x00B"), rpc.BAD_ROUTING_FIELD),
        (b"", rpc.HESSIAN_TRUNCATED),  # a request with no body at all
    ],
)
def test_bad_routing_fields(body: bytes, reason: str) -> None:
    tracemalloc.start()
    try:
        assert _reason(_frame(0xC2, body)) == reason
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def test_string_limits_are_configurable() -> None:
    data = _frame(0xC2, _request_body(path=b"\x30\x40" + b"p" * 64))
    assert _reason(data, RpcLimits(max_string_units=63)) == rpc.HESSIAN_STRING_TOO_LONG
    assert _reason(data, RpcLimits(max_string_units=64)) is None
    chunked = _frame(0xC2, _request_body(path=b"R\x00\x01aR\x00\x01b\x01c"))
    assert _reason(chunked, RpcLimits(max_string_chunks=2)) == rpc.HESSIAN_TOO_DEEP
    assert _decode_one(chunked).headers[":service"] == "abc"


def test_allowed_serializations_are_configurable() -> None:
    data = dubbo.encode_request(1, "a.B", "m", serialization=21)
    assert _reason(data) == rpc.DUBBO_SERIALIZATION_NOT_ALLOWED
    frame = _decode_one(data, allowed_serializations=frozenset({2, 21}))
    assert frame.meta["serialization"] == 21


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


@st.composite
def _frames(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    request_id = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        path = draw(_text.filter(bool))
        method = draw(_text.filter(bool))
        version = draw(st.none() | _text)
        dubbo_version = draw(st.none() | _text)
        tail = draw(st.binary(max_size=200))
        two_way = draw(st.booleans())
        data = dubbo.encode_request(
            request_id, path, method, version=version, dubbo_version=dubbo_version, tail=tail, two_way=two_way
        )
        headers = {
            "dubbo": dubbo_version or "",
            "path": path,
            "version": version or "",
            "method": method,
            ":service": path,
            ":rpc-method": method,
            ":rpc-version": version or "",
        }
        kind = FrameKind.REQUEST if two_way else FrameKind.ONEWAY
        return data, {"kind": kind, "request_id": request_id, "headers": headers, "status": None}
    status = draw(st.integers(0, 255))
    event = draw(st.booleans())
    data = dubbo.encode_response(request_id, status, draw(st.binary(max_size=200)), event=event)
    kind = FrameKind.HEARTBEAT_REPLY if event else FrameKind.RESPONSE
    return data, {"kind": kind, "request_id": request_id, "headers": {}, "status": status}


@settings(max_examples=200, deadline=None)
@given(sample=_frames(), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_property_decode_encode_round_trip(sample: tuple[bytes, dict[str, object]], cuts: list[int]) -> None:
    data, expect = sample
    frames, reason = run(DubboDecoder(), cut(data, cuts))
    assert reason is None and len(frames) == 1
    frame = frames[0]
    assert frame.raw == data
    assert (frame.kind, frame.request_id, dict(frame.headers), frame.status) == (
        expect["kind"],
        expect["request_id"],
        expect["headers"],
        expect["status"],
    )


@settings(max_examples=150, deadline=None)
@given(sample=_frames(), flips=st.lists(st.tuples(st.integers(0, 300), st.integers(1, 255)), max_size=3))
def test_property_corrupted_frames_never_crash(
    sample: tuple[bytes, dict[str, object]], flips: list[tuple[int, int]]
) -> None:
    data = bytearray(sample[0])
    for at, mask in flips:
        if at < len(data):
            data[at] ^= mask
    whole = run(DubboDecoder(), [bytes(data)])
    split = run(DubboDecoder(), list(every_split(bytes(data)))[-1])
    assert (comparable(whole[0]), whole[1]) == (comparable(split[0]), split[1])


def _corpus() -> list[dict[str, object]]:
    return json.loads((CORPUS / "cases.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", _corpus(), ids=lambda c: str(c["name"]))
def test_corpus(case: dict[str, object]) -> None:
    data = bytes.fromhex(str(case["hex"]))
    frames, reason = run(DubboDecoder(), [data])
    assert reason == case["reason"]
    assert len(frames) == case["frames"]
    for pieces in every_split(data):
        split_frames, split_reason = run(DubboDecoder(), pieces)
        assert (comparable(split_frames), split_reason) == (comparable(frames), reason)


def test_no_header_is_written_into_a_dubbo_request() -> None:
    """A Dubbo request's attachments follow its arguments, which are never decoded: the codec says it
    writes no header, and a proxy asking anyway gets False (the frame goes on as it came)."""
    codec = dubbo.DubboCodec()
    frame = _decode_one(dubbo.encode_request(3, "com.acme.Echo", "echo"))
    assert codec.writes_headers is False
    raw = frame.raw
    assert not codec.set_header(frame, "traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert frame.raw == raw

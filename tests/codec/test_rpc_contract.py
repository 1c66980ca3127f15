"""One contract for every RPC codec: what the proxy relies on, checked alike for Bolt v1, v2 and Dubbo."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexus.codec import bolt, dubbo, rpc
from plexus.codec.bolt import PROTO_V1, PROTO_V2, BoltCodec
from plexus.codec.dubbo import DubboCodec
from plexus.codec.rpc import FrameKind, LocalError, RpcCodec, RpcDecoder, RpcFrame, RpcProtocolError

# --- Helpers the per-codec test modules share ---------------------------------------------------------------


def run(decoder: RpcDecoder, pieces: Sequence[bytes]) -> tuple[list[RpcFrame], str | None]:
    """Feed ``pieces`` in order: the frames delivered (before any error too) and the rejection's reason."""
    frames: list[RpcFrame] = []
    for piece in pieces:
        try:
            frames += decoder.feed(piece)
        except RpcProtocolError as exc:
            return frames + exc.frames, exc.reason
    return frames, None


def every_split(data: bytes) -> Iterator[list[bytes]]:
    """Two pieces cut at every offset, then one byte at a time."""
    for cut in range(len(data) + 1):
        yield [data[:cut], data[cut:]]
    yield [data[i : i + 1] for i in range(len(data))]


def cut(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


def comparable(frames: Sequence[RpcFrame]) -> list[tuple[object, ...]]:
    return [
        (f.kind, f.request_id, dict(f.headers), f.raw, f.status, f.timeout_ms, dict(f.meta)) for f in frames
    ]


# --- The contract -------------------------------------------------------------------------------------------

CODECS: dict[str, Callable[[], RpcCodec]] = {
    "bolt-v1": lambda: BoltCodec(PROTO_V1),
    "bolt-v2": lambda: BoltCodec(PROTO_V2),
    "dubbo": DubboCodec,
}


@pytest.fixture(params=sorted(CODECS))
def codec(request: pytest.FixtureRequest) -> RpcCodec:
    return CODECS[request.param]()


def _one(codec: RpcCodec, data: bytes) -> RpcFrame:
    frames = codec.decoder().feed(data)
    assert len(frames) == 1
    assert frames[0].raw == data
    return frames[0]


def test_request_carries_pseudo_headers(codec: RpcCodec) -> None:
    frame = _one(codec, codec.encode_request(7, "com.acme.Orders", "place", "1.0", timeout_ms=500))
    assert frame.protocol == codec.name
    assert frame.kind is FrameKind.REQUEST and frame.kind.expects_reply
    assert frame.request_id == 7
    assert frame.headers[rpc.SERVICE] == "com.acme.Orders"
    assert frame.headers[rpc.RPC_METHOD] == "place"
    assert frame.headers[rpc.RPC_VERSION] == "1.0"
    assert frame.status is None


def test_request_without_version_has_empty_version(codec: RpcCodec) -> None:
    frame = _one(codec, codec.encode_request(1, "svc.A", "m"))
    assert frame.headers[rpc.RPC_VERSION] == ""


def test_oneway_expects_no_reply(codec: RpcCodec) -> None:
    frame = _one(codec, codec.encode_request(9, "svc.A", "fire", oneway=True))
    assert frame.kind is FrameKind.ONEWAY and not frame.kind.expects_reply


def test_heartbeat_is_answered_with_same_id(codec: RpcCodec) -> None:
    ping = _one(codec, codec.heartbeat(0xABCD))
    assert ping.kind is FrameKind.HEARTBEAT
    pong = _one(codec, codec.heartbeat_reply(ping))
    assert pong.kind is FrameKind.HEARTBEAT_REPLY and pong.kind.is_reply
    assert pong.request_id == 0xABCD
    assert not any(name.startswith(":") for name in pong.headers)


@pytest.mark.parametrize("error", list(LocalError))
def test_error_reply_is_a_response_with_a_failure_status(codec: RpcCodec, error: LocalError) -> None:
    request = _one(codec, codec.encode_request(41, "svc.A", "m"))
    reply = _one(codec, codec.error_reply(request, error, "no healthy upstream for svc.A"))
    assert reply.kind is FrameKind.RESPONSE
    assert reply.request_id == 41
    ok = 0 if codec.name == "bolt" else 20
    assert reply.status is not None and reply.status != ok
    assert b"no healthy upstream for svc.A" in reply.raw  # the message travels as a Hessian2 string


def test_error_statuses_differ_per_error(codec: RpcCodec) -> None:
    request = _one(codec, codec.encode_request(1, "svc.A", "m"))
    statuses = {_one(codec, codec.error_reply(request, e, "x")).status for e in LocalError}
    assert len(statuses) >= 5  # timeouts, overload, missing service... are told apart


def test_request_id_rewrite_patches_only_the_id(codec: RpcCodec) -> None:
    body = bytes(range(256)) * 4
    frame = _one(codec, codec.encode_request(5, "svc.A", "m", "2", body=body))
    new_id = codec.max_request_id
    patched = codec.with_request_id(frame, new_id)
    again = _one(codec, patched)
    assert again.request_id == new_id
    assert len(patched) == len(frame.raw)
    assert patched[-len(body) :] == body  # the body is byte-identical
    assert dict(again.headers) == dict(frame.headers)
    diff = [i for i, (a, b) in enumerate(zip(frame.raw, patched, strict=True)) if a != b]
    assert diff and max(diff) < 16 and max(diff) - min(diff) < 8  # only the id field moved


def _sliced_reid(codec: RpcCodec, frame: RpcFrame, request_id: int) -> bytes:
    """What the proxy writes: the frame's bytes appended to a buffer, the id packed over the old one."""
    at = codec.id_offset(frame.raw)
    if at < 0:
        return codec.with_request_id(frame, request_id)
    out = bytearray(b"before")
    out += frame.raw
    codec.id_struct.pack_into(out, len(b"before") + at, request_id)
    assert out[:6] == b"before"
    return bytes(out[6:])


@pytest.mark.parametrize("request_id", [0, 1, 0x12345678, 2**31 - 1, 2**32 - 1])
def test_sliced_reid_equals_with_request_id(codec: RpcCodec, request_id: int) -> None:
    body = bytes(range(256))
    frames = [
        codec.encode_request(5, "svc.A", "m", "2", body=body),
        codec.encode_request(6, "svc.A", "m", oneway=True),
        codec.heartbeat(7),
    ]
    request = _one(codec, frames[0])
    frames.append(codec.error_reply(request, LocalError.TIMEOUT, "late"))
    for data in frames:
        frame = _one(codec, data)
        assert _sliced_reid(codec, frame, request_id) == codec.with_request_id(frame, request_id)


def test_bolt_v2_crc_frames_are_not_resliced() -> None:
    codec = BoltCodec(PROTO_V2)
    with_crc = bolt.encode_request(3, {"service": "a:1"}, b"x", proto=PROTO_V2, ver1=2, switch=1)
    without = bolt.encode_request(3, {"service": "a:1"}, b"x", proto=PROTO_V2, ver1=2, switch=0)
    assert codec.id_offset(with_crc) == -1  # the CRC covers the id: with_request_id recomputes it
    assert codec.id_offset(without) == 6
    frame = _one(codec, with_crc)
    assert _one(codec, _sliced_reid(codec, frame, 99)).request_id == 99  # and the CRC still checks


def test_lazy_responses_decode_the_same_frames(codec: RpcCodec) -> None:
    request = _one(codec, codec.encode_request(41, "svc.A", "m"))
    stream = b"".join(
        [
            codec.error_reply(request, LocalError.UNAVAILABLE, "gone"),
            codec.heartbeat_reply(_one(codec, codec.heartbeat(3))),
            codec.encode_request(8, "svc.B", "n", "1"),
            codec.heartbeat(4),
        ]
    )
    for pieces in every_split(stream):
        lazy, reason = run(codec.decoder(lazy_responses=True), pieces)
        eager, eager_reason = run(codec.decoder(), pieces)
        assert reason is None and eager_reason is None
        assert comparable(lazy) == comparable(eager)
        assert lazy == eager


def test_frame_equality_and_repr() -> None:
    a = RpcFrame("bolt", FrameKind.RESPONSE, 1, {}, b"x", status=0)
    assert a == RpcFrame("bolt", FrameKind.RESPONSE, 1, {}, b"x", 0, None, {})
    assert a != RpcFrame("bolt", FrameKind.RESPONSE, 2, {}, b"x", status=0)
    assert "request_id=1" in repr(a) and a.meta == {} and a.headers == {}


def test_request_id_out_of_range_is_refused(codec: RpcCodec) -> None:
    frame = _one(codec, codec.encode_request(5, "svc.A", "m"))
    with pytest.raises(ValueError, match=rpc.BAD_REQUEST_ID):
        codec.with_request_id(frame, codec.max_request_id + 1)
    with pytest.raises(ValueError, match=rpc.BAD_REQUEST_ID):
        codec.encode_request(-1, "svc.A", "m")


def test_thousand_frames_in_one_buffer(codec: RpcCodec) -> None:
    frames = [codec.encode_request(i, f"svc.S{i % 7}", f"m{i}", "1") for i in range(1000)]
    decoded = codec.decoder().feed(b"".join(frames))
    assert [f.request_id for f in decoded] == list(range(1000))
    assert [f.raw for f in decoded] == frames
    assert decoded[999].headers[rpc.RPC_METHOD] == "m999"


def test_every_split_gives_the_same_frames(codec: RpcCodec) -> None:
    data = codec.encode_request(3, "svc.Ünïcode", "mé", "1", body=b"xyz") + codec.heartbeat(4)
    whole = comparable(codec.decoder().feed(data))
    assert len(whole) == 2
    for pieces in every_split(data):
        frames, reason = run(codec.decoder(), pieces)
        assert reason is None
        assert comparable(frames) == whole


def test_oversized_declared_length_is_refused_from_the_header(codec: RpcCodec) -> None:
    limits = rpc.RpcLimits(max_frame_bytes=1024)
    data = codec.encode_request(1, "svc.A", "m", body=b"x" * 2000)
    decoder = codec.decoder(limits)
    header = data[:24]  # the fixed header alone, no body yet
    with pytest.raises(RpcProtocolError) as info:
        decoder.feed(header)
    assert info.value.reason == rpc.FRAME_TOO_LARGE


def test_decoder_stays_dead_after_a_rejection(codec: RpcCodec) -> None:
    decoder = codec.decoder()
    with pytest.raises(RpcProtocolError):
        decoder.feed(b"\x7f" * 32)
    with pytest.raises(RpcProtocolError):
        decoder.feed(codec.heartbeat(1))


def test_frames_before_a_rejection_travel_on_the_error(codec: RpcCodec) -> None:
    good = codec.encode_request(1, "svc.A", "m") + codec.encode_request(2, "svc.A", "m")
    frames, reason = run(codec.decoder(), [good + b"\x7f" * 40])
    assert reason is not None
    assert [f.request_id for f in frames] == [1, 2]


_names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=":"), min_size=1, max_size=40
)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(CODECS)),
    request_id=st.integers(0, 2**32 - 1),
    service=_names,
    method=_names,
    version=_names | st.just(""),
    body=st.binary(max_size=200),
    oneway=st.booleans(),
    cuts=st.lists(st.integers(0, 1000), max_size=6),
)
def test_property_round_trip_and_split_invariance(
    name: str,
    request_id: int,
    service: str,
    method: str,
    version: str,
    body: bytes,
    oneway: bool,
    cuts: list[int],
) -> None:
    codec = CODECS[name]()
    data = codec.encode_request(request_id, service, method, version, body, oneway=oneway)
    frames, reason = run(codec.decoder(), cut(data + data, cuts))
    assert reason is None and len(frames) == 2
    frame = frames[0]
    assert frame.raw == data and frame.request_id == request_id
    assert (frame.headers[rpc.SERVICE], frame.headers[rpc.RPC_METHOD]) == (service, method)
    assert frame.headers[rpc.RPC_VERSION] == version
    assert frame.kind is (FrameKind.ONEWAY if oneway else FrameKind.REQUEST)
    rid = codec.max_request_id - request_id
    assert codec.with_request_id(frame, rid)[-len(body) or len(data) :] == data[
        -len(body) or len(data) :
    ] or (name == "bolt-v2")


@settings(max_examples=80, deadline=None)
@given(name=st.sampled_from(sorted(CODECS)), junk=st.binary(max_size=120), cuts=st.lists(st.integers(0, 200)))
def test_property_arbitrary_bytes_never_crash_and_split_invariant(
    name: str, junk: bytes, cuts: list[int]
) -> None:
    codec = CODECS[name]()
    data = codec.heartbeat(1) + junk
    whole = run(codec.decoder(), [data])
    split = run(codec.decoder(), cut(data, cuts))
    assert (comparable(split[0]), split[1]) == (comparable(whole[0]), whole[1])
    assert whole[0] and whole[0][0].kind is FrameKind.HEARTBEAT


def test_sniffing_helpers() -> None:
    for name, make in CODECS.items():
        frame = make().heartbeat(1)
        own, other = (bolt, dubbo) if name.startswith("bolt") else (dubbo, bolt)
        assert own.matches(frame[:3]) is True and other.matches(frame[:3]) is False
        assert own.matches(frame[:1]) is None
        assert own.matches(b"") is None
    assert bolt.matches(b"GET /") is False and dubbo.matches(b"GET /") is False
    assert bolt.matches(b"\x01\x07") is False and bolt.matches(b"\x02\x09") is False
    assert dubbo.matches(b"\xda\x00") is False

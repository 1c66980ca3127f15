"""gRPC wire helpers: framing round trip and split invariance, grpc-timeout, grpc-message, status mapping."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexus.codec.http2 import (
    GrpcMessage,
    GrpcMessageDecoder,
    GrpcStatus,
    decode_grpc_message_text,
    encode_grpc_message,
    encode_grpc_message_text,
    format_grpc_timeout,
    grpc_route_headers,
    grpc_status_for_reason,
    is_grpc_content_type,
    mesh_error_response,
    parse_grpc_timeout,
    split_grpc_path,
    trailers_only_response,
)
from plexus.codec.http2.grpc_wire import _ceil_nanos
from plexus.core import reasons
from plexus.core.errors import ProtocolError

messages = st.lists(st.tuples(st.binary(max_size=300), st.booleans()), max_size=8)


@given(messages, st.data())
@settings(max_examples=200, deadline=None)
def test_framing_round_trip_any_split(msgs: list[tuple[bytes, bool]], data: st.DataObject) -> None:
    wire = b"".join(encode_grpc_message(m, c) for m, c in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = GrpcMessageDecoder()
    got: list[GrpcMessage] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        got += decoder.feed(wire[prev:cut])
        prev = cut
    decoder.end()
    assert got == [GrpcMessage(m, c) for m, c in msgs]


def test_every_single_split_of_two_messages() -> None:
    wire = (
        encode_grpc_message(b"hello") + encode_grpc_message(b"", compressed=True) + encode_grpc_message(b"x")
    )
    for cut in range(len(wire) + 1):
        decoder = GrpcMessageDecoder()
        got = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
        assert got == [GrpcMessage(b"hello"), GrpcMessage(b"", True), GrpcMessage(b"x")], cut


def test_layout() -> None:
    assert encode_grpc_message(b"ab") == b"\x00\x00\x00\x00\x02ab"
    assert encode_grpc_message(b"", True) == b"\x01\x00\x00\x00\x00"


def test_oversized_message_rejected_from_its_prefix() -> None:
    decoder = GrpcMessageDecoder(max_message_bytes=1024)
    with pytest.raises(ProtocolError) as err:
        decoder.feed(b"\x00\xff\xff\xff\xff")  # 4 GiB announced, nothing buffered
    assert err.value.reason == "grpc_message_too_large"
    ok = GrpcMessageDecoder(max_message_bytes=1024)
    assert ok.feed(encode_grpc_message(b"a" * 1024)) == [GrpcMessage(b"a" * 1024)]


def test_bad_flag_and_truncation() -> None:
    with pytest.raises(ProtocolError) as err:
        GrpcMessageDecoder().feed(b"\x02\x00\x00\x00\x00")
    assert err.value.reason == "grpc_bad_compressed_flag"
    decoder = GrpcMessageDecoder()
    assert decoder.feed(b"\x00\x00\x00\x00\x05abc") == [] and decoder.pending == 8
    with pytest.raises(ProtocolError) as err:
        decoder.end()
    assert err.value.reason == "grpc_truncated_message"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("100m", 0.1),
        ("5S", 5.0),
        ("1H", 3600.0),
        ("2M", 120.0),
        ("250u", 250e-6),
        ("7n", 7e-9),
        ("0S", 0.0),
        ("99999999S", 99_999_999.0),
        (b"30S", 30.0),
    ],
)
def test_grpc_timeout_valid(value: str | bytes, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "100",
        "m",
        "123456789S",
        "1.5S",
        "-1S",
        "+1S",
        " 1S",
        "1S ",
        "1s",
        "1h",
        "1x",
        "1SS",
        "\u0661S",
        "0x1S",
    ],
)
def test_grpc_timeout_invalid(value: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_grpc_timeout(value)
    assert err.value.reason == "grpc_bad_timeout"


@given(st.floats(min_value=0, max_value=1e8, allow_nan=False))
def test_format_timeout_never_shortens(seconds: float) -> None:
    text = format_grpc_timeout(seconds)
    assert parse_grpc_timeout(text) >= seconds * (1 - 1e-9)
    assert len(text) <= 9


@given(st.floats(min_value=0, max_value=1e30, allow_nan=False, allow_infinity=False))
def test_timeout_nanos_are_the_decimal_forms_exactly_rounded_up(seconds: float) -> None:
    assert _ceil_nanos(seconds) == math.ceil(Fraction(repr(seconds)) * 1_000_000_000)


def test_format_timeout_examples() -> None:
    assert format_grpc_timeout(0.1) == "100000u"
    assert format_grpc_timeout(0) == "0n"
    assert format_grpc_timeout(1e-89) == "1n"
    assert format_grpc_timeout(5) == "5000000u"


@given(st.text(max_size=200))
def test_grpc_message_percent_round_trip(text: str) -> None:
    encoded = encode_grpc_message_text(text)
    assert all(0x20 <= b <= 0x7E for b in encoded)
    # Lone surrogates cannot be UTF-8 encoded at all; hypothesis text() avoids them by default.
    assert decode_grpc_message_text(encoded) == text


def test_grpc_message_known_values() -> None:
    assert encode_grpc_message_text("100% ok\n") == b"100%25 ok%0A"
    assert encode_grpc_message_text("é") == b"%C3%A9"
    assert decode_grpc_message_text(b"bad %zz and %4") == "bad %zz and %4"  # lenient on malformed escapes


def test_status_mapping() -> None:
    assert grpc_status_for_reason(reasons.NO_HEALTHY_UPSTREAM) == GrpcStatus.UNAVAILABLE
    assert int(GrpcStatus.UNAVAILABLE) == 14
    assert grpc_status_for_reason(reasons.UPSTREAM_CONNECT_FAILED) == GrpcStatus.UNAVAILABLE
    assert grpc_status_for_reason(reasons.UPSTREAM_REQUEST_TIMEOUT) == GrpcStatus.DEADLINE_EXCEEDED
    assert int(GrpcStatus.DEADLINE_EXCEEDED) == 4
    assert grpc_status_for_reason("rate_limited") == GrpcStatus.RESOURCE_EXHAUSTED
    assert int(GrpcStatus.RESOURCE_EXHAUSTED) == 8
    assert grpc_status_for_reason("denied") == GrpcStatus.PERMISSION_DENIED
    assert int(GrpcStatus.PERMISSION_DENIED) == 7
    assert grpc_status_for_reason("something_new") == GrpcStatus.UNKNOWN


def test_trailers_only_error() -> None:
    assert mesh_error_response(reasons.NO_HEALTHY_UPSTREAM, "orders") == [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"14"),
        (b"grpc-message", b"no healthy upstream for orders"),
    ]
    assert (b"grpc-message", b"50%25 off") in trailers_only_response(GrpcStatus.INTERNAL, "50% off")
    assert (b"grpc-message", b"") not in trailers_only_response(GrpcStatus.OK)


def test_path_to_service_and_method() -> None:
    assert split_grpc_path(b"/plexus.registry.v1.Registry/Watch") == ("plexus.registry.v1.Registry", "Watch")
    assert grpc_route_headers("/pkg.S/M") == [(b":service", b"pkg.S"), (b":rpc-method", b"M")]
    for bad in ["", "/", "//M", "/S/", "S/M", "/S/M/x", "/S"]:
        with pytest.raises(ProtocolError) as err:
            split_grpc_path(bad)
        assert err.value.reason == "grpc_bad_path"


def test_content_type() -> None:
    assert is_grpc_content_type(b"application/grpc")
    assert is_grpc_content_type(b"application/grpc+proto")
    assert is_grpc_content_type(b"Application/GRPC; charset=utf-8")
    assert not is_grpc_content_type(b"application/grpc-web")
    assert not is_grpc_content_type(b"application/json")

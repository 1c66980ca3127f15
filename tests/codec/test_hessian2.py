"""Hessian2 string reader/writer: the spec's own examples, surrogates, caps, properties, a differential test.

The differential test uses python-hessian (``pyhessian``) when it is installed, within the part of the
format it reads correctly (see ``_reference_reads``).
"""

from __future__ import annotations

import io
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexus.codec import hessian2, rpc
from plexus.codec.rpc import RpcProtocolError


def _read(data: bytes, **kw: object) -> str | None:
    value, end = hessian2.read_string(data, 0, len(data), **kw)  # type: ignore[arg-type]
    assert end == len(data)
    return value


def _reason(data: bytes, **kw: object) -> str:
    with pytest.raises(RpcProtocolError) as info:
        hessian2.read_string(data, 0, len(data), **kw)  # type: ignore[arg-type]
    return info.value.reason


@pytest.mark.parametrize(
    ("data", "value"),
    [
        # Hessian 2.0 serialization spec, §4.12.1 string examples.
        (b"\x00", ""),
        (b"\x05hello", "hello"),
        (b"\x01\xc3\x83", "\u00c3"),
        (b"S\x00\x05hello", "hello"),
        (b"R\x00\x07hello, \x05world", "hello, world"),
        # The medium compact form: 0x30-0x33 b0, (tag - 0x30) * 256 + b0 characters.
        (b"\x30\x20" + b"x" * 32, "x" * 32),
        (b"\x33\xff" + b"y" * 1023, "y" * 1023),
        # Lengths count UTF-16 units: 3-byte CJK is one unit, a supplementary character two.
        (b"\x02\xe4\xb8\xad\xe6\x96\x87", "中文"),
        (b"\x02\xed\xa0\xbd\xed\xb8\x80", "😀"),  # Java's CESU-8 pair
        (b"\x02\xf0\x9f\x98\x80", "😀"),  # 4-byte UTF-8 from non-Java writers
        (b"R\x00\x01\xed\xa0\xbdS\x00\x01\xed\xb8\x80", "😀"),  # a pair split across chunks
        (b"R\x00\x00R\x00\x00\x00", ""),  # empty chunks are legal, within the chunk cap
    ],
)
def test_spec_forms(data: bytes, value: str) -> None:
    assert _read(data) == value


def test_null_only_where_allowed() -> None:
    assert _read(b"N", allow_null=True) is None
    assert _reason(b"N") == rpc.HESSIAN_NOT_STRING
    assert _reason(b"R\x00\x01aN", allow_null=True) == rpc.HESSIAN_NOT_STRING


def test_reads_inside_a_larger_buffer() -> None:
    data = b"junk\x03abc\x02de"
    value, end = hessian2.read_string(data, 4, len(data))
    assert (value, end) == ("abc", 8)
    assert hessian2.read_string(data, end, len(data)) == ("de", len(data))
    assert _reason_at(data, 4, 6) == rpc.HESSIAN_TRUNCATED  # ``end`` bounds the read, not len(buf)


def _reason_at(data: bytes, pos: int, end: int) -> str:
    with pytest.raises(RpcProtocolError) as info:
        hessian2.read_string(data, pos, end)
    return info.value.reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", rpc.HESSIAN_TRUNCATED),
        (b"\x05hell", rpc.HESSIAN_TRUNCATED),
        (b"\x30", rpc.HESSIAN_TRUNCATED),
        (b"S\x00", rpc.HESSIAN_TRUNCATED),
        (b"R\x00\x01a", rpc.HESSIAN_TRUNCATED),  # a non-final chunk and nothing after it
        (b"\x01\xe4\xb8", rpc.HESSIAN_TRUNCATED),
        (b"\x01\xc3\x28", rpc.HESSIAN_INVALID_UTF8),
        (b"\x01\xc0\x80", rpc.HESSIAN_INVALID_UTF8),  # overlong (Java's modified UTF-8 NUL)
        (b"\x01\xe0\x80\x80", rpc.HESSIAN_INVALID_UTF8),  # overlong 3-byte
        (b"\x02\xf4\x90\x80\x80", rpc.HESSIAN_INVALID_UTF8),  # beyond U+10FFFF
        (b"\x01\xbf", rpc.HESSIAN_INVALID_UTF8),
        (b"\x01\xff", rpc.HESSIAN_INVALID_UTF8),
        (b"\x01\xed\xa0\xbd", rpc.HESSIAN_INVALID_UTF8),  # high surrogate alone
        (b"\x02\xed\xb8\x80\xed\xa0\xbd", rpc.HESSIAN_INVALID_UTF8),  # pair in the wrong order
        (b"\x91", rpc.HESSIAN_NOT_STRING),
        (b"\x20", rpc.HESSIAN_NOT_STRING),  # binary, not a string
        (b"s\x00\x01a", rpc.HESSIAN_NOT_STRING),  # Hessian 1's chunk tag is not Hessian 2
    ],
)
def test_rejections(data: bytes, reason: str) -> None:
    assert _reason(data) == reason


def test_declared_length_is_capped_before_reading() -> None:
    tracemalloc.start()
    try:
        assert _reason(b"S\xff\xff" + b"a" * 10) == rpc.HESSIAN_STRING_TOO_LONG
        assert _reason(b"\x33\xff" + b"a" * 10, max_units=1000) == rpc.HESSIAN_STRING_TOO_LONG
        assert _reason(b"R\xff\xff" * 3) == rpc.HESSIAN_STRING_TOO_LONG
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_chunk_depth_is_capped() -> None:
    assert _reason(b"R\x00\x00" * 100_000 + b"\x00") == rpc.HESSIAN_TOO_DEEP
    assert _read(b"R\x00\x01a" * 7 + b"\x01b", max_chunks=8) == "a" * 7 + "b"
    assert _reason(b"R\x00\x01a" * 8 + b"\x01b", max_chunks=8) == rpc.HESSIAN_TOO_DEEP


def test_units_cap_counts_supplementary_twice() -> None:
    assert _read(b"\x02\xf0\x9f\x98\x80", max_units=2) == "😀"
    assert _reason(b"\x02\xf0\x9f\x98\x80", max_units=1) == rpc.HESSIAN_STRING_TOO_LONG


def test_writer_forms() -> None:
    assert hessian2.encode_string(None) == b"N"
    assert hessian2.encode_string("") == b"\x00"
    assert hessian2.encode_string("hello") == b"\x05hello"
    assert hessian2.encode_string("x" * 32) == b"\x30\x20" + b"x" * 32
    assert hessian2.encode_string("x" * 1024) == b"S\x04\x00" + b"x" * 1024
    # Like Java's printString: a supplementary character becomes its two surrogates, 3 bytes each.
    assert hessian2.encode_string("😀") == b"\x02\xed\xa0\xbd\xed\xb8\x80"
    long = hessian2.encode_string("z" * 70_000)
    assert long.startswith(b"R\x80\x00") and long[3 + 0x8000 : 3 + 0x8000 + 3] == b"R\x80\x00"
    assert hessian2.utf16_units("a😀中") == 4
    with pytest.raises(ValueError):
        hessian2.encode_string("\ud800")


_strings = st.text(st.characters(codec="utf-8"), max_size=300)


@settings(max_examples=300, deadline=None)
@given(value=_strings)
def test_property_round_trip(value: str) -> None:
    data = hessian2.encode_string(value)
    assert _read(data, max_units=10_000) == value


@settings(max_examples=60, deadline=None)
@given(
    pad=st.integers(0x7FF0, 0x8010),
    tail=st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
)
def test_property_round_trip_chunked(pad: int, tail: str) -> None:
    value = "a" * pad + tail  # the tail lands on the 0x8000-unit chunk boundary, surrogates included
    data = hessian2.encode_string(value)
    assert _read(data, max_units=0x20000) == value


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40))
def test_property_arbitrary_bytes_are_read_or_refused(data: bytes) -> None:
    try:
        value, end = hessian2.read_string(data, 0, len(data), allow_null=True)
    except RpcProtocolError as exc:
        assert exc.reason.startswith("hessian_")
        return
    assert end <= len(data)
    if value is not None:
        # What was accepted is a real string: it re-encodes and reads back the same.
        assert _read(hessian2.encode_string(value)) == value


# --- Differential: python-hessian ---------------------------------------------------------------------------


def _reference_parser(data: bytes) -> object:
    parser_module = pytest.importorskip("pyhessian.parser")
    parser = parser_module.Parser()
    parser.version = 2
    parser._stream = io.BytesIO(data)
    return parser.read_object()


def _reference_reads(value: str, data: bytes) -> bool:
    """Where python-hessian 1.2 reads Hessian2 strings right: compact forms always; ``S``/``R`` chains only
    without characters 0x7a-0x7f (its chunk reader takes 0x79 for the ASCII limit) and without 4-byte
    UTF-8 (it counts those as one unit)."""
    return data[0] <= 0x1F or 0x30 <= data[0] <= 0x33 or not any(0x7A <= ord(c) <= 0x7F for c in value)


@settings(max_examples=200, deadline=None)
@given(value=_strings)
def test_differential_reader_against_python_hessian(value: str) -> None:
    data = hessian2.encode_string(value)
    ours = _read(data, max_units=10_000)
    if _reference_reads(value, data):
        assert _reference_parser(data) == ours == value


@settings(max_examples=200, deadline=None)
@given(value=st.text(st.characters(codec="utf-8"), max_size=500))
def test_differential_python_hessian_writer_read_by_us(value: str) -> None:
    encoder_module = pytest.importorskip("pyhessian.encoder")
    data = encoder_module.Encoder().encode(value)  # 'S' b1 b0 + CESU-8, as Java writes
    assert data[:1] == b"S"
    assert _read(data, max_units=10_000) == value

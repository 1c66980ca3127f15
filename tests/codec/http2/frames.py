"""Raw HTTP/2 frames for attack tests, built with hyperframe and hpack (not with our codec)."""

from __future__ import annotations

import struct

from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from plexus.codec.http2 import CONNECTION_PREFACE

from .helpers import request


def preface() -> bytes:
    return CONNECTION_PREFACE + SettingsFrame(0).serialize()


def headers(stream_id: int, block: bytes, end_headers: bool = True, end_stream: bool = True) -> bytes:
    f = HeadersFrame(stream_id)
    f.data = block
    if end_headers:
        f.flags.add("END_HEADERS")
    if end_stream:
        f.flags.add("END_STREAM")
    return f.serialize()


def continuation(stream_id: int, block: bytes, end_headers: bool = False) -> bytes:
    f = ContinuationFrame(stream_id)
    f.data = block
    if end_headers:
        f.flags.add("END_HEADERS")
    return f.serialize()


def rst(stream_id: int, code: int = 8) -> bytes:
    f = RstStreamFrame(stream_id)
    f.error_code = code
    return f.serialize()


def ping(n: int) -> bytes:
    return PingFrame(0, opaque_data=struct.pack(">Q", n)).serialize()


def settings() -> bytes:
    return SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65_535}).serialize()


def data(stream_id: int, payload: bytes) -> bytes:
    return DataFrame(stream_id, payload).serialize()


def raw_frame_header(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    """RFC 9113 §4.1: 24-bit length, type, flags, R + 31-bit stream id."""
    return struct.pack(">I", length)[1:] + bytes((ftype, flags)) + struct.pack(">I", stream_id)


def request_block(encoder: Encoder) -> bytes:
    return encoder.encode(request(b"/x"))


def parse(wire: bytes) -> list[Frame]:
    """The frames in ``wire`` (server output never carries a preface)."""
    out: list[Frame] = []
    pos = 0
    while pos + 9 <= len(wire):
        frame, length = Frame.parse_frame_header(memoryview(wire[pos : pos + 9]))
        frame.parse_body(memoryview(wire[pos + 9 : pos + 9 + length]))
        out.append(frame)
        pos += 9 + length
    return out


def goaway_code(wire: bytes) -> int | None:
    codes = [f.error_code for f in parse(wire) if isinstance(f, GoAwayFrame)]
    return codes[-1] if codes else None

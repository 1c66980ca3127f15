"""Differential checks against real grpcio peers on 127.0.0.1: our client codec calls a grpcio server, and a
grpcio client calls our server codec (echo, trailers-only mesh error, grpc-timeout)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from plexus.codec.http2 import (
    DataReceived,
    Event,
    GrpcMessageDecoder,
    Http2ClientCodec,
    Http2ServerCodec,
    RequestHeadersReceived,
    ResponseHeadersReceived,
    StreamEnded,
    TrailersReceived,
    decode_grpc_message_text,
    encode_grpc_message,
    format_grpc_timeout,
    grpc_trailers,
    mesh_error_response,
    parse_grpc_timeout,
    split_grpc_path,
)
from plexus.codec.http2.grpc_wire import GrpcStatus
from plexus.core import reasons

IO_TIMEOUT = 5.0
GRPC_TIMEOUT_ROUNDING = 0.1  # seconds grpcio's grpc-timeout may exceed the caller's timeout (it rounds up)


def _say(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"echo:" + request


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.UNAVAILABLE, "no healthy upstream for orders — 100%")
    raise AssertionError("abort returns never")


def _slow(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(2.0)
    return b"late"


@pytest.fixture
def grpcio_server() -> Iterator[int]:
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(_say),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "Slow": grpc.unary_unary_rpc_method_handler(_slow),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(grace=None)


def _call(
    port: int, method: str, body: bytes, timeout: str | None = None
) -> tuple[list[bytes], dict[bytes, bytes]]:
    """One unary call with our client codec over a real socket: (response messages, trailers)."""
    codec = Http2ClientCodec()
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", f"127.0.0.1:{port}".encode()),
        (b":path", f"/test.Echo/{method}".encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    if timeout:
        headers.append((b"grpc-timeout", timeout.encode()))
    sid = codec.send_request(headers)
    codec.send_data(sid, encode_grpc_message(body), end_stream=True)
    decoder = GrpcMessageDecoder()
    messages: list[bytes] = []
    trailers: dict[bytes, bytes] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        done = False
        while not done:
            sock.sendall(codec.data_to_send())
            chunk = sock.recv(65536)
            assert chunk, "grpcio closed the connection"
            for e in codec.receive_data(chunk):
                if isinstance(e, ResponseHeadersReceived) and e.end_stream:
                    trailers = dict(e.headers)  # trailers-only
                elif isinstance(e, DataReceived):
                    messages += [m.data for m in decoder.feed(e.data)]
                    codec.acknowledge(e.stream_id, e.flow_controlled_length)
                elif isinstance(e, TrailersReceived):
                    trailers = dict(e.headers)
                elif isinstance(e, StreamEnded) and e.stream_id == sid:
                    done = True
    return messages, trailers


def test_our_client_against_grpcio_server(grpcio_server: int) -> None:
    messages, trailers = _call(grpcio_server, "Say", b"ping")
    assert messages == [b"echo:ping"] and trailers[b"grpc-status"] == b"0"


def test_grpcio_error_message_is_percent_encoded(grpcio_server: int) -> None:
    messages, trailers = _call(grpcio_server, "Fail", b"x")
    assert messages == [] and int(trailers[b"grpc-status"]) == GrpcStatus.UNAVAILABLE
    assert decode_grpc_message_text(trailers[b"grpc-message"]) == "no healthy upstream for orders — 100%"


def test_grpcio_server_honours_our_grpc_timeout(grpcio_server: int) -> None:
    _, trailers = _call(grpcio_server, "Slow", b"x", timeout=format_grpc_timeout(0.2))
    assert int(trailers[b"grpc-status"]) == GrpcStatus.DEADLINE_EXCEEDED


class _OurServer:
    """Our server codec on a plain socket in a thread: Say answers pong, Down a trailers-only mesh error."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(IO_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.timeouts: list[float] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(IO_TIMEOUT)
        codec = Http2ServerCodec()
        paths: dict[int, bytes] = {}
        bodies: dict[int, GrpcMessageDecoder] = {}
        with conn:
            while not codec.closed:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                events: list[Event] = codec.receive_data(chunk)
                for e in events:
                    if isinstance(e, RequestHeadersReceived):
                        hdrs = dict(e.headers)
                        paths[e.stream_id] = hdrs[b":path"]
                        bodies[e.stream_id] = GrpcMessageDecoder()
                        if b"grpc-timeout" in hdrs:
                            self.timeouts.append(parse_grpc_timeout(hdrs[b"grpc-timeout"]))
                    elif isinstance(e, DataReceived):
                        bodies[e.stream_id].feed(e.data)
                        codec.acknowledge(e.stream_id, e.flow_controlled_length)
                    elif isinstance(e, StreamEnded):
                        self._answer(codec, e.stream_id, paths[e.stream_id])
                conn.sendall(codec.data_to_send())

    @staticmethod
    def _answer(codec: Http2ServerCodec, sid: int, path: bytes) -> None:
        _, method = split_grpc_path(path)
        if method == "Down":
            codec.send_headers(
                sid, mesh_error_response(reasons.NO_HEALTHY_UPSTREAM, "orders"), end_stream=True
            )
            return
        codec.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        codec.send_data(sid, encode_grpc_message(b"pong"))
        codec.send_trailers(sid, grpc_trailers(GrpcStatus.OK))

    def close(self) -> None:
        self.listener.close()
        self.thread.join(IO_TIMEOUT)


def test_grpcio_client_against_our_server() -> None:
    server = _OurServer()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            say = channel.unary_unary("/test.Echo/Say")
            assert say(b"ping", timeout=IO_TIMEOUT) == b"pong"
            down = channel.unary_unary("/test.Echo/Down")
            with pytest.raises(grpc.RpcError) as err:
                down(b"x", timeout=3.0)
            call = err.value
            assert isinstance(call, grpc.Call)
            assert call.code() == grpc.StatusCode.UNAVAILABLE
            assert call.details() == "no healthy upstream for orders"
        # grpcio rounds what is left of a deadline up when it writes grpc-timeout (CI read 5.01 s for 5 s)
        assert server.timeouts and all(0 < t <= IO_TIMEOUT + GRPC_TIMEOUT_ROUNDING for t in server.timeouts)
    finally:
        server.close()

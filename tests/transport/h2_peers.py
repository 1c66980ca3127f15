"""Peers for the HTTP/2 proxy tests: an in-process grpcio server with generic (bytes) handlers, and a
consumer + provider data plane pair on one uvloop thread around it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events

from plexus.core.address import HostPort
from plexus.discovery.model import Instance
from plexus.transport import DataPlane, DataPlaneSettings
from transport.upstreams import LoopThread

SERVICE = "plexus.test.Echo"
ENGINE = ["h2"]  # the HTTP/2 engine H2Mesh data planes use (tests switch it per run)
OPTIONS: Sequence[tuple[str, Any]] = (("grpc.enable_http_proxy", 0),)


def path(method: str) -> str:
    return f"/{SERVICE}/{method}"


class GrpcApp:
    """``Echo`` (answers the request, echoes metadata as trailers ``echo-<key>``), ``Stream`` (request
    ``b"N,SIZE"`` → N messages), ``Fail`` (aborts NOT_FOUND with a message), ``Slow`` (sleeps the request's
    seconds unless cancelled, counting cancels), ``Bidi`` (echoes each message), ``First`` (client stream:
    answers the first message, reads no more). ``calls`` counts calls by method."""

    def __init__(self, name: str = "app", max_streams: int | None = None) -> None:
        self.name = name
        self.calls: dict[str, int] = {}
        self.cancelled = 0
        self.time_left: list[float | None] = []  # the deadline each Echo call arrived with
        self.lock = threading.Lock()
        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "First": grpc.stream_unary_rpc_method_handler(self.first),
        }
        options = list(OPTIONS)
        if max_streams is not None:
            options.append(("grpc.max_concurrent_streams", max_streams))
        self.server = grpc.server(ThreadPoolExecutor(max_workers=32), options=options)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _count(self, method: str, context: grpc.ServicerContext) -> None:
        context.send_initial_metadata((("x-instance", self.name),))
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._count("Echo", context)
        self.time_left.append(context.time_remaining())
        trailers = [(f"echo-{k}", v) for k, v in context.invocation_metadata() if k.startswith("x-")]
        context.set_trailing_metadata(tuple(trailers))
        return request

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._count("Stream", context)
        count, size = (int(x) for x in request.split(b","))
        for i in range(count):
            yield (b"%08d" % i).ljust(size, b".")

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._count("Fail", context)
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())
        raise AssertionError("unreachable")

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._count("Slow", context)
        end = time.monotonic() + float(request)
        while time.monotonic() < end:
            if not context.is_active():
                with self.lock:
                    self.cancelled += 1
                return b""
            time.sleep(0.01)
        return b"slept"

    def first(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """Answers with the first request message without reading the rest (the call ends early)."""
        self._count("First", context)
        return next(requests)

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._count("Bidi", context)
        for request in requests:
            yield b"echo:" + request

    def stop(self) -> None:
        self.server.stop(0)


class H2Mesh:
    """A consumer data plane (per-service egress ports, shared egress) and a provider data plane (shared
    ingress) on one loop; ``provide`` maps a local app behind the provider and points the consumer at it."""

    def __init__(self, lt: LoopThread, **settings: Any) -> None:
        self.lt = lt
        base: dict[str, Any] = {"connect_timeout": 0.5, "request_timeout": 5.0, "h2_engine": ENGINE[0]}
        base.update(settings)
        self.consumer = DataPlane(DataPlaneSettings(hop_name="consumer", **base))
        self.provider = DataPlane(DataPlaneSettings(hop_name="provider", **base))
        self.egress: HostPort = lt.run(self.consumer.listen_shared_egress("127.0.0.1", 0))
        self.ingress: HostPort = lt.run(self.provider.listen_ingress("127.0.0.1", 0))
        self.apps: list[GrpcApp] = []

    def provide(self, service: str, app_port: int, protocol: str = "grpc") -> None:
        self.lt.call(self.provider.set_local_service, service, protocol, HostPort("127.0.0.1", app_port))
        self.set_instances(service, [str(self.ingress)], protocol)

    def set_instances(self, service: str, addresses: list[str], protocol: str = "grpc") -> None:
        instances = [Instance(service=service, address=a, protocol=protocol) for a in addresses]
        self.lt.call(self.consumer.update_service, service, instances)

    def service_port(self, service: str) -> HostPort:
        address: HostPort = self.lt.run(self.consumer.listen_service_egress(service, "127.0.0.1", 0))
        return address

    def app(self, name: str = "app", max_streams: int | None = None) -> GrpcApp:
        app = GrpcApp(name, max_streams)
        self.apps.append(app)
        return app

    def metrics(self, plane: DataPlane) -> str:
        text: str = self.lt.call(plane.metrics_text)
        return text

    def close(self) -> None:
        self.lt.run(self.consumer.close())
        self.lt.run(self.provider.close())
        for app in self.apps:
            app.stop()


def channel(address: HostPort, **options: Any) -> grpc.Channel:
    opts = list(OPTIONS) + list(options.items())
    return grpc.insecure_channel(f"{address.host}:{address.port}", options=opts)


class RawH2:
    """A blocking HTTP/2 client over h2 for plain (non-gRPC) requests: ``request`` returns status, headers,
    body, and whether the stream was reset (with its code)."""

    def __init__(self, address: HostPort) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())

    def request(
        self, headers: list[tuple[str, str]], body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes, int | None]:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        status, got, data, reset = 0, {}, b"", None
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the proxy")
            for ev in self.conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    got = {k.decode(): v.decode() for k, v in ev.headers}
                    status = int(got[":status"])
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    data += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    reset = int(ev.error_code)
                    return status, got, data, reset
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    self.sock.sendall(self.conn.data_to_send())
                    return status, got, data, reset
            self.sock.sendall(self.conn.data_to_send())

    def close(self) -> None:
        self.sock.close()


class H2EchoServer:
    """A plain HTTP/2 (h2c) app on the test loop: answers every request 200 with body
    ``METHOD PATH\\n`` + the request body, echoing ``x-*`` request headers as ``echo-*`` response headers."""

    def __init__(self) -> None:
        self.server: Any = None
        self.port = 0
        self.requests = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _H2EchoProtocol(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()


class _H2EchoProtocol:
    def __init__(self, owner: H2EchoServer) -> None:
        self.owner = owner
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.transport: Any = None
        self.reqs: dict[int, tuple[list[tuple[bytes, bytes]], bytearray]] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.reqs[ev.stream_id] = (list(ev.headers), bytearray())
            elif isinstance(ev, h2.events.DataReceived):
                self.reqs[ev.stream_id][1].extend(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                headers, body = self.reqs.pop(ev.stream_id)
                self.owner.requests += 1
                h = dict(headers)
                out = h[b":method"] + b" " + h[b":path"] + b"\n" + bytes(body)
                resp = [(b":status", b"200"), (b"content-length", str(len(out)).encode())]
                resp += [(b"echo-" + k, v) for k, v in headers if k.startswith(b"x-")]
                self.conn.send_headers(ev.stream_id, resp)
                self.conn.send_data(ev.stream_id, out, end_stream=True)
        self.transport.write(self.conn.data_to_send())

    def eof_received(self) -> None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        return None

    def pause_writing(self) -> None:
        return None

    def resume_writing(self) -> None:
        return None

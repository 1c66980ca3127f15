"""Test peers for the data plane: an h11-based HTTP upstream that records what it got, a raw recorder,
a TCP echo server, and a loop running in a thread so tests can use plain blocking sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import h11
import uvloop

T = TypeVar("T")


class LoopThread:
    """A uvloop event loop in a daemon thread; ``run(coro)`` waits for a coroutine's result."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def call(self, fn: Any, *args: Any) -> Any:
        async def _call() -> Any:
            return fn(*args)

        return self.run(_call())

    def stop(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_rest(), timeout=5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpUpstream:
    """An HTTP/1.1 server built on h11 (an independent implementation) with a few behaviours by path.

    /echo: 200 with the request body; /slow/<ms>: answers after ms; /chunked: a chunked response;
    /retriable: 503 with x-plexus-error local_app_unavailable; anything else: 200 with the server's name.
    """

    name: str
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    closed: int = 0  # connections that ended (peer closed or reset)
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    body = b""
                    while True:
                        ev = conn.next_event()
                        if ev is h11.NEED_DATA:
                            conn.receive_data(await reader.read(65536))
                            continue
                        if isinstance(ev, h11.Data):
                            body += ev.data
                        elif isinstance(ev, h11.EndOfMessage):
                            break
                        elif isinstance(ev, h11.ConnectionClosed):
                            return
                    await self._answer(conn, writer, event, body)
                    if conn.our_state is h11.MUST_CLOSE:
                        break
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (h11.RemoteProtocolError, ConnectionError):
            return
        finally:
            self.closed += 1
            writer.close()

    async def _answer(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, req: h11.Request, body: bytes
    ) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in req.headers}
        target = req.target.decode()
        self.received.append(Received(req.method.decode(), target, headers, body))
        out_headers = [("x-upstream", self.name)]
        status = 200
        chunks: list[bytes]
        if target.startswith("/slow/"):
            await asyncio.sleep(int(target.split("/")[2]) / 1000)
            chunks = [self.name.encode()]
        elif target == "/echo":
            chunks = [body]
        elif target == "/chunked":
            chunks = [b"part1-", b"part2-", b"part3"]
        elif target == "/retriable":
            status = 503
            out_headers.append(("x-plexus-error", "local_app_unavailable; service=x"))
            chunks = [b"down"]
        else:
            chunks = [self.name.encode()]
        if target != "/chunked":
            out_headers.append(("content-length", str(sum(len(c) for c in chunks))))
        writer.write(conn.send(h11.Response(status_code=status, headers=out_headers)) or b"")
        if req.method != b"HEAD":
            for chunk in chunks:
                writer.write(conn.send(h11.Data(data=chunk)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()


class RawRecorder(asyncio.Protocol):
    """Records every byte that reaches it; answers nothing unless given a canned reply."""

    def __init__(self, log: list[bytearray], reply: bytes | None = None) -> None:
        self.log = log
        self.buf = bytearray()
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.log.append(self.buf)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.reply is not None and b"\r\n\r\n" in self.buf:
            self.transport.write(self.reply)  # type: ignore[attr-defined]
            self.reply = None


async def start_raw(log: list[bytearray], reply: bytes | None = None) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawRecorder(log, reply), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        self.transport.write_eof()  # type: ignore[attr-defined]
        return True


async def start_echo() -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def closed_port() -> int:
    """A port with nothing listening (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Reader:
    """Reads responses off one blocking socket with h11, keeping bytes that belong to the next response."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        sock.settimeout(timeout)
        self.conn = h11.Connection(h11.CLIENT)

    def read(self, method: str = "GET") -> tuple[int, dict[str, str], bytes, bool]:
        """(status, headers, body, the connection closes after it)."""
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(self.sock.recv(65536))
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        closed = conn.their_state is h11.MUST_CLOSE or headers.get("connection") == "close"
        return status, headers, body, closed


_readers: dict[int, Reader] = {}


def read_response(
    sock: socket.socket, timeout: float = 5.0, method: str = "GET"
) -> tuple[int, dict[str, str], bytes, bool]:
    """One response from ``sock``; bytes past it are kept for the next call on the same socket."""
    reader = _readers.get(id(sock))
    if reader is None or reader.sock is not sock:
        reader = _readers[id(sock)] = Reader(sock, timeout)
    return reader.read(method)


def recv_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data

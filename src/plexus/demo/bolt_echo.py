"""A small SOFA Bolt provider and consumer for the demo, on ``plexus.codec.bolt`` and asyncio.

The provider answers every request with the bytes its ``answer`` function makes from the request's content;
heartbeats are answered, one-way requests only read. The consumer multiplexes calls over one connection (a
request id per call, answers matched by id) and reconnects on the next call when the connection is gone.
Both run their own event loop on a thread, so the demo's threaded apps can use them.

The content is the demo's own bytes (a request id in, JSON out), carried opaquely: the codec byte says
Hessian2 as SOFA RPC's would, and no sidecar reads the content (DESIGN.md §3).
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Final, TypeVar, cast

from plexus.codec.bolt import BoltCodec, BoltStatus, encode_response, heartbeat_reply
from plexus.codec.rpc import FrameKind, RpcFrame, RpcProtocolError

T = TypeVar("T")

METHOD: Final = "call"
RESPONSE_CLASS: Final = "java.lang.String"  # what the content stands for, were a Java client to read it
# Content length sits last in Bolt v1's fixed header: bytes 18..22 of a request, 16..20 of a response.
_V1_REQUEST_CONTENT_LEN: Final = slice(18, 22)
_V1_RESPONSE_CONTENT_LEN: Final = slice(16, 20)
_U32: Final = struct.Struct(">I")
CONNECT_TIMEOUT: Final = 2.0


def content_of(frame: RpcFrame) -> bytes:
    """The content of a Bolt v1 frame (the demo speaks v1 only): the last contentLen bytes of it."""
    field = _V1_RESPONSE_CONTENT_LEN if frame.kind.is_reply else _V1_REQUEST_CONTENT_LEN
    (length,) = _U32.unpack(frame.raw[field])
    return frame.raw[len(frame.raw) - length:] if length else b""


class LoopThread:
    """An event loop (uvloop when installed) on its own daemon thread; ``run`` waits for a coroutine."""

    def __init__(self, name: str) -> None:
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio also works
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(2.0)


class _ProviderConnection(asyncio.Protocol):
    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self._answer = answer
        self._decoder = BoltCodec().decoder()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        try:
            frames = self._decoder.feed(data)
        except RpcProtocolError:
            self._transport.close()  # bytes that break the protocol: nothing more on this connection is sane
            return
        out: list[bytes] = []
        for frame in frames:
            if frame.kind is FrameKind.HEARTBEAT:
                out.append(heartbeat_reply(frame))
            elif frame.kind is FrameKind.REQUEST:
                body = self._answer(content_of(frame))
                out.append(encode_response(frame.request_id, BoltStatus.SUCCESS, body,
                                           class_name=RESPONSE_CLASS))
            elif frame.kind is FrameKind.ONEWAY:
                self._answer(content_of(frame))
        if out:
            self._transport.write(b"".join(out))


class BoltProvider:
    """Serves Bolt on ``host``:0; ``port`` is the bound port."""

    def __init__(self, answer: Callable[[bytes], bytes], host: str = "127.0.0.1") -> None:
        self._loop = LoopThread("demo-bolt-provider")
        self._server = self._loop.run(
            self._loop.loop.create_server(lambda: _ProviderConnection(answer), host, 0), CONNECT_TIMEOUT)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        self._loop.loop.call_soon_threadsafe(self._server.close)
        self._loop.stop()


class BoltCallError(Exception):
    """A call failed: no connection, the connection dropped, a timeout, or a response status other than 0."""


class _ConsumerConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self._decoder = BoltCodec().decoder()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[RpcFrame]] = {}
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except RpcProtocolError as exc:
            self._fail(f"bad bytes from the peer: {exc}")
            if self.transport is not None:
                self.transport.close()
            return
        for frame in frames:
            waiter = self.pending.pop(frame.request_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(f"connection lost: {exc or 'closed by the peer'}")

    def _fail(self, reason: str) -> None:
        pending, self.pending = self.pending, {}
        for waiter in pending.values():
            if not waiter.done():
                waiter.set_exception(BoltCallError(reason))


class BoltConsumer:
    """Calls ``service`` over Bolt at ``address`` (a sidecar's egress port for it), multiplexed."""

    def __init__(self, address: str, service: str, timeout: float) -> None:
        host, _, port = address.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self.service = service
        self._timeout = timeout
        self._codec = BoltCodec()
        self._ids = itertools.count(1)
        self._loop = LoopThread(f"demo-bolt-{service}")
        self._conn: _ConsumerConnection | None = None
        self._connecting: asyncio.Lock | None = None

    def call(self, content: bytes) -> bytes:
        """The response's content; BoltCallError when the call failed."""
        try:
            return self._loop.run(self._call(content), self._timeout + 1.0)
        except TimeoutError:
            raise BoltCallError(f"no answer within {self._timeout + 1.0}s") from None

    async def _call(self, content: bytes) -> bytes:
        conn = await self._connection()
        request_id = next(self._ids) & 0x7FFFFFFF
        waiter: asyncio.Future[RpcFrame] = asyncio.get_running_loop().create_future()
        conn.pending[request_id] = waiter
        assert conn.transport is not None
        timeout_ms = int(self._timeout * 1000)
        conn.transport.write(self._codec.encode_request(request_id, self.service, METHOD, body=content,
                                                        timeout_ms=timeout_ms))
        try:
            frame = await asyncio.wait_for(waiter, self._timeout)
        except TimeoutError:
            conn.pending.pop(request_id, None)
            raise BoltCallError(f"no answer within {self._timeout}s") from None
        body = content_of(frame)
        if frame.status != BoltStatus.SUCCESS:
            status = BoltStatus(frame.status).name if frame.status in set(BoltStatus) else str(frame.status)
            raise BoltCallError(f"bolt status {status}: {body[-200:].decode('utf-8', 'replace')}")
        return body

    async def _connection(self) -> _ConsumerConnection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is None or self._conn.closed:
                loop = asyncio.get_running_loop()
                try:
                    _, conn = await asyncio.wait_for(
                        loop.create_connection(_ConsumerConnection, self._host, self._port), CONNECT_TIMEOUT)
                except (OSError, TimeoutError) as exc:
                    raise BoltCallError(f"cannot connect to {self._host}:{self._port}: {exc}") from None
                self._conn = conn
            return self._conn

    def close(self) -> None:
        conn = self._conn
        if conn is not None and conn.transport is not None:
            self._loop.loop.call_soon_threadsafe(conn.transport.close)
        self._loop.stop()

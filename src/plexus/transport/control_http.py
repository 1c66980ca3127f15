"""A small HTTP/1.1 server for control traffic: admin endpoints and the sidecar's local API.

Not the data path: it buffers whole bodies (capped), answers one request at a time per connection and is
built for tens of requests a second, not thousands. Handlers are plain functions (or coroutines) that take a
``ControlRequest`` and return a ``ControlResponse``; routes are matched on method and a path pattern whose
``{name}`` parts capture one path segment.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import httptools
import orjson

MAX_BODY_BYTES = 1024 * 1024  # control requests are small JSON documents
MAX_HEADER_BYTES = 16 * 1024


@dataclass(slots=True)
class ControlRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON; raises ValueError with a readable message when it is not."""
        if not self.body.strip():
            return {}
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"request body is not JSON: {exc}") from None


@dataclass(slots=True)
class ControlResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> ControlResponse:
        return cls(status, orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")

    @classmethod
    def text(
        cls, value: str, status: int = 200, content_type: str = "text/plain; charset=utf-8"
    ) -> ControlResponse:
        return cls(status, value.encode(), content_type)

    @classmethod
    def error(cls, status: int, message: str, **extra: Any) -> ControlResponse:
        return cls.json({"error": message, **extra}, status)


Handler = Callable[[ControlRequest], "ControlResponse | Awaitable[ControlResponse]"]

_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Router:
    """Routes ``(method, path pattern)`` to handlers; first registered match wins."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method.upper(), re.compile(f"^{regex}$"), handler))

    def resolve(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], bool]:
        """(handler, params, path_known). ``path_known`` with no handler means 405."""
        path_known = False
        for route_method, regex, handler in self._routes:
            match = regex.match(path)
            if match:
                path_known = True
                if route_method == method:
                    return handler, {k: unquote(v) for k, v in match.groupdict().items()}, True
        return None, {}, path_known


class _ControlProtocol(asyncio.Protocol):
    def __init__(self, router: Router) -> None:
        self._router = router
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body = bytearray()
        self._queue: list[ControlRequest | ControlResponse] = []
        self._busy = False
        self._closing = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so cast rather than assert.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "upgrade not supported here")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request: {exc}")
        except _TooLarge as exc:
            self._reject(exc.status, str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_HEADER_BYTES:
            raise _TooLarge(431, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _TooLarge(431, "request headers too large")
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > MAX_BODY_BYTES:
            raise _TooLarge(413, f"request body over {MAX_BODY_BYTES} bytes")

    def on_message_complete(self) -> None:
        url = urlsplit(self._url.decode("latin-1"))
        method = self._parser.get_method().decode("ascii", "replace")
        request = ControlRequest(method, url.path, parse_qs(url.query), self._headers, bytes(self._body))
        self._queue.append(request)
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._drain())

    # internals
    def _reject(self, status: int, message: str) -> None:
        self._write(ControlResponse.error(status, message), keep_alive=False)

    async def _drain(self) -> None:
        try:
            while self._queue and not self._closing:
                request = self._queue.pop(0)
                assert isinstance(request, ControlRequest)
                response = await self._dispatch(request)
                keep_alive = request.headers.get("connection", "").lower() != "close"
                self._write(response, keep_alive)
        finally:
            self._busy = False

    async def _dispatch(self, request: ControlRequest) -> ControlResponse:
        handler, params, path_known = self._router.resolve(request.method, request.path)
        if handler is None:
            if path_known:
                return ControlResponse.error(405, f"{request.method} is not allowed on {request.path}")
            return ControlResponse.error(404, f"no such endpoint: {request.path}")
        request.params = params
        try:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            return result
        except ValueError as exc:
            return ControlResponse.error(400, str(exc))
        except Exception as exc:  # a handler bug must not kill the admin server
            return ControlResponse.error(500, f"{type(exc).__name__}: {exc}")

    def _write(self, response: ControlResponse, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        head = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}",
            f"content-type: {response.content_type}",
            f"content-length: {len(response.body)}",
        ]
        head.extend(f"{k}: {v}" for k, v in response.headers.items())
        if not keep_alive:
            head.append("connection: close")
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        if not keep_alive:
            self._closing = True
            transport.close()


class _TooLarge(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def serve_control_http(router: Router, host: str, port: int) -> asyncio.Server:
    """Listen on HOST:PORT (0 picks a free port; read it from ``server.sockets``)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _ControlProtocol(router), host, port, reuse_address=True)


def bound_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])

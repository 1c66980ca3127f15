"""The reference for CPU per request: a minimal uvloop + httptools HTTP/1.1 reverse proxy.

    python bench/profiles/minimal_proxy.py --upstream 127.0.0.1:8080 --ready-file /tmp/ready.json

What a bare proxy must do and no more: parse each request with httptools (per-header callbacks), rebuild its
head with one join and send it on a keep-alive upstream connection owned by this client connection (1:1, so
no pool, no routing, no balancing, no metrics, no checks), parse the response the same way and send it back.
It is the yardstick of DESIGN.md §3 ("a minimal uvloop + httptools proxy spends 28 µs of CPU per request").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[bytes] = []
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.headers.append(b"\r\n")
        self.out.append(b"HTTP/1.1 %d OK\r\n" % status + b"".join(self.headers))
        self.headers = []

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def on_message_complete(self) -> None:
        out, self.out = self.out, []
        self.client.transport.write(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream_addr = upstream
        self.transport: asyncio.Transport
        self.parser = httptools.HttpRequestParser(self)
        self.up: Upstream | None = None
        self.url = b""
        self.headers: list[bytes] = []
        self.out: list[bytes] = []
        self.pending: list[bytes] = []
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(self._connect(loop))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        up = Upstream(self)
        await loop.create_connection(lambda: up, *self.upstream_addr)
        self.up = up
        if self.pending:
            assert up.transport is not None
            up.transport.write(b"".join(self.pending))
            self.pending = []

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.out:
            data = b"".join(self.out)
            self.out = []
            up = self.up
            if up is not None and up.transport is not None:
                up.transport.write(data)
            else:
                self.pending.append(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        self.headers.append(b"\r\n")
        self.out.append(
            self.parser.get_method() + b" " + self.url + b" HTTP/1.1\r\n" + b"".join(self.headers)
        )
        self.url = b""
        self.headers = []

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()


async def main(upstream: str, ready_file: str) -> None:
    host, _, port = upstream.rpartition(":")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client((host, int(port))), "127.0.0.1", 0, backlog=1024)
    bound = server.sockets[0].getsockname()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tmp = ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "listen": f"{bound[0]}:{bound[1]}"}, f)
    os.replace(tmp, ready_file)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    uvloop.run(main(args.upstream, args.ready_file))

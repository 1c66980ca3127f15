"""The two apps of test_dubbo_python.py, each run as its own process.

``python dubbo_python_app.py provider READY_FILE``: a Dubbo provider built on ``plexus.codec.dubbo`` and
``plexus.codec.hessian2``. ``greet(s)`` answers OK with RESPONSE_VALUE and the Hessian2 string
``greet:<s>`` after a random delay of up to 20 ms (so answers overtake each other); ``fail(s)`` answers
status SERVICE_ERROR (70) with the string ``refused:<s>``; heartbeats are answered.

``python dubbo_python_app.py client HOST INTERFACE``: the third-party client, dubbo-python, unchanged, in its
direct mode (no ZooKeeper/Nacos). It makes ``CALLS`` greet calls from ``THREADS`` threads over its one pooled
connection, then one ``fail`` call, and prints one JSON line: every call's argument and what came back.
dubbo-python runs in its own process because importing it starts a reader thread that busy-loops until its
first connection exists.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from plexus.codec import dubbo, hessian2
from plexus.codec.rpc import FrameKind, RpcFrame
from plexus.testing.procs import write_ready_file

CALLS = 50
THREADS = 8  # enough to keep several calls in flight on dubbo-python's single connection
MAX_DELAY = 0.02
RESPONSE_VALUE = b"\x91"  # Dubbo's result flag 1 (a value follows) as a compact Hessian2 int


def argument_of(i: int) -> str:
    return f"caller-{i}-Grüße"  # non-ASCII: the Hessian2 strings cross both sidecars byte for byte


def first_string_argument(frame: RpcFrame) -> tuple[str, str]:
    """(method, first argument) of a request: the four routing strings, the descriptor, then the argument."""
    raw, pos = frame.raw, dubbo.HEADER_LENGTH
    values: list[str | None] = []
    for _ in range(6):
        value, pos = hessian2.read_string(raw, pos, len(raw), allow_null=True)
        values.append(value)
    return values[3] or "", values[5] or ""


class _Provider(asyncio.Protocol):
    def __init__(self) -> None:
        self.decoder = dubbo.DubboCodec().decoder()
        self.transport: asyncio.Transport | None = None
        self.rng = random.Random()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        for frame in self.decoder.feed(data):
            if frame.kind is FrameKind.HEARTBEAT:
                self._write(dubbo.heartbeat_reply(frame))
            if frame.kind is not FrameKind.REQUEST:
                continue
            method, argument = first_string_argument(frame)
            if method == "greet":
                body = RESPONSE_VALUE + hessian2.encode_string(f"greet:{argument}")
                reply = dubbo.encode_response(frame.request_id, dubbo.DubboStatus.OK, body)
            else:
                reply = dubbo.error_reply(frame, dubbo.DubboStatus.SERVICE_ERROR, f"refused:{argument}")
            loop.call_later(self.rng.uniform(0, MAX_DELAY), self._write, reply)

    def _write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)


async def serve(ready_file: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Provider, "127.0.0.1", 0)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_ready_file(ready_file, {"listen": f"127.0.0.1:{server.sockets[0].getsockname()[1]}"})
    await stop.wait()
    server.close()


def run_client(host: str, interface: str) -> None:
    from dubbo.client import DubboClient  # type: ignore[import-untyped]

    client = DubboClient(interface, version="1.0.0", host=host)

    def call(i: int) -> list[str]:
        return [argument_of(i), str(client.call("greet", argument_of(i), timeout=5))]

    answers = [call(0)]  # the first call opens the pooled connection; the rest share it
    with ThreadPoolExecutor(THREADS) as pool:
        answers += pool.map(call, range(1, CALLS))
    try:
        client.call("fail", "x", timeout=5)
        error = ""
    except Exception as exc:  # dubbo-python raises DubboResponseException; report its type and text
        error = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"answers": answers, "error": error}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "provider":
        asyncio.run(serve(sys.argv[2]))
    else:
        run_client(sys.argv[2], sys.argv[3])

"""A tiny TCP echo server for the sidecar's TCP tests: binds 127.0.0.1:PORT, writes a ready file."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import cast

from plexus.testing.procs import write_ready_file


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def main(port: int, ready_file: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_ready_file(ready_file, {"listen": f"127.0.0.1:{server.sockets[0].getsockname()[1]}"})
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))

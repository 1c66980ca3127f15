"""A minimal h2c proxy on uvloop + libnghttp2 (the ``ngh2`` binding): the floor for a Python HTTP/2 hop.

    python bench/profiles/h2_minimal_proxy.py --upstream 127.0.0.1:PORT --ready-file R.json

What bench/profiles/minimal_proxy.py is for HTTP/1.1, this is for gRPC: one upstream HTTP/2 connection per
downstream connection, every stream forwarded as is (headers, data, trailers, resets; stream ids mapped), flow
control left to libnghttp2 (automatic WINDOW_UPDATE), all output of one read written once per connection.
No routing, balancing, metrics, limits or deadlines: a calibration point, not a product. bench/grpc_bench.py
runs it as mode ``ngh2min`` beside Plexus and Envoy, to measure whether a Python proxy whose HTTP/2 codec is
libnghttp2 can reach Envoy's requests per core before anyone ports Plexus's codec seam to it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

import ngh2
import uvloop

from plexus.testing.procs import write_ready_file


class Upstream(asyncio.Protocol):
    def __init__(self, down: Downstream) -> None:
        self.down = down
        self.conn = ngh2.Connection(ngh2.Role.CLIENT)
        self.conn.initiate_connection()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.down.upstream_ready()

    def data_received(self, data: bytes) -> None:
        conn, down = self.conn, self.down
        dconn, to_down = down.conn, down.up_to_down
        conn.receive_data(data)
        for ev in conn.events():
            if isinstance(ev, ngh2.DataReceived):
                dconn.send_data(to_down[ev.stream_id], ev.data, end_stream=ev.end_stream)
            elif isinstance(ev, ngh2.ResponseReceived):
                dconn.send_response(to_down[ev.stream_id], ev.headers, end_stream=ev.end_stream)
            elif isinstance(ev, ngh2.TrailersReceived):
                dconn.send_trailers(to_down[ev.stream_id], ev.headers)
            elif isinstance(ev, ngh2.StreamReset):
                sid = to_down.get(ev.stream_id)
                if sid is not None:
                    dconn.reset_stream(sid, ev.error_code)
            elif isinstance(ev, ngh2.StreamClosed):
                sid = to_down.pop(ev.stream_id, None)
                if sid is not None:
                    down.down_to_up.pop(sid, None)
        self.flush()
        down.flush()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.down.transport is not None:
            self.down.transport.close()


class Downstream(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream_addr = upstream
        self.conn = ngh2.Connection(ngh2.Role.SERVER)
        self.conn.initiate_connection()
        self.up: Upstream | None = None
        self.ready = False
        self.pending: list[bytes] = []
        self.down_to_up: dict[int, int] = {}
        self.up_to_down: dict[int, int] = {}
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Task[tuple[asyncio.BaseTransport, Upstream]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        up = self.up = Upstream(self)
        loop = asyncio.get_running_loop()
        host, port = self.upstream_addr
        self.connecting = loop.create_task(loop.create_connection(lambda: up, host, port))
        self.flush()

    def upstream_ready(self) -> None:
        self.ready = True
        pending, self.pending = self.pending, []
        for data in pending:
            self.data_received(data)
        assert self.up is not None
        self.up.flush()

    def data_received(self, data: bytes) -> None:
        if not self.ready:
            self.pending.append(data)
            return
        up = self.up
        assert up is not None
        uconn, to_up = up.conn, self.down_to_up
        self.conn.receive_data(data)
        for ev in self.conn.events():
            if isinstance(ev, ngh2.DataReceived):
                uconn.send_data(to_up[ev.stream_id], ev.data, end_stream=ev.end_stream)
            elif isinstance(ev, ngh2.RequestReceived):
                up_sid = uconn.send_request(ev.headers, end_stream=ev.end_stream)
                to_up[ev.stream_id] = up_sid
                self.up_to_down[up_sid] = ev.stream_id
            elif isinstance(ev, ngh2.TrailersReceived):
                uconn.send_trailers(to_up[ev.stream_id], ev.headers)
            elif isinstance(ev, ngh2.StreamReset):
                sid = to_up.get(ev.stream_id)
                if sid is not None:
                    uconn.reset_stream(sid, ev.error_code)
        up.flush()
        self.flush()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()


async def main(args: argparse.Namespace) -> None:
    host, _, port = args.upstream.rpartition(":")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Downstream((host, int(port))), "127.0.0.1", 0, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_ready_file(args.ready_file, {"listen": f"127.0.0.1:{server.sockets[0].getsockname()[1]}"})
    await stop.wait()
    server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True)
    p.add_argument("--ready-file", required=True)
    uvloop.run(main(p.parse_args()))

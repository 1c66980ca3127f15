"""A fast Bolt / Dubbo load generator and echo upstream, each run as its own (pinned) process.

    python bench/lib/rpc_load.py server --protocol bolt --ready-file R.json
    python bench/lib/rpc_load.py client --protocol bolt --target 127.0.0.1:PORT --connections 1 \
        --inflight 100 --duration 5

client: N connections, each keeping exactly K requests in flight (closed loop per slot): a response frees a
slot and a new request goes out in the same event-loop turn. Requests are one pre-encoded frame with the
request id patched in (prefix + 4/8 id bytes + suffix, joined once per read), so the generator spends a few
hundred nanoseconds per request. Latency is timed per read (one clock read per ``data_received``, one per
write batch): every frame in one read arrived at the same time, so that loses nothing. Prints one JSON line
``RPC_JSON {...}``: requests and errors in the measured window, its duration, p50/p90/p99/p99.9 µs.

server: answers each request frame with a pre-encoded success response carrying the same id; all answers to
one read go out in one write. Heartbeats (the sidecar's idle checks) are answered through the codec. Parses
only the fixed header: it must never be what limits the proxy under test.

Only the fixed-header layouts are used here (Bolt v1, Dubbo 2); they match plexus.codec.bolt/dubbo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
import sys
import time
from pathlib import Path
from typing import cast

import uvloop

from plexus.codec import bolt, dubbo, hessian2
from plexus.testing.procs import write_ready_file

MARKER = "RPC_JSON "
MARK_START = "RPC_MARK start"
MARK_END = "RPC_MARK end"
SERVICE = "com.acme.bench.Echo"  # the bench service, routed on by the sidecar (Bolt `service` header)
METHOD = "echo"
# An opaque body like a small SOFA RPC call (the proxy never reads it): ~100 bytes either way.
BODY = b"x" * 100

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")

# Bolt v1 fixed-header offsets (bench/lib reads them directly; see plexus/codec/bolt.py's drawing).
BOLT_ID_AT = 5
BOLT_REQ_HEAD, BOLT_RESP_HEAD = 22, 20
DUBBO_ID_AT, DUBBO_LEN_AT, DUBBO_HEAD = 4, 12, 16
DUBBO_OK = dubbo.DubboStatus.OK
DUBBO_FLAG_EVENT = 0x20
DUBBO_FLAG_REQUEST = 0x80


def request_frame(protocol: str) -> bytes:
    if protocol == "bolt":
        headers = {bolt.HEADER_SERVICE: f"{SERVICE}:1.0", bolt.HEADER_METHOD: METHOD}
        return bolt.encode_request(1, headers, BODY, timeout_ms=3000)
    tail = hessian2.encode_string("Ljava/lang/String;") + hessian2.encode_string(BODY.decode()) + b"HZ"
    return dubbo.encode_request(1, SERVICE, METHOD, version="1.0", tail=tail)


def response_frame(protocol: str) -> bytes:
    if protocol == "bolt":
        return bolt.encode_response(1, bolt.BoltStatus.SUCCESS, BODY)
    return dubbo.encode_response(1, DUBBO_OK, b"\x91" + hessian2.encode_string(BODY.decode()))


def _split(frame: bytes, protocol: str) -> tuple[bytes, bytes, struct.Struct]:
    """(bytes before the id, bytes after it, the id's layout)."""
    if protocol == "bolt":
        return frame[:BOLT_ID_AT], frame[BOLT_ID_AT + 4 :], _U32
    return frame[:DUBBO_ID_AT], frame[DUBBO_ID_AT + 8 :], _U64


def frame_size(buf: bytes | bytearray, pos: int, protocol: str) -> int:
    """Bytes of the frame at ``pos``, or 0 when its fixed header has not all come."""
    avail = len(buf) - pos
    if protocol == "bolt":
        if avail < 2:
            return 0
        if buf[pos + 1] == bolt.TYPE_RESPONSE:
            if avail < BOLT_RESP_HEAD:
                return 0
            cl, hl = _U16.unpack_from(buf, pos + 12)[0], _U16.unpack_from(buf, pos + 14)[0]
            return int(BOLT_RESP_HEAD + cl + hl + _U32.unpack_from(buf, pos + 16)[0])
        if avail < BOLT_REQ_HEAD:
            return 0
        cl, hl = _U16.unpack_from(buf, pos + 14)[0], _U16.unpack_from(buf, pos + 16)[0]
        return int(BOLT_REQ_HEAD + cl + hl + _U32.unpack_from(buf, pos + 18)[0])
    if avail < DUBBO_HEAD:
        return 0
    return int(DUBBO_HEAD + _I32.unpack_from(buf, pos + DUBBO_LEN_AT)[0])


# --- echo upstream ------------------------------------------------------------------------------------------


class EchoServer(asyncio.Protocol):
    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.prefix, self.suffix, self.id_layout = _split(response_frame(protocol), protocol)
        self.codec: bolt.BoltCodec | dubbo.DubboCodec = (
            bolt.BoltCodec() if protocol == "bolt" else dubbo.DubboCodec()
        )
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        out: list[bytes] = []
        bolt_proto = self.protocol == "bolt"
        prefix, suffix, pack = self.prefix, self.suffix, self.id_layout.pack
        while True:
            size = frame_size(buf, pos, self.protocol)
            if not size or pos + size > n:
                break
            if bolt_proto:
                plain = buf[pos + 1] == bolt.TYPE_REQUEST and buf[pos + 3] == bolt.CMD_REQUEST
                rid = _U32.unpack_from(buf, pos + BOLT_ID_AT)[0]
            else:
                flags = buf[pos + 2]
                plain = bool(flags & DUBBO_FLAG_REQUEST) and not flags & DUBBO_FLAG_EVENT
                rid = _U64.unpack_from(buf, pos + DUBBO_ID_AT)[0]
            if plain:
                out.append(prefix)
                out.append(pack(rid))
                out.append(suffix)
            else:
                out.append(self._other(bytes(buf[pos : pos + size])))
            pos += size
        del buf[:pos]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _other(self, raw: bytes) -> bytes:
        """A heartbeat (or anything unusual): answered properly through the codec, off the fast path."""
        for frame in self.codec.decoder().feed(raw):
            if frame.kind.name == "HEARTBEAT":
                return self.codec.heartbeat_reply(frame)
        return b""


async def serve(protocol: str, ready_file: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EchoServer(protocol), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_ready_file(ready_file, {"listen": f"127.0.0.1:{port}"})
    await stop.wait()
    server.close()


# --- load generator -----------------------------------------------------------------------------------------


class Shared:
    """What every connection of one client run adds to."""

    def __init__(self) -> None:
        self.measuring = False
        self.stopping = False
        self.requests = 0
        self.errors = 0
        self.latencies_us: list[int] = []


class LoadConn(asyncio.Protocol):
    def __init__(self, protocol: str, inflight: int, shared: Shared, first_id: int) -> None:
        self.protocol = protocol
        self.inflight = inflight
        self.shared = shared
        self.prefix, self.suffix, self.id_layout = _split(request_frame(protocol), protocol)
        self.next_id = first_id
        self.sent: dict[int, int] = {}  # request id → send time (ns)
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ready.set_result(None)

    def start(self) -> None:
        self._send(self.inflight, time.perf_counter_ns())

    def _send(self, count: int, now: int) -> None:
        prefix, suffix, pack, sent = self.prefix, self.suffix, self.id_layout.pack, self.sent
        rid = self.next_id
        out: list[bytes] = []
        for _ in range(count):
            rid += 1
            sent[rid] = now
            out.append(prefix)
            out.append(pack(rid))
            out.append(suffix)
        self.next_id = rid
        assert self.transport is not None
        self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        done = errors = 0
        shared = self.shared
        record = shared.measuring
        lat = shared.latencies_us
        sent = self.sent
        bolt_proto = self.protocol == "bolt"
        while True:
            size = frame_size(buf, pos, self.protocol)
            if not size or pos + size > n:
                break
            if bolt_proto:
                rid = _U32.unpack_from(buf, pos + BOLT_ID_AT)[0]
                bad = _U16.unpack_from(buf, pos + 10)[0] != bolt.BoltStatus.SUCCESS
            else:
                rid = _U64.unpack_from(buf, pos + DUBBO_ID_AT)[0]
                bad = buf[pos + 3] != DUBBO_OK
            pos += size
            t0 = sent.pop(rid, None)
            if t0 is None:
                continue  # a heartbeat or anything not ours
            done += 1
            errors += bad
            if record:
                lat.append((now - t0) // 1000)
        del buf[:pos]
        if record:
            shared.requests += done
            shared.errors += errors
        if done and not shared.stopping:
            self._send(done, now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.shared.stopping:
            self.shared.errors += len(self.sent)
            print(f"connection lost: {exc!r}", file=sys.stderr)


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


async def load(
    protocol: str, host: str, port: int, connections: int, inflight: int, duration: float, warmup: float
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    shared = Shared()
    conns: list[LoadConn] = []
    for i in range(connections):
        # Ids apart per connection (not needed by the protocol; eases reading a capture).
        first_id = i * 10_000_000

        def make(first_id: int = first_id) -> LoadConn:
            return LoadConn(protocol, inflight, shared, first_id)

        _, conn = await loop.create_connection(make, host, port)
        conns.append(conn)
    await asyncio.gather(*(c.ready for c in conns))
    for c in conns:
        c.start()
    await asyncio.sleep(warmup)
    # The harness snapshots the CPU accounting of every process on the path at these two marks, so the
    # measured window's CPU is charged to exactly the requests counted in it.
    print(MARK_START, flush=True)
    shared.measuring = True
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    shared.measuring = False
    elapsed = time.perf_counter() - t0
    print(MARK_END, flush=True)
    shared.stopping = True
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    lat = sorted(shared.latencies_us)
    return {
        "requests": shared.requests,
        "errors": shared.errors,
        "duration_s": elapsed,
        "p50_us": percentile(lat, 0.50),
        "p90_us": percentile(lat, 0.90),
        "p99_us": percentile(lat, 0.99),
        "p999_us": percentile(lat, 0.999),
        "mean_us": sum(lat) / len(lat) if lat else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--protocol", choices=("bolt", "dubbo"), required=True)
    s.add_argument("--ready-file", required=True)
    c = sub.add_parser("client")
    c.add_argument("--protocol", choices=("bolt", "dubbo"), required=True)
    c.add_argument("--target", required=True, help="host:port")
    c.add_argument("--connections", type=int, default=1)
    c.add_argument("--inflight", type=int, default=1, help="requests in flight per connection")
    c.add_argument("--duration", type=float, default=5.0)
    c.add_argument("--warmup", type=float, default=0.5, help="seconds of load before the measured window")
    args = p.parse_args(argv)
    if args.role == "server":
        uvloop.run(serve(args.protocol, args.ready_file))
        return 0
    host, _, port = args.target.rpartition(":")
    result = uvloop.run(
        load(args.protocol, host, int(port), args.connections, args.inflight, args.duration, args.warmup)
    )
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())

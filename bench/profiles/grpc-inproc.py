"""One Plexus sidecar's gRPC hop in one process, over fake transports: CPU per call, noise-free enough to A/B.

    .venv/bin/python bench/profiles/grpc-inproc.py [--streams 1|50] [--calls N] [--rounds R]
    valgrind --tool=cachegrind --cache-sim=no .venv/bin/python bench/profiles/grpc-inproc.py --calls N ...

What bench/grpc_bench.py's ``plexus1`` runs, minus the sockets: h2load's side (an ngh2 client connection) and
nginx's side (an ngh2 server connection answering 200, a short body, ``grpc-status``/``grpc-message``
trailers) are in this process; the sidecar is a real ``DataPlane`` with the bench service (protocol grpc) and
an ``Http2Downstream`` on its per-service egress router, its upstream connection on a fake transport. Each
round the client sends ``--streams`` calls in one write, the proxy reads them, the server answers all of
them in one write, the proxy reads that. Only the proxy's two ``data_received`` calls per round are timed
(``time.perf_counter``; nothing in them blocks), best of ``--rounds``. ``--profile FILE`` writes a cProfile
of the timed part. Telemetry is the sidecar's default (metrics, rings, trace context at 1 %); ``--access``
adds an access-log queue (drained outside the timing).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import struct
import sys
import time
from typing import Any

import uvloop

from plexus.discovery.model import Instance
from plexus.sidecar.app import GC_GEN0_THRESHOLD
from plexus.transport import DataPlane, DataPlaneSettings
from plexus.transport.dataplane import _ServiceEgressRouter
from plexus.transport.h2_downstream import Http2Downstream

ROUND = compile("one_round()", "<round>", "eval")
SERVICE = "bench"
VAR = __import__("os").environ.get("VAR", "")
REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/bench.Echo/Call"),
    (b":authority", b"127.0.0.1:15001"),
    (b"user-agent", b"h2load nghttp2/1.59.0"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]
BODY = b"\x00\x00\x00\x00\x0e\x0a\x0cplexus bench"
RESPONSE = [(b":status", b"200"), (b"server", b"nginx/1.26.0"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


class FakeTransport:
    def __init__(self) -> None:
        self.buf: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.buf.append(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, *args: Any, **kwargs: Any) -> None:
        return None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.buf)
        self.buf.clear()
        return data


class _LoopShim:
    """The pool's loop while its one upstream connection opens: create_connection over a fake transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: FakeTransport) -> None:
        self._loop = loop
        self._transport = transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_connection(self, factory: Any, host: str, port: int) -> tuple[Any, Any]:
        proto = factory()
        proto.connection_made(self._transport)
        return self._transport, proto


def _lit(name: bytes, value: bytes) -> bytes:
    """HPACK literal without indexing, new name (RFC 7541 §6.2.2): the peers keep no dynamic table."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


_HEADERS, _DATA, _SETTINGS, _WINDOW = 1, 0, 4, 8
_END_STREAM, _END_HEADERS, _ACK = 0x1, 0x4, 0x1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _block(fields: list[tuple[bytes, bytes]]) -> bytes:
    out = b""
    for name, value in fields:
        if name == b":method" and value == b"POST":
            out += b"\x83"
        elif name == b":scheme" and value == b"http":
            out += b"\x86"
        elif name == b":status" and value == b"200":
            out += b"\x88"
        else:
            out += _lit(name, value)
    return out


REQUEST_BLOCK = _block(REQUEST)
RESPONSE_BLOCK = _block(RESPONSE)
TRAILERS_BLOCK = _block(TRAILERS)
RESPONSE_BODY = b"plexus bench"


def client_batch(first_sid: int, m: int, credit: int) -> bytes:
    """h2load's side: ``m`` calls (HEADERS + one DATA with END_STREAM each), after a connection credit."""
    out = [_frame(_WINDOW, 0, 0, struct.pack(">I", credit))] if credit else []
    for i in range(m):
        sid = first_sid + 2 * i
        out.append(_frame(_HEADERS, _END_HEADERS, sid, REQUEST_BLOCK))
        out.append(_frame(_DATA, _END_STREAM, sid, BODY))
    return b"".join(out)


def server_batch(first_sid: int, m: int, credit: int) -> bytes:
    """nginx's side: ``m`` answers (HEADERS, DATA, trailers with END_STREAM), after a connection credit."""
    out = [_frame(_WINDOW, 0, 0, struct.pack(">I", credit))] if credit else []
    for i in range(m):
        sid = first_sid + 2 * i
        out.append(_frame(_HEADERS, _END_HEADERS, sid, RESPONSE_BLOCK))
        out.append(_frame(_DATA, 0, sid, RESPONSE_BODY))
        out.append(_frame(_HEADERS, _END_HEADERS | _END_STREAM, sid, TRAILERS_BLOCK))
    return b"".join(out)


def ended_streams(data: bytes) -> int:
    """Frames with END_STREAM in ``data`` (the calls the proxy completed toward the client)."""
    n = at = 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at : at + 3], "big")
        if data[at + 3] in (_HEADERS, _DATA) and data[at + 4] & _END_STREAM:
            n += 1
        at += 9 + length
    return n


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    # No PING or idle close while the loop sits between rounds (the fake peers answer no PING).
    settings = DataPlaneSettings(workload="consumer", h2_ping_interval=1e6, h2_upstream_idle_timeout=1e6)
    plane = DataPlane(settings)
    plane.ctx.loop = loop
    access = plane.stats.telemetry.access_log = [] if args.access else None
    plane.update_service(SERVICE, [Instance(service=SERVICE, address="127.0.0.1:1", protocol="grpc")])
    down = Http2Downstream(plane.h2, _ServiceEgressRouter(plane, SERVICE), "egress")  # type: ignore[arg-type]
    dt = FakeTransport()
    down.connection_made(dt)
    pool = plane.h2.pool
    ut = FakeTransport()
    pool.loop = _LoopShim(loop, ut)  # type: ignore[assignment]
    m = args.streams
    settings_frame = _frame(_SETTINGS, 0, 0, struct.pack(">HI", 3, 1024))
    ack = _frame(_SETTINGS, _ACK, 0, b"")

    # Connect: preface + SETTINGS each way; the first call opens the upstream connection.
    down.data_received(PREFACE + settings_frame + ack + client_batch(1, 1, 0))
    for _ in range(5):
        await asyncio.sleep(0)
    pool.loop = loop
    conn = next(iter(pool._all))
    conn.data_received(settings_frame + ack)  # the waiting call is opened upstream now
    conn.data_received(server_batch(1, 1, 0))
    assert ended_streams(dt.take()) == 1, "the first call went through"
    ut.take()
    down_sid = up_sid = 3
    spent = 0.0
    clock = time.perf_counter
    done = 1

    def one_round() -> None:
        nonlocal spent, down_sid, up_sid, done
        request = client_batch(down_sid, m, m * len(RESPONSE_BODY))
        answer = server_batch(up_sid, m, m * len(BODY))
        t0 = clock()
        down.data_received(request)
        conn.data_received(answer)
        t2 = clock()
        spent += t2 - t0
        down_sid += 2 * m
        up_sid += 2 * m
        done += ended_streams(dt.take())
        ut.take()

    for _ in range(args.warm // m):
        one_round()
        if access is not None:
            access.clear()
    await asyncio.sleep(0)
    gc.collect()  # as the sidecar does once started (plexus.sidecar.app._tune_gc)
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    rounds = max(1, args.calls // m)
    counted = args.callgrind
    env = {"one_round": one_round}
    best = float("inf")
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    for _ in range(args.rounds):
        spent = 0.0
        start = done
        if profiler is not None:
            profiler.enable()
        for _ in range(rounds):
            if counted:
                eval(ROUND, env)  # the only eval after start-up: what callgrind collects
            else:
                one_round()
            if access is not None and len(access) > 1000:
                access.clear()
        if profiler is not None:
            profiler.disable()
        await asyncio.sleep(0)
        calls = done - start
        assert calls == rounds * m, (calls, rounds * m)
        best = min(best, spent / calls * 1e6)
        if args.each:
            print(f"  {spent / calls * 1e6:.2f}")
    if profiler is not None:
        profiler.dump_stats(args.profile)
    print(f"{best:.2f} µs per call in the proxy ({m} in flight, best of {args.rounds} x {rounds * m} calls)")
    route = plane.egress_route(SERVICE)
    assert route is not None
    assert VAR or sum(s.count for s in route.stats.series.values()) == done, "every call counted"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--warm", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--access", action="store_true")
    p.add_argument("--each", action="store_true", help="print every round's figure")
    p.add_argument("--profile", default="")
    p.add_argument(
        "--callgrind",
        action="store_true",
        help="each measured round through eval(): valgrind --tool=callgrind --toggle-collect=builtin_eval",
    )
    args = p.parse_args(argv)
    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

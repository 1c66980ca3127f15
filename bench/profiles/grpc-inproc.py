"""One Plexus sidecar's gRPC hop in one process, over fake transports: CPU per call, noise-free enough to A/B.

    .venv/bin/python bench/profiles/grpc-inproc.py [--streams 1|50] [--calls N] [--rounds R]
    valgrind --tool=cachegrind --cache-sim=no .venv/bin/python bench/profiles/grpc-inproc.py --calls N ...
    PYTHONHASHSEED=0 valgrind --tool=callgrind --toggle-collect='builtin_eval*' .venv/bin/python \
        bench/profiles/grpc-inproc.py --streams 50 --warm 3000 --rounds 1 --calls 2000 --callgrind
    # instructions per call = callgrind's "totals" / 2000: the proxy's reads only (frames built, output parsed
    # outside the eval)

What bench/grpc_bench.py's ``plexus1`` runs, minus the sockets: h2load's side (an ngh2 client connection) and
nginx's side (an ngh2 server connection answering 200, a short body, ``grpc-status``/``grpc-message``
trailers) are in this process; the sidecar is a real ``DataPlane`` with the bench service (protocol grpc) and
an ``Http2Downstream`` on its per-service egress router, its upstream connection on a fake transport. Each
round the client sends ``--streams`` calls in one write, the proxy reads them, the server answers all of
them in one write, the proxy reads that, then nginx's RST_STREAM(NO_ERROR) for each (a third read; what
nginx sends, see ``server_resets``). Connection windows are opened wide once, as h2load and nginx do (no
WINDOW_UPDATE per round unless ``--round-credit``). Only the proxy's ``data_received`` calls are timed
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
from fake_transport import FakeTransport  # (this folder: sys.path[0] when run as a script)

from plexus.discovery.model import Instance
from plexus.sidecar.app import GC_GEN0_THRESHOLD
from plexus.transport import DataPlane, DataPlaneSettings
from plexus.transport.dataplane import _ServiceEgressRouter
from plexus.transport.h2_downstream import Http2Downstream

ROUND = compile("proxy_reads()", "<round>", "eval")
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


_HEADERS, _DATA, _RST, _SETTINGS, _WINDOW = 1, 0, 3, 4, 8
_END_STREAM, _END_HEADERS, _ACK = 0x1, 0x4, 0x1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WIDE_WINDOW = (1 << 30) - 65_535  # what h2load (-W 30) and nginx give: no connection credit needed for a run


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


def server_resets(first_sid: int, m: int) -> bytes:
    """nginx's RST_STREAM(NO_ERROR) after each answer: it answers on the request's HEADERS, before it reads
    the DATA that ends the request, then resets the stream's rest (RFC 9113 §8.1). It comes ~100 µs after
    the answer, so the proxy reads it on its own (seen with strace and read counters at 1x1: 3 reads per call,
    one of them this)."""
    return b"".join(_frame(_RST, 0, first_sid + 2 * i, b"\x00\x00\x00\x00") for i in range(m))


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
    down = Http2Downstream(plane.h2, _ServiceEgressRouter(plane, SERVICE), "egress")
    dt = FakeTransport()
    pool = plane.h2.pool
    ut = FakeTransport()
    down.connection_made(dt)  # type: ignore[arg-type]
    pool.loop = _LoopShim(loop, ut)  # type: ignore[assignment]
    m = args.streams
    settings_frame = _frame(_SETTINGS, 0, 0, struct.pack(">HI", 3, 1024))
    ack = _frame(_SETTINGS, _ACK, 0, b"")

    # h2load and nginx open their connection windows wide once (nghttp2's -W 30 default, nginx's 2^31-1), and
    # then credit again only after half of that: a WINDOW_UPDATE per round (``--round-credit``) is not what
    # the proxy reads from them.
    wide = b"" if args.round_credit else _frame(_WINDOW, 0, 0, struct.pack(">I", WIDE_WINDOW))
    # Connect: preface + SETTINGS each way; the first call opens the upstream connection.
    down.data_received(PREFACE + settings_frame + ack + wide + client_batch(1, 1, 0))
    for _ in range(5):
        await asyncio.sleep(0)
    pool.loop = loop
    conn = next(iter(pool._all))
    conn.data_received(settings_frame + ack + wide)  # the waiting call is opened upstream now
    conn.data_received(server_batch(1, 1, 0))
    assert ended_streams(dt.take()) == 1, "the first call went through"
    ut.take()
    down_sid = up_sid = 3
    spent = 0.0
    clock = time.perf_counter
    done = 1

    reads: list[tuple[Any, bytes]] = []  # the next round's reads: built before it, outside what is counted

    def prepare() -> None:
        request = client_batch(down_sid, m, m * len(RESPONSE_BODY) if args.round_credit else 0)
        answer = server_batch(up_sid, m, m * len(BODY) if args.round_credit else 0)
        reads[:] = [(down, request), (conn, answer)]
        if args.nginx_rst:
            reads.append((conn, server_resets(up_sid, m)))

    def proxy_reads() -> None:
        for proto, data in reads:
            proto.data_received(data)

    def settle() -> None:
        nonlocal down_sid, up_sid, done
        down_sid += 2 * m
        up_sid += 2 * m
        done += ended_streams(dt.take())
        ut.take()

    def one_round(counted: bool = False) -> None:
        """One round; with ``counted`` its reads run through eval() (all that callgrind collects: the
        frames are built and the proxy's output parsed outside it)."""
        nonlocal spent
        prepare()
        t0 = clock()
        if counted:
            eval(ROUND, env)
        else:
            proxy_reads()
        spent += clock() - t0
        settle()

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
    env = {"proxy_reads": proxy_reads}
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
            one_round(counted)  # with --callgrind, its eval is the only one after start-up
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
    p.add_argument(
        "--round-credit",
        action="store_true",
        help="a connection WINDOW_UPDATE from both peers every round (the harness before 2026-11-26 10:15)",
    )
    p.add_argument("--each", action="store_true", help="print every round's figure")
    p.add_argument(
        "--no-nginx-rst",
        dest="nginx_rst",
        action="store_false",
        help="leave out nginx's RST_STREAM after each answer (the harness before 2026-11-26 10:25)",
    )
    p.add_argument("--profile", default="")
    p.add_argument(
        "--callgrind",
        action="store_true",
        help="each round's reads through eval(): valgrind --tool=callgrind --toggle-collect=builtin_eval",
    )
    args = p.parse_args(argv)
    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

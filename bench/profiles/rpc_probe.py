"""A Plexus data plane alone (no registry, no sidecar shell), to try rpc_proxy changes before they are made.

    python bench/profiles/rpc_probe.py --protocol bolt --upstream 127.0.0.1:PORT --ready-file R.json \
        [--cork] [--gc] [--fast]

Serves one per-service egress port of a Bolt/Dubbo service whose one endpoint is ``--upstream``: the same
RpcDownstream → RpcUpstreamPool → RpcUpstream path the sidecar's consumer egress runs (transport/rpc_proxy.py,
as in the tree). Options patch it at run time, to measure a proposed change with bench/rpc.py's modes
``probe`` / ``probe-cork`` / ``probe-cork-gc`` before anyone edits src/:

- ``--cork``: every transport write of the RPC proxy (requests upstream, responses downstream) is appended to
  a per-connection list and flushed once per event-loop turn (``loop.call_soon``), so the N frames decoded
  from one read leave in one ``write`` instead of N. (Proposal 1 in bench/profiles/rpc-NOTES.md.)
- ``--gc``: ``gc.freeze()`` after start-up and a gen-0 threshold of 50,000 (Proposal 6).
- ``--fast`` (Bolt v1 only): the upstream connection's decoder takes a fast path for plain responses — fixed
  header only, no class name, header map or ``meta``, a slotted frame object instead of the frozen-dataclass
  ``RpcFrame`` — and request ids are re-written by slicing (``raw[:5] + id + raw[9:]``) instead of
  ``rewrite_request_id``'s check and two copies (Proposals 2, 3 and 4). Anything but v1 responses is
  refused (the bench's upstream sends none).
- ``--timers``: ``loop.call_later`` as the data plane sees it (``ctx.loop``) returns a plain cancellable
  record kept in a list that one real timer sweeps every 100 ms, instead of a TimerHandle in the loop's heap
  per request (Proposal 5; deadlines become 100 ms coarse, as a sweep per connection would make them).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import struct
from typing import Any

import uvloop

from plexus.codec import bolt
from plexus.codec.rpc import FrameKind, RpcFrame
from plexus.core.address import parse_host_port
from plexus.discovery.model import Instance
from plexus.testing.procs import write_ready_file
from plexus.transport import DataPlane, DataPlaneSettings, rpc_proxy

SERVICE = "com.acme.bench.Echo"


class CorkedTransport:
    """Collects writes made during one loop turn; one ``write`` of their join at the end of the turn."""

    __slots__ = ("_loop", "_out", "_t")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._t = transport
        self._loop = loop
        self._out: list[bytes] = []

    def write(self, data: bytes) -> None:
        out = self._out
        if not out:
            self._loop.call_soon(self._flush)
        out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if not self._t.is_closing():
            self._t.write(out[0] if len(out) == 1 else b"".join(out))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


def cork() -> None:
    for cls in (rpc_proxy.RpcUpstream, rpc_proxy.RpcDownstream):
        original = cls.connection_made

        def connection_made(self: Any, transport: asyncio.BaseTransport, _orig: Any = original) -> None:
            _orig(self, transport)
            self.transport = CorkedTransport(self.transport, asyncio.get_running_loop())

        cls.connection_made = connection_made  # type: ignore[method-assign]


class FastResponse:
    """The fields of a Bolt response that RpcUpstream reads, set in one plain ``__init__``."""

    __slots__ = ("headers", "kind", "meta", "protocol", "raw", "request_id", "status", "timeout_ms")

    def __init__(self, raw: bytes, request_id: int, status: int) -> None:
        self.protocol = "bolt"
        self.kind = FrameKind.RESPONSE
        self.request_id = request_id
        self.status = status
        self.raw = raw
        self.headers: dict[str, str] = {}
        self.meta: dict[str, int | str] = {}
        self.timeout_ms = None


_RESP = struct.Struct(">BBHBIBHHHI")  # Bolt v1 response fixed header (bolt._V1_RESPONSE)


class FastBoltUpstreamDecoder:
    """Bolt v1 responses by their fixed header alone (heartbeat replies through the real decoder)."""

    __slots__ = ("_buf", "_slow")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._slow = bolt.BoltDecoder()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out: list[Any] = []
        pos, n = 0, len(buf)
        unpack = _RESP.unpack_from
        while n - pos >= 20:
            if buf[pos] == 1 and buf[pos + 1] == 0:  # v1 response (or heartbeat reply)
                _, _, cmd, _, rid, _, status, cl, hl, ln = unpack(buf, pos)
                end = pos + 20 + cl + hl + ln
                if end > n:
                    break
                raw = bytes(buf[pos:end])
                out.append(FastResponse(raw, rid, status) if cmd == 2 else self._slow.feed(raw)[0])
                pos = end
            else:  # the bench's echo upstream sends nothing else; a real change keeps the codec's path here
                raise RuntimeError(
                    f"rpc_probe --fast: unexpected Bolt frame (proto {buf[pos]}, type {buf[pos + 1]})"
                )
        del buf[:pos]
        return out


_ID = struct.Struct(">I")


def with_request_id(self: Any, frame: RpcFrame, request_id: int) -> bytes:
    raw = frame.raw
    if raw[0] == 1:
        return raw[:5] + _ID.pack(request_id) + raw[9:]
    return bolt.rewrite_request_id(raw, request_id)


def fast() -> None:
    original = rpc_proxy.RpcUpstream.connection_made

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        if self.codec.name == "bolt":
            self.decoder = FastBoltUpstreamDecoder()
        original(self, transport)

    rpc_proxy.RpcUpstream.connection_made = connection_made  # type: ignore[method-assign]
    bolt.BoltCodec.with_request_id = with_request_id  # type: ignore[method-assign]


class LazyTimer:
    __slots__ = ("args", "cancelled", "deadline", "fn")

    def __init__(self, deadline: float, fn: Any, args: tuple[Any, ...]) -> None:
        self.deadline = deadline
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SweptLoop:
    """The running loop, but ``call_later`` is a record swept every ``SWEEP_S`` by one real timer."""

    SWEEP_S = 0.1

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timers: list[LazyTimer] = []
        loop.call_later(self.SWEEP_S, self._sweep)

    def call_later(self, delay: float, fn: Any, *args: Any) -> LazyTimer:
        timer = LazyTimer(self._loop.time() + delay, fn, args)
        self._timers.append(timer)
        return timer

    def _sweep(self) -> None:
        now = self._loop.time()
        due = [t for t in self._timers if not t.cancelled and t.deadline <= now]
        self._timers = [t for t in self._timers if not t.cancelled and t.deadline > now]
        for t in due:
            t.fn(*t.args)
        self._loop.call_later(self.SWEEP_S, self._sweep)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


async def main(args: argparse.Namespace) -> None:
    if args.fast:
        fast()  # before cork(): cork wraps whatever connection_made is then
    if args.cork:
        cork()
    plane = DataPlane(DataPlaneSettings())
    if args.timers:
        plane.ctx.loop = SweptLoop(asyncio.get_running_loop())  # type: ignore[assignment]
    plane.update_service(SERVICE, [Instance(service=SERVICE, address=args.upstream, protocol=args.protocol)])
    egress = await plane.listen_service_egress(SERVICE, "127.0.0.1", 0)
    if args.gc:
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_ready_file(args.ready_file, {"egress": str(egress)})
    await stop.wait()
    await plane.close(drain_seconds=0.5)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--protocol", choices=("bolt", "dubbo"), required=True)
    p.add_argument("--upstream", required=True, type=lambda s: str(parse_host_port(s)))
    p.add_argument("--ready-file", required=True)
    p.add_argument("--cork", action="store_true")
    p.add_argument("--gc", action="store_true")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--timers", action="store_true")
    uvloop.run(main(p.parse_args()))

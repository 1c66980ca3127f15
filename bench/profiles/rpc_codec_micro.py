"""Per-request costs of the Bolt proxy path's pieces, in-process (no sockets), current code vs the proposals.

    .venv/bin/python bench/profiles/rpc_codec_micro.py [--frames 100] [--repeat 7]

CPU time (``time.process_time``) per frame, median of ``--repeat`` interleaved runs, for: decoding a read of
``--frames`` Bolt responses (the codec's ``BoltDecoder`` vs the response fast path of ``rpc_probe.py
--fast``), decoding requests (for scale), re-writing a request id (``rewrite_request_id`` vs slicing), making
an ``RpcFrame`` (frozen dataclass) vs a plain slotted object, and a per-request ``loop.call_later`` + cancel.
Steadier than load runs on a shared machine: each item is a tight loop, run alternately with its rival.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib import rpc_load
from rpc_probe import FastBoltUpstreamDecoder, FastResponse

from plexus.codec import bolt
from plexus.codec.rpc import FrameKind, RpcFrame


def per_item(fn: Callable[[], int], loops: int) -> float:
    t0 = time.process_time()
    items = 0
    for _ in range(loops):
        items += fn()
    return (time.process_time() - t0) / items * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=100, help="frames per read (requests in flight)")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--loops", type=int, default=300)
    args = p.parse_args()
    n: int = args.frames
    responses = b"".join(
        bolt.encode_response(i + 1, bolt.BoltStatus.SUCCESS, rpc_load.BODY) for i in range(n)
    )
    requests = b"".join(bolt.rewrite_request_id(rpc_load.request_frame("bolt"), i + 1) for i in range(n))
    raw = rpc_load.request_frame("bolt")
    frame = bolt.BoltDecoder().feed(raw)[0]
    loop = uvloop.new_event_loop()

    def decode_responses() -> int:
        return len(bolt.BoltDecoder().feed(responses))

    def fast_responses() -> int:
        return len(FastBoltUpstreamDecoder().feed(responses))

    def decode_requests() -> int:
        return len(bolt.BoltDecoder().feed(requests))

    def reid_codec() -> int:
        for uid in range(1, n + 1):
            bolt.rewrite_request_id(raw, uid)
        return n

    pack = bolt._ID.pack

    def reid_slice() -> int:
        for uid in range(1, n + 1):
            raw[:5] + pack(uid) + raw[9:]
        return n

    def make_rpcframe() -> int:
        for uid in range(n):
            RpcFrame("bolt", FrameKind.RESPONSE, uid, {}, raw, 0, None, {})
        return n

    def make_plain() -> int:
        for uid in range(n):
            FastResponse(raw, uid, 0)
        return n

    def noop() -> None:
        pass

    def timer_per_request() -> int:
        handles = [loop.call_later(15.0, noop) for _ in range(n)]
        for h in handles:
            h.cancel()
        return n

    pairs = {
        "decode Bolt responses": (decode_responses, fast_responses, "BoltDecoder", "fast path (--fast)"),
        "re-id a request": (reid_codec, reid_slice, "rewrite_request_id", "slice + pack"),
        "frame object": (make_rpcframe, make_plain, "RpcFrame (frozen dataclass)", "plain __slots__ class"),
    }
    print(f"{n} frames per read; µs of CPU per frame, median of {args.repeat}")
    for title, (a, b, na, nb) in pairs.items():
        ra, rb = [], []
        for _ in range(args.repeat):
            ra.append(per_item(a, args.loops))
            rb.append(per_item(b, args.loops))
        ma, mb = statistics.median(ra), statistics.median(rb)
        print(f"  {title:24} {na:30} {ma:6.2f}   {nb:24} {mb:6.2f}   saves {ma - mb:5.2f} µs")
    for title, fn in (("decode Bolt requests", decode_requests), ("call_later+cancel", timer_per_request)):
        r = [per_item(fn, args.loops) for _ in range(args.repeat)]
        print(f"  {title:24} {'(as in the tree)':30} {statistics.median(r):6.2f}")
    assert frame.kind is FrameKind.REQUEST


if __name__ == "__main__":
    main()

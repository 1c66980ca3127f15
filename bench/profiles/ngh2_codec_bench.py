"""Plexus codec seam CPU per gRPC unary call: the nghttp2 engine vs raw ngh2 vs the h2 engine.

    taskset -c 1 .venv/bin/python bench/profiles/ngh2_codec_bench.py [--calls 20000] [--batch 1,50] \
        [--repeat 5] [--out bench/results/ngh2-codec.json]

The workload of h2_codec_bench.py (one proxied unary call's codec work in memory: the request HEADERS + one
gRPC message with END_STREAM, the response HEADERS, one message, trailers; ``--batch`` calls in flight),
driven three ways:

- ``ngh2 raw``: ngh2.Connection directly (h2_codec_bench.py's ``ngh2_pair``): libnghttp2's floor.
- ``plexus nghttp2``: Ngh2ServerCodec / Ngh2ClientCodec (codec/http2/ngh2_engine.py) as the proxy drives
  them: Plexus events, acknowledge() per DataReceived, StreamEnded, limits on.
- ``plexus h2``: Http2ServerCodec / Http2ClientCodec (codec/http2/connection.py), the same calls.

The difference between the first two is what the wrapper costs per call (event translation, bookkeeping,
rate windows). Reported: µs of CPU (process time) per call, median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ngh2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from h2_codec_bench import MESSAGE, REQUEST, RESPONSE, TRAILERS, measure, ngh2_pair

from plexus.codec.http2 import (
    DataReceived,
    Http2ClientCodec,
    Http2ServerCodec,
    StreamEnded,
    TrailersReceived,
)
from plexus.codec.http2.ngh2_engine import Ngh2ClientCodec, Ngh2ServerCodec


def plexus_pair(client_cls: type, server_cls: type) -> Callable[[], Callable[[int], int]]:
    def make() -> Callable[[int], int]:
        client: Any = client_cls()
        server: Any = server_cls()
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
        server.receive_data(client.data_to_send())

        def calls(n: int) -> int:
            done = 0
            for _ in range(n):
                sid = client.send_request(REQUEST)
                client.send_data(sid, MESSAGE, end_stream=True)
            for ev in server.receive_data(client.data_to_send()):
                if type(ev) is DataReceived:
                    server.acknowledge(ev.stream_id, ev.flow_controlled_length)
                elif type(ev) is StreamEnded:
                    sid = ev.stream_id
                    server.send_headers(sid, RESPONSE)
                    server.send_data(sid, MESSAGE)
                    server.send_trailers(sid, TRAILERS)
            for ev in client.receive_data(server.data_to_send()):
                if type(ev) is DataReceived:
                    client.acknowledge(ev.stream_id, ev.flow_controlled_length)
                elif type(ev) is TrailersReceived:
                    done += 1
            server.receive_data(client.data_to_send())  # window updates
            return done

        return calls

    return make


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--batch", default="1,50")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--skip-h2", action="store_true", help="leave out the (slow) h2 engine")
    p.add_argument("--out")
    args = p.parse_args()
    makers: dict[str, Callable[[], Callable[[int], int]]] = {
        "ngh2 raw": ngh2_pair,
        "plexus nghttp2": plexus_pair(Ngh2ClientCodec, Ngh2ServerCodec),
    }
    if not args.skip_h2:
        makers["plexus h2"] = plexus_pair(Http2ClientCodec, Http2ServerCodec)
    results: dict[str, dict[str, float]] = {}
    for batch in (int(b) for b in args.batch.split(",")):
        for name, make in makers.items():
            calls = args.calls if name != "plexus h2" else max(batch, args.calls // 10)
            runs = [measure(make, calls, batch) for _ in range(args.repeat)]
            results.setdefault(name, {})[f"batch {batch}"] = statistics.median(runs)
            print(
                f"{name:16} batch {batch:3}: {statistics.median(runs):7.2f} µs CPU per call "
                f"(runs {', '.join(f'{r:.2f}' for r in runs)})",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"results_us_per_call": results, "args": vars(args), "ngh2": ngh2.__version__}, f, indent=2
            )


if __name__ == "__main__":
    main()

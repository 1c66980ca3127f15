"""HTTP/2 codec CPU per gRPC unary call: the pure-Python ``h2`` library vs libnghttp2 (the ``ngh2`` binding).

    .venv/bin/python bench/profiles/h2_codec_bench.py [--calls 20000] [--batch 1,50] [--repeat 5]

What a proxy hop does to one unary gRPC call, in memory, no sockets: a client connection sends the request
(HEADERS + one DATA frame with END_STREAM: a gRPC length-prefixed message) and the server connection decodes
it; the server sends the response (HEADERS, DATA, trailers ``grpc-status``/``grpc-message``) and the client
decodes it. A proxy is the server of its downstream and the client of its upstream, so one iteration here is
the codec work of one proxied call (both connections' encode and decode, HPACK included, flow-control window
updates as each library does them by default). ``--batch`` calls are in flight together (encoded in one
buffer, decoded from one buffer), as with h2load's ``-m``. Reported: µs of CPU (process time) per call,
median of ``--repeat`` runs.

ngh2 (PyPI ``ngh2``) is a C extension over a vendored libnghttp2 with an h2-like sans-IO API (events as a
list, bytes out): the shape Plexus's codec seam already has. ``--with-cffi`` also times libnghttp2's HPACK
alone through cffi over the system library (/usr/lib/x86_64-linux-gnu/libnghttp2.so.14), to separate the C
codec's own cost from the binding's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import ngh2

MESSAGE = b"\x00" + struct.pack(">I", 14) + b"\x0a\x0cplexus bench"
REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/bench.Echo/Call"),
    (b":authority", b"bench"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"grpc-timeout", b"5S"),
    (b"user-agent", b"grpc-python/1.70"),
]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


def h2_pair(checks: bool = True) -> Callable[[int], int]:
    """``checks=False``: h2's header validation and normalisation off both ways (its cheapest setting)."""

    def config(client_side: bool) -> h2.config.H2Configuration:
        return h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=checks,
            normalize_outbound_headers=checks,
            validate_inbound_headers=checks,
            normalize_inbound_headers=checks,
        )

    client = h2.connection.H2Connection(config(True))
    server = h2.connection.H2Connection(config(False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())

    def calls(n: int) -> int:
        done = 0
        for _ in range(n):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, REQUEST)
            client.send_data(sid, MESSAGE, end_stream=True)
        for ev in server.receive_data(client.data_to_send()):
            if isinstance(ev, h2.events.DataReceived):
                server.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                sid = ev.stream_id
                server.send_headers(sid, RESPONSE)
                server.send_data(sid, MESSAGE)
                server.send_headers(sid, TRAILERS, end_stream=True)
        for ev in client.receive_data(server.data_to_send()):
            if isinstance(ev, h2.events.DataReceived):
                client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                done += 1
        server.receive_data(client.data_to_send())  # window updates
        return done

    return calls


def ngh2_pair() -> Callable[[int], int]:
    client = ngh2.Connection(ngh2.Role.CLIENT)
    server = ngh2.Connection(ngh2.Role.SERVER)
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    server.events()
    client.receive_data(server.data_to_send())
    client.events()
    server.receive_data(client.data_to_send())
    server.events()

    def calls(n: int) -> int:
        done = 0
        for _ in range(n):
            sid = client.send_request(REQUEST)
            client.send_data(sid, MESSAGE, end_stream=True)
        server.receive_data(client.data_to_send())
        for ev in server.events():
            if isinstance(ev, ngh2.DataReceived) and ev.end_stream:
                sid = ev.stream_id
                server.send_response(sid, RESPONSE)
                server.send_data(sid, MESSAGE)
                server.send_trailers(sid, TRAILERS)
        client.receive_data(server.data_to_send())
        for ev in client.events():
            if isinstance(ev, ngh2.TrailersReceived):
                done += 1
        server.receive_data(client.data_to_send())  # window updates (auto_window_update)
        server.events()
        return done

    return calls


def cffi_hpack() -> Callable[[int], int]:
    """libnghttp2's HPACK deflate + inflate of the request and response header blocks, via cffi (ABI mode)."""
    import cffi  # type: ignore[import-untyped]

    ffi = cffi.FFI()
    ffi.cdef("""
        typedef struct { uint8_t *name; uint8_t *value; size_t namelen; size_t valuelen; uint8_t flags; } nghttp2_nv;
        typedef struct nghttp2_hd_deflater nghttp2_hd_deflater;
        typedef struct nghttp2_hd_inflater nghttp2_hd_inflater;
        int nghttp2_hd_deflate_new(nghttp2_hd_deflater **deflater_ptr, size_t max_deflate_dynamic_table_size);
        ssize_t nghttp2_hd_deflate_hd(nghttp2_hd_deflater *deflater, uint8_t *buf, size_t buflen,
                                      const nghttp2_nv *nva, size_t nvlen);
        int nghttp2_hd_inflate_new(nghttp2_hd_inflater **inflater_ptr);
        ssize_t nghttp2_hd_inflate_hd2(nghttp2_hd_inflater *inflater, nghttp2_nv *nv_out, int *inflate_flags,
                                       const uint8_t *in, size_t inlen, int in_final);
        int nghttp2_hd_inflate_end_headers(nghttp2_hd_inflater *inflater);
    """)  # noqa: E501
    lib = ffi.dlopen("/usr/lib/x86_64-linux-gnu/libnghttp2.so.14")
    deflaters = [ffi.new("nghttp2_hd_deflater **") for _ in range(2)]
    inflaters = [ffi.new("nghttp2_hd_inflater **") for _ in range(2)]
    for d in deflaters:
        lib.nghttp2_hd_deflate_new(d, 4096)
    for i in inflaters:
        lib.nghttp2_hd_inflate_new(i)
    keep: list[object] = []

    def nva(headers: list[tuple[bytes, bytes]]) -> object:
        arr = ffi.new("nghttp2_nv[]", len(headers))
        for k, (name, value) in enumerate(headers):
            n, v = ffi.new("uint8_t[]", name), ffi.new("uint8_t[]", value)
            keep.extend((n, v))
            arr[k].name, arr[k].value, arr[k].namelen, arr[k].valuelen = n, v, len(name), len(value)
        return arr

    blocks = [(nva(REQUEST), len(REQUEST)), (nva(RESPONSE), len(RESPONSE)), (nva(TRAILERS), len(TRAILERS))]
    buf = ffi.new("uint8_t[]", 4096)
    nv_out = ffi.new("nghttp2_nv *")
    flags = ffi.new("int *")

    def one_block(side: int, arr: object, n: int) -> int:
        size = lib.nghttp2_hd_deflate_hd(deflaters[side][0], buf, 4096, arr, n)
        data = ffi.buffer(buf, size)[:]  # bytes, as they would be sent
        pos, fields = 0, 0
        inflater = inflaters[side][0]
        while True:
            used = lib.nghttp2_hd_inflate_hd2(inflater, nv_out, flags, data[pos:], len(data) - pos, 1)
            pos += used
            if flags[0] & 0x02:  # NGHTTP2_HD_INFLATE_EMIT
                _ = (ffi.buffer(nv_out.name, nv_out.namelen)[:], ffi.buffer(nv_out.value, nv_out.valuelen)[:])
                fields += 1
            if flags[0] & 0x01:  # NGHTTP2_HD_INFLATE_FINAL
                lib.nghttp2_hd_inflate_end_headers(inflater)
                break
        return fields

    def calls(n: int) -> int:
        for _ in range(n):
            one_block(0, *blocks[0])
            one_block(1, *blocks[1])
            one_block(1, *blocks[2])
        return n

    return calls


def measure(make: Callable[[], Callable[[int], int]], total: int, batch: int) -> float:
    calls = make()
    calls(batch)  # warm
    t0 = time.process_time()
    done = 0
    while done < total:
        got = calls(batch)
        if got != batch:
            raise RuntimeError(f"{got} of {batch} calls completed")
        done += got
    return (time.process_time() - t0) / done * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--batch", default="1,50")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--with-cffi", action="store_true")
    p.add_argument("--out")
    args = p.parse_args()
    makers: dict[str, Callable[[], Callable[[int], int]]] = {
        "h2": h2_pair,
        "h2 (no header checks)": lambda: h2_pair(checks=False),
        "ngh2": ngh2_pair,
    }
    if args.with_cffi:
        makers["cffi-libnghttp2 HPACK only"] = cffi_hpack
    results: dict[str, dict[str, float]] = {}
    for batch in (int(b) for b in args.batch.split(",")):
        for name, make in makers.items():
            # Fresh connections per repeat: h2 and ngh2 stream ids run out after 2**30 streams anyway.
            runs = [measure(make, args.calls, batch) for _ in range(args.repeat)]
            results.setdefault(name, {})[f"batch {batch}"] = statistics.median(runs)
            print(
                f"{name:28} batch {batch:3}: {statistics.median(runs):7.2f} µs CPU per call "
                f"(runs {', '.join(f'{r:.2f}' for r in runs)})",
                flush=True,
            )
    print("versions:", json.dumps({"h2": h2.__version__, "ngh2": ngh2.__version__}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "results_us_per_call": results,
                    "args": vars(args),
                    "versions": {"h2": h2.__version__, "ngh2": ngh2.__version__},
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()

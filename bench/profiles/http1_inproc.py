"""Two HTTP/1.1 hops in one process, over fake transports: consumer egress → provider ingress → app. The
Python side of a request through two sidecars, without system calls, for deterministic instruction counts.

    .venv/bin/python bench/profiles/http1_inproc.py [--access] [--format] [--export] [N]
        # prints CPU µs per request (best of ROUNDS rounds of N requests)
    PYTHONPATH=/tmp/plexus-skeleton/src .venv/bin/python bench/profiles/http1_inproc.py N   # another tree

Instructions per request, as bench/RESULTS.md records them: run under valgrind with N=200 and N=1200 (one
round each, after 2,000 warm-up requests) and divide the difference by 1,000:

    for n in 200 1200; do PYTHONHASHSEED=0 WARM=2000 ROUNDS=1 valgrind --tool=cachegrind --cache-sim=no \\
        --cachegrind-out-file=/dev/null .venv/bin/python bench/profiles/http1_inproc.py \\
        --access --format $n 2>&1 | grep "I *refs"; done

``--access`` turns both sidecars' access-log queues on; ``--format`` also runs the access-log writer over
them every 1,000 requests (into a null stream), as the sidecar's timer would. Without ``--access`` the
telemetry is the default (metrics, the recent rings, trace context at 1 %).

``--export`` turns both sidecars' span queues on (``Telemetry.exporting_spans``: the sampled requests queued
for an exporter) and empties them every 1,000 requests, as the exporter's hand-over would.

``--sidecar-flush`` runs the writer when the queue asks for it (``Telemetry.access_log_full``: every 256
requests, when the journal is counted), as a busy sidecar does, instead of every 1,000; ``--log-dir DIR``
writes the lines into files there (consumer.log, provider.log) instead of a null stream. With both, the CPU
time per request of plexus2o's telemetry against bench/lib/ablation.py's cut (``PYTHONPATH=<its
sitecustomize dir>:src``) gives about the share the real sidecars keep (bench/RESULTS.md, the section of
2026-11-26 20:20), where the instruction counts give a higher one: the file's writes are the kernel's, and the
telemetry's instructions cost more time than the path's (memory, not instructions).
"""

from __future__ import annotations

import gc
import io
import os
import sys
import time
from typing import Any

import uvloop
from fake_transport import FakeTransport  # (this folder: sys.path[0] when run as a script)

from plexus.core.address import HostPort
from plexus.discovery.model import Instance
from plexus.transport import DataPlane, DataPlaneSettings
from plexus.transport.http_downstream import HttpDownstream
from plexus.transport.upstream import UpstreamConnection

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
    b"Connection: keep-alive\r\n\r\nhello, bench\n"
)
FLUSH_EVERY = 1000  # requests between two writer runs (the sidecar's 0.1 s at 10,000 requests a second)


class NullStream(io.RawIOBase):
    def write(self, data: Any) -> int:
        return len(data)


def main(argv: list[str]) -> None:
    access, formatted = "--access" in argv, "--format" in argv
    sidecar_flush = "--sidecar-flush" in argv
    export = "--export" in argv
    log_dir = argv[argv.index("--log-dir") + 1] if "--log-dir" in argv else None
    count = int(argv[-1]) if argv and argv[-1].isdigit() else 30_000
    loop = uvloop.new_event_loop()
    consumer = DataPlane(DataPlaneSettings(workload="consumer"))
    provider = DataPlane(DataPlaneSettings(workload="provider"))
    consumer.ctx.loop = provider.ctx.loop = loop
    telemetries = (
        [plane.stats.telemetry for plane in (consumer, provider)]
        if hasattr(consumer.stats, "telemetry")
        else []
    )
    if access:
        for telemetry in telemetries:
            telemetry.access_log = []
    if export:  # (the span exporter's queue on; its hand-over every FLUSH_EVERY requests empties it)
        for telemetry in telemetries:
            telemetry.exporting_spans = True
    spans = [0]
    writers: list[Any] = []
    if formatted and telemetries:
        from plexus.sidecar.access_log import AccessLogWriter

        writers = [
            AccessLogWriter(
                t,
                name,
                open(os.path.join(log_dir, f"{name}.log"), "ab") if log_dir else NullStream(),  # noqa: SIM115
                owned=log_dir is not None,
            )
            for t, name in zip(telemetries, ("consumer", "provider"), strict=True)
        ]
    asked: list[Any] = []  # --sidecar-flush: the writers whose queue asked for a run (access_log_full)
    if sidecar_flush:
        for writer in writers:
            writer.telemetry.access_log_full = lambda writer=writer: asked.append(writer)
    consumer.update_service("bench", [Instance(service="bench", address="127.0.0.1:1", workload="provider")])
    provider.set_local_service("bench", "http", HostPort("127.0.0.1", 2))
    consumer_route, provider_route = consumer.egress_route("bench"), provider.ingress_route("bench")
    client_side = HttpDownstream(consumer.ctx, consumer._shared_router, "egress")
    client_t = FakeTransport()
    client_side.connection_made(client_t)  # type: ignore[arg-type]
    ingress = HttpDownstream(provider.ctx, provider._ingress_router, "ingress")
    ingress_t = FakeTransport()
    ingress.connection_made(ingress_t)  # type: ignore[arg-type]
    to_provider = UpstreamConnection(consumer.ctx.pool, consumer_route.cluster.endpoints[0])
    to_provider_t = FakeTransport()
    to_provider.connection_made(to_provider_t)  # type: ignore[arg-type]
    consumer_route.cluster.endpoints[0].idle.append(to_provider)
    to_app = UpstreamConnection(provider.ctx.pool, provider_route.local)
    to_app_t = FakeTransport()
    to_app.connection_made(to_app_t)  # type: ignore[arg-type]
    provider_route.local.idle.append(to_app)
    served = [0]

    def one() -> None:
        client_side.data_received(REQUEST)
        ingress.data_received(to_provider_t.take())
        to_app_t.take()
        to_app.data_received(RESPONSE)
        to_provider.data_received(ingress_t.take())
        answer = client_t.take()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        served[0] += 1
        if asked:  # (the sidecar's writer runs them from call_soon: after this request's events)
            for writer in asked:
                writer.flush()
            asked.clear()
        elif access and not sidecar_flush and served[0] % FLUSH_EVERY == 0:
            for writer in writers:
                writer.flush()
            for telemetry in telemetries:
                telemetry.access_log = []
        if export and served[0] % FLUSH_EVERY == 0:
            for telemetry in telemetries:
                spans[0] += len(telemetry.spans)
                telemetry.spans = []

    for _ in range(int(os.environ.get("WARM", "3000"))):
        one()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)  # the sidecar's (plexus.sidecar.app)
    best = float("inf")
    for _ in range(int(os.environ.get("ROUNDS", "5"))):
        started = time.process_time()
        for _ in range(count):
            one()
        best = min(best, (time.process_time() - started) / count * 1e6)
    for writer in writers:
        writer.close()
    print(f"{best:.2f} µs per request (both hops, Python side)")
    if export:
        print(f"{spans[0]} spans of {served[0]} requests")


if __name__ == "__main__":
    main(sys.argv[1:])

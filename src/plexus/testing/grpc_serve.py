"""Test apps' grpcio server loop: generic (bytes) handlers for one service on a loopback port, the address
in a ready file, served until SIGTERM or SIGINT, then stopped with a short grace."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import grpc

from plexus.testing.procs import write_ready_file


def serve_until_signal(
    service: str, handlers: Mapping[str, grpc.RpcMethodHandler], ready_file: str, workers: int = 64
) -> None:
    """Serve ``handlers`` (method name -> handler) as ``service`` until SIGTERM/SIGINT. ``so_reuseport`` is
    off so no other process on the machine can share the port."""
    server = grpc.server(ThreadPoolExecutor(max_workers=workers), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, dict(handlers)),))
    port = server.add_insecure_port("127.0.0.1:0")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    write_ready_file(ready_file, {"pid": os.getpid(), "listen": f"127.0.0.1:{port}"})
    while not stop.wait(0.2):
        pass
    server.stop(0.5).wait()

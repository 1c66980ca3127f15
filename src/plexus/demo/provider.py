"""A sample provider app written with the SDK: ``python -m plexus.demo.provider --service echo --name p1``.

It serves HTTP on 127.0.0.1 (port 0), publishes itself through ``plexus.sdk`` (mesh or direct mode), and
answers every request with JSON saying who it is, so a caller can tell which path a call took:
``{"provider": "p1", "mode": "direct", "service": "echo", "request_id": "c1-17"}``.
With ``--grpc-service NAME`` it also serves that service over gRPC (``plexus.demo.grpc_echo``), and with
``--bolt-service NAME`` over SOFA Bolt (``plexus.demo.bolt_echo``), each on its own port, published with its
protocol; both answer the same JSON for a request whose content is the request id.

On SIGTERM or SIGINT it unpublishes first, keeps serving for ``--grace`` seconds, then stops. With
``--ledger`` it appends each received request id to that file (one per line), for tests that count duplicates.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import IO, Any

from plexus import sdk
from plexus.core.ready_file import write_ready_file

REQUEST_ID_HEADER = "x-request-id"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real service
    # Buffer the response and send it in one write when the handler returns: headers and body in two small
    # writes meet Nagle's algorithm and the peer's delayed ACK, which adds 40 ms to every call.
    wbufsize = -1
    server: _ProviderServer

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self._answer()

    def _answer(self) -> None:
        server = self.server
        request_id = self.headers.get(REQUEST_ID_HEADER, "")
        server.record(request_id)
        body = json.dumps({
            "provider": server.name, "mode": server.mode, "service": server.service,
            "request_id": request_id, "path": self.path,
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-plexus-provider", server.name)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the demo's output


class _ProviderServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, service: str, ledger: IO[str] | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.service = service
        self.mode = "?"
        self._ledger = ledger
        self._ledger_lock = threading.Lock()

    def record(self, request_id: str) -> None:
        if self._ledger is not None and request_id:
            with self._ledger_lock:
                self._ledger.write(request_id + "\n")  # line-buffered: survives a SIGKILL

    def rpc_answer(self, service: str) -> Callable[[bytes], bytes]:
        """The answer of the gRPC and Bolt services: the request's content is the request id."""
        def answer(request: bytes) -> bytes:
            request_id = request.decode("utf-8", "replace")
            self.record(request_id)
            return json.dumps({"provider": self.name, "mode": self.mode, "service": service,
                               "request_id": request_id}).encode()

        return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plexus.demo.provider", description=__doc__)
    parser.add_argument("--service", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--mode", choices=["auto", "mesh", "direct"], default="auto")
    parser.add_argument("--sidecar-api", default=None, help="the sidecar's local API (mesh mode)")
    parser.add_argument("--registry", default=None, help="the registry (direct mode)")
    parser.add_argument("--version", default="v1")
    parser.add_argument("--grace", type=float, default=sdk.DEFAULT_UNPUBLISH_GRACE)
    parser.add_argument("--ledger", default=None)
    parser.add_argument("--grpc-service", default=None, help="also serve this service over gRPC")
    parser.add_argument("--bolt-service", default=None, help="also serve this service over SOFA Bolt")
    parser.add_argument("--ready-file", default=None)
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    ledger = open(args.ledger, "a", buffering=1) if args.ledger else None  # noqa: SIM115 - closed below
    server = _ProviderServer(args.name, args.service, ledger)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    serving.start()
    port = int(server.server_address[1])
    rpc_servers: list[tuple[str, str, Any]] = []  # (service, protocol, server)
    if args.grpc_service:
        from plexus.demo.grpc_echo import GrpcProvider

        rpc_servers.append((args.grpc_service, "grpc", GrpcProvider(server.rpc_answer(args.grpc_service))))
    if args.bolt_service:
        from plexus.demo.bolt_echo import BoltProvider

        rpc_servers.append((args.bolt_service, "bolt", BoltProvider(server.rpc_answer(args.bolt_service))))
    client = sdk.connect(None if args.mode == "auto" else args.mode,
                         sidecar_api=args.sidecar_api, registry=args.registry)
    server.mode = client.mode
    try:
        metadata = {"name": args.name}
        client.publish(args.service, port, version=args.version, metadata=metadata)
        for service, protocol, rpc_server in rpc_servers:
            client.publish(service, rpc_server.port, protocol=protocol, version=args.version,
                           metadata=metadata)
        if args.ready_file:
            write_ready_file(args.ready_file, {
                "listen": f"127.0.0.1:{port}", "mode": client.mode, "name": args.name,
                **{protocol: f"127.0.0.1:{rpc_server.port}" for _, protocol, rpc_server in rpc_servers},
            })
        stop.wait()
    finally:
        client.close(grace=args.grace)  # unpublish, keep serving through the grace, then stop
        server.shutdown()
        server.server_close()
        for _, _, rpc_server in rpc_servers:
            rpc_server.close()
        if ledger is not None:
            ledger.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Small gRPC apps for the SDK tests: grpcio servers on real sockets (port 0), generic handlers, bytes in/out.

Every app answers ``/plexus.test.Echo/Call`` with JSON naming itself, the request it got and the
``:authority`` the call carried, and records every request it received (for ledgers).
"""

from __future__ import annotations

import json
import threading
from concurrent import futures
from typing import Any, Final

import grpc

METHOD: Final = "/plexus.test.Echo/Call"


def authority_of(context: grpc.ServicerContext) -> str:
    # grpcio keeps the call's :authority only on its private call details; the tests need it to check routing.
    host = context._rpc_event.call_details.host
    return host.decode() if isinstance(host, bytes) else str(host)


class GrpcApp:
    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[str] = []
        self.authorities: list[str] = []
        self._lock = threading.Lock()
        app = self

        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            text = request.decode()
            with app._lock:
                app.received.append(text)
                app.authorities.append(authority_of(context))
            return json.dumps({"app": app.name, "request": text}).encode()

        class Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: Any) -> Any:
                if details.method == METHOD:
                    return grpc.unary_unary_rpc_method_handler(call)
                return None

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((Handler(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(0)


def call(channel: grpc.Channel, request: str, timeout: float = 5.0) -> dict[str, Any]:
    answer = channel.unary_unary(METHOD)(request.encode(), timeout=timeout)
    value = json.loads(answer)
    assert isinstance(value, dict)
    return value

"""The demo's gRPC service, with grpcio's generic handlers: bytes in, bytes out, no generated code.

``/plexus.demo.Echo/Call`` takes a request id (UTF-8) and answers the provider's JSON, as the HTTP service
does. Imported only by apps that serve or call gRPC (grpcio is heavy).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any, Final

import grpc

METHOD: Final = "/plexus.demo.Echo/Call"
WORKERS: Final = 4  # the demo calls at a few dozen a second; a few threads answer it with room to spare


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no type stubs
    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self._method = grpc.unary_unary_rpc_method_handler(lambda request, context: answer(request))

    def service(self, handler_call_details: Any) -> Any:
        return self._method if handler_call_details.method == METHOD else None


class GrpcProvider:
    """A grpcio server on ``host``:0 answering ``METHOD`` with ``answer(request)``; ``port`` is its port."""

    def __init__(self, answer: Callable[[bytes], bytes], host: str = "127.0.0.1") -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS))
        self._server.add_generic_rpc_handlers((_Handler(answer),))
        self.port = int(self._server.add_insecure_port(f"{host}:0"))
        self._server.start()

    def close(self) -> None:
        self._server.stop(grace=None)


def caller(channel: grpc.Channel) -> Callable[[bytes, float], bytes]:
    """The demo's call on ``channel``: ``call(request, timeout) -> answer``; raises ``grpc.RpcError``."""
    method = channel.unary_unary(METHOD)

    def call(request: bytes, timeout: float) -> bytes:
        answer = method(request, timeout=timeout)
        assert isinstance(answer, bytes)
        return answer

    return call

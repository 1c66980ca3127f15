"""The control plane's admin calls for the CLI (grpcio, blocking): apply, get, delete, proxy status.

Each call opens one channel, makes one unary call with a deadline and closes it: a CLI command makes one or
two calls and exits. An unreachable control plane raises ``ControlUnavailable`` naming the address, so the
command can say what to check; any other gRPC failure raises ``ControlCallError`` with the server's details.
"""

from __future__ import annotations

from typing import Final, TypeVar

import grpc

from plexus.core.address import parse_host_port
from plexus.core.errors import PlexusError
from plexus.proto import control_pb2 as pb
from plexus.proto import control_pb2_grpc as pb_grpc

DEFAULT_CONTROL: Final = "127.0.0.1:15400"
CONTROL_ENV: Final = "PLEXUS_CONTROL"
CALL_TIMEOUT: Final = 10.0  # an apply compiles and stores; a control plane slower than this is in trouble

R = TypeVar("R")


class ControlCallError(PlexusError):
    """The control plane answered with an error (``code`` is the gRPC status name)."""

    def __init__(self, address: str, method: str, code: str, details: str) -> None:
        super().__init__(f"control plane {address}: {method} failed: {code}: {details}")
        self.code = code
        self.details = details


class ControlUnavailable(ControlCallError):
    """Nothing answered at the address (not running, wrong address, or not a control plane)."""

    def __init__(self, address: str, method: str, details: str) -> None:
        PlexusError.__init__(
            self,
            f"cannot reach the control plane at {address} ({details}); is `plexus control` running there? "
            f"(--control HOST:PORT or {CONTROL_ENV})",
        )
        self.code = "UNAVAILABLE"
        self.details = details


class ControlClient:
    def __init__(self, address: str = DEFAULT_CONTROL, timeout: float = CALL_TIMEOUT) -> None:
        parse_host_port(address, "control")  # a malformed address is a ValidationError now, not a hang
        self.address = address
        self.timeout = timeout

    def apply(self, text: str, file_name: str, dry_run: bool = False) -> pb.ApplyResponse:
        request = pb.ApplyRequest(file_name=file_name, text=text, dry_run=dry_run)
        return self._call("Apply", request, pb.ApplyResponse)

    def get(self, kind: str = "", name: str = "", namespace: str = "") -> pb.GetResponse:
        return self._call("Get", pb.GetRequest(kind=kind, name=name, namespace=namespace), pb.GetResponse)

    def delete(self, kind: str, name: str, namespace: str = "") -> pb.DeleteResponse:
        request = pb.DeleteRequest(ref=pb.ResourceRef(kind=kind, name=name, namespace=namespace))
        return self._call("Delete", request, pb.DeleteResponse)

    def proxy_status(self) -> pb.ProxyStatusResponse:
        return self._call("ProxyStatus", pb.ProxyStatusRequest(), pb.ProxyStatusResponse)

    def _call(self, method: str, request: object, response_type: type[R]) -> R:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.ControlStub(channel)  # type: ignore[no-untyped-call]
            try:
                response = getattr(stub, method)(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                details = str(exc.details()) if isinstance(exc, grpc.Call) else str(exc)
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
                    raise ControlUnavailable(self.address, method, details) from None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise ControlUnavailable(
                        self.address, method, f"no answer within {self.timeout:g}s"
                    ) from None
                name = code.name if code is not None else "UNKNOWN"
                raise ControlCallError(self.address, method, name, details) from None
        assert isinstance(response, response_type)
        return response

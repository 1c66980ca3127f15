"""The control plane's admin calls for the CLI (grpcio, blocking): apply, get, delete, proxy status, and the
observability calls stat, tap, explain and info.

Each unary call opens one channel, makes one call with a deadline and closes it: a CLI command makes one or
two calls and exits. ``tap`` returns a ``TapStream`` that owns its channel until closed. An unreachable
control plane raises ``ControlUnavailable`` naming the address, so the command can say what to check; any
other gRPC failure raises ``ControlCallError`` with the server's details.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any, Final, TypeVar

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

    def info(self) -> pb.InfoResponse:
        return self._call("Info", pb.InfoRequest(), pb.InfoResponse)

    def stat(self, service: str = "", window_seconds: float = 0.0) -> pb.StatResponse:
        """Rates over ``window_seconds`` (0: the control plane's default); ``service`` "" means every one."""
        request = pb.StatRequest(service=service, window_seconds=window_seconds)
        return self._call("Stat", request, pb.StatResponse)

    def explain(self, request_id: str, wait_seconds: float = 0.0) -> pb.ExplainResponse:
        """Every hop the sidecars remember of ``request_id``; they get ``wait_seconds`` (0: 1 s) to answer."""
        request = pb.ExplainRequest(request_id=request_id, wait_seconds=wait_seconds)
        # the control plane waits for the sidecars first: our deadline covers that wait and the usual margin
        return self._call("Explain", request, pb.ExplainResponse, self.timeout + max(wait_seconds, 1.0))

    def tap(self, service: str = "", count: int = 0, duration: float | None = None) -> TapStream:
        """Open a tap: iterate the result for ``RequestLine``s; close it (or leave its ``with``) to stop.

        ``count``: the control plane ends the stream after this many lines (0: never). ``duration``: the
        stream ends quietly after this many seconds (None: only when cancelled, ended or failed).
        """
        return TapStream(self.address, pb.TapRequest(service=service, count=count), duration)

    def _call(self, method: str, request: object, response_type: type[R], timeout: float | None = None) -> R:
        deadline = self.timeout if timeout is None else timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.ControlStub(channel)  # type: ignore[no-untyped-call]
            try:
                response = getattr(stub, method)(request, timeout=deadline)
            except grpc.RpcError as exc:
                if _code(exc) == grpc.StatusCode.DEADLINE_EXCEEDED:
                    late = f"no answer within {deadline:g}s"
                    raise ControlUnavailable(self.address, method, late) from None
                raise _error(self.address, method, exc) from None
        assert isinstance(response, response_type)
        return response


class TapStream:
    """One open ``Tap`` call: an iterator of ``RequestLine``s that owns its channel; ``close()`` cancels it.

    The iteration ends when the control plane ends the stream (its ``count`` reached), when ``duration``
    passes, or after ``close()``; an unreachable control plane raises ``ControlUnavailable`` on the first
    ``next``. Iterating is interruptible (grpc waits in short slices), so Ctrl-C reaches the caller.
    """

    def __init__(self, address: str, request: pb.TapRequest, duration: float | None) -> None:
        self.address = address
        self._channel = grpc.insecure_channel(address)
        stub = pb_grpc.ControlStub(self._channel)  # type: ignore[no-untyped-call]
        self._call: Any = stub.Tap(request, timeout=duration)
        self._closed = False

    def __iter__(self) -> Iterator[pb.RequestLine]:
        try:
            for line in self._call:
                assert isinstance(line, pb.RequestLine)
                yield line
        except grpc.RpcError as exc:
            code = _code(exc)
            stopped = code == grpc.StatusCode.CANCELLED and self._closed
            if code == grpc.StatusCode.DEADLINE_EXCEEDED or stopped:
                return  # the duration passed, or we stopped it: the normal ends of a tap
            raise _error(self.address, "Tap", exc) from None

    def close(self) -> None:
        """Cancel the call (the control plane stops the sidecars' taps) and close the channel."""
        if not self._closed:
            self._closed = True
            self._call.cancel()
            self._channel.close()

    def __enter__(self) -> TapStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.Call) else None


def _error(address: str, method: str, exc: grpc.RpcError) -> ControlCallError:
    """The typed error for a failed call: unreachable (or not a control plane that serves it), or refused."""
    code = _code(exc)
    details = str(exc.details()) if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ControlUnavailable(address, method, details)
    if code == grpc.StatusCode.UNIMPLEMENTED:  # something else listens there, or an older control plane
        return ControlUnavailable(address, method, f"it does not serve Control/{method}: {details}")
    name = code.name if code is not None else "UNKNOWN"
    return ControlCallError(address, method, name, details)

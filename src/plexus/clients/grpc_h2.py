"""A minimal gRPC client transport on asyncio and the pure-Python ``h2`` library (no grpcio, no threads).

Why: grpcio costs a long-lived process ~8 MB of RSS to import and ~4 MB and ~9 threads to run a channel; the
sidecar only needs two streaming calls to the registry. Scope, on purpose: plaintext HTTP/2 with prior
knowledge (h2c), streaming calls with identity encoding, one connection per ``Channel`` (no reconnect here:
the caller opens a new channel), PING keepalive.

A call delivers each response message to its ``on_message`` callback on the loop as soon as it is complete
(messages are reassembled across DATA frames); its ``done`` future resolves to the final ``GrpcStatus``:
trailers, RST_STREAM, GOAWAY, a dead keepalive or a lost connection all end every call with a status.
Received data is acknowledged at once (messages are consumed as they complete, so the only buffer is one
partial message, bounded by ``max_message``); sent data waits for the peer's flow-control window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from plexus.core.errors import PlexusError

log = logging.getLogger("plexus.clients.grpc_h2")

# grpc status codes (grpc/doc/statuscodes.md) that this client produces itself
OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
DEADLINE_EXCEEDED: Final = 4
RESOURCE_EXHAUSTED: Final = 8
INTERNAL: Final = 13
UNAVAILABLE: Final = 14

MAX_MESSAGE: Final = 16 * 1024 * 1024  # grpc's own default is 4 MiB; a registry set of ~100k instances fits
KEEPALIVE: Final = 10.0  # the registry permits a ping every 5 s (plexus.registry.server)
KEEPALIVE_TIMEOUT: Final = 5.0  # no PING ACK in this long: the peer is gone without a FIN (host down)
CONNECT_TIMEOUT: Final = 5.0
_PREFIX: Final = 5  # compressed flag (1 byte) + big-endian length (4 bytes)


@dataclass(frozen=True, slots=True)
class GrpcStatus:
    code: int
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code == OK

    def __str__(self) -> str:
        return f"grpc status {self.code}" + (f": {self.message}" if self.message else "")


class GrpcError(PlexusError):
    """A call or connection failed: ``status`` says how (``UNAVAILABLE`` for connection-level failures)."""

    def __init__(self, status: GrpcStatus, where: str) -> None:
        super().__init__(f"{where}: {status}")
        self.status = status


def frame_message(payload: bytes) -> bytes:
    """One length-prefixed gRPC message, uncompressed."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class Call:
    """One bidirectional streaming call on a ``Channel``; create it with ``Channel.open``."""

    def __init__(
        self, channel: Channel, stream_id: int, path: str, on_message: Callable[[bytes], None]
    ) -> None:
        self._channel = channel
        self.stream_id = stream_id
        self.path = path
        self._on_message = on_message
        loop = asyncio.get_running_loop()
        self.headers: asyncio.Future[None] = loop.create_future()  # the response headers arrived
        self.done: asyncio.Future[GrpcStatus] = loop.create_future()
        self._inbox = bytearray()  # at most one partial message (plus the rest of the frame that ended one)
        self._outbox = bytearray()  # framed messages the peer's window does not admit yet
        self._end_pending = False
        self._status: GrpcStatus | None = None  # from trailers (or a trailers-only response)

    @property
    def finished(self) -> bool:
        return self.done.done()

    def send(self, payload: bytes) -> None:
        """Queue one message; it is written as far as the peer's flow-control window allows."""
        if self.finished or self._end_pending:
            return
        self._outbox += frame_message(payload)
        self._channel._flush_stream(self)

    def close_send(self) -> None:
        """Half-close: no more messages from this side (END_STREAM after the queued ones)."""
        if not self.finished and not self._end_pending:
            self._end_pending = True
            self._channel._flush_stream(self)

    def cancel(self) -> None:
        """RST_STREAM(CANCEL) and end the call with CANCELLED."""
        if not self.finished:
            self._channel._reset(self, h2.errors.ErrorCodes.CANCEL)
            self._finish(GrpcStatus(CANCELLED, "cancelled by the client"))

    # ------------------------------------------------------------------ fed by the channel
    def _headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        fields = dict(headers)
        status = fields.get(b":status", b"")
        if status != b"200":
            self._fail_and_reset(GrpcStatus(_http_to_grpc(status), f"HTTP status {status.decode('latin-1')}"))
            return
        if b"grpc-status" in fields:  # trailers-only response: the call ends without messages
            self._status = _status_of(fields)
        if not self.headers.done():
            self.headers.set_result(None)

    def _trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._status = _status_of(dict(headers))

    def _data(self, data: bytes) -> None:
        inbox = self._inbox
        inbox += data
        while len(inbox) >= _PREFIX:
            if inbox[0] != 0:
                self._fail_and_reset(
                    GrpcStatus(INTERNAL, "compressed message, but no compression was offered")
                )
                return
            length = int.from_bytes(inbox[1:_PREFIX], "big")
            if length > self._channel.max_message:
                self._fail_and_reset(
                    GrpcStatus(RESOURCE_EXHAUSTED, f"message of {length} bytes > {self._channel.max_message}")
                )
                return
            if len(inbox) < _PREFIX + length:
                return
            message = bytes(inbox[_PREFIX : _PREFIX + length])
            del inbox[: _PREFIX + length]
            try:
                self._on_message(message)
            except Exception as exc:  # an undecodable message ends the call, not the connection
                log.exception("%s: message handler failed", self.path)
                self._fail_and_reset(GrpcStatus(INTERNAL, f"message handler failed: {exc!r}"))
                return

    def _ended(self) -> None:
        if self._inbox:
            self._finish(
                GrpcStatus(INTERNAL, f"stream ended inside a message ({len(self._inbox)} bytes left)")
            )
        else:
            self._finish(self._status or GrpcStatus(INTERNAL, "stream ended without grpc-status"))

    def _fail_and_reset(self, status: GrpcStatus) -> None:
        self._channel._reset(self, h2.errors.ErrorCodes.CANCEL)
        self._finish(status)

    def _finish(self, status: GrpcStatus) -> None:
        self._channel._calls.pop(self.stream_id, None)
        self._outbox.clear()
        self._inbox.clear()
        if not self.headers.done():
            self.headers.set_exception(GrpcError(status, self.path))
            self.headers.exception()  # retrieved: nobody has to await it
        if not self.done.done():
            self.done.set_result(status)


class Channel(asyncio.Protocol):
    """One HTTP/2 connection to a gRPC server; ``await Channel.connect(...)`` makes one."""

    def __init__(
        self,
        authority: str,
        *,
        keepalive: float = KEEPALIVE,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self.authority = authority
        self.max_message = max_message
        self._keepalive = keepalive
        self._keepalive_timeout = keepalive_timeout
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self._transport: asyncio.Transport | None = None
        self._calls: dict[int, Call] = {}
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[GrpcStatus] = self._loop.create_future()  # why the connection ended
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = CONNECT_TIMEOUT,
        keepalive: float = KEEPALIVE,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        max_message: int = MAX_MESSAGE,
    ) -> Channel:
        """Open the TCP connection and send the HTTP/2 preface; raises OSError or TimeoutError."""
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        channel = cls(
            authority, keepalive=keepalive, keepalive_timeout=keepalive_timeout, max_message=max_message
        )
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_connection(lambda: channel, host, port), timeout)
        return channel

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self.closed.done()

    def open(self, path: str, on_message: Callable[[bytes], None]) -> Call:
        """Start a streaming call to ``path`` (``/package.Service/Method``); raises GrpcError when closed."""
        if not self.is_open:
            raise GrpcError(self._closed_status(), path)
        stream_id = self._h2.get_next_available_stream_id()
        call = Call(self, stream_id, path, on_message)
        self._calls[stream_id] = call
        self._h2.send_headers(
            stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path.encode()),
                (b":authority", self.authority.encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"user-agent", b"plexus-grpc-h2"),
            ],
        )
        self._write()
        return call

    def close(self, status: GrpcStatus | None = None) -> None:
        """End every call and close the connection (GOAWAY first when it is still up)."""
        status = status or GrpcStatus(UNAVAILABLE, "channel closed by the client")
        if self._transport is not None and not self._transport.is_closing():
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection()
                self._write()
            self._transport.close()
        self._shut(status)

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self._h2.initiate_connection()
        self._write()
        self._arm_ping()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            if self._h2.state_machine.state is h2.connection.ConnectionState.CLOSED:
                # h2 closes on the server's GOAWAY and refuses any frame after it in the same read; the
                # GOAWAY's own event is lost with that error. The server did nothing wrong: say GOAWAY.
                self._abort(GrpcStatus(UNAVAILABLE, "GOAWAY from the server (followed by more frames)"))
            else:
                self._abort(GrpcStatus(UNAVAILABLE, f"HTTP/2 protocol error from the server: {exc}"))
            return
        for event in events:
            self._handle(event)
        self._write()

    def connection_lost(self, exc: Exception | None) -> None:
        self._shut(
            GrpcStatus(UNAVAILABLE, f"connection lost: {exc}" if exc else "connection closed by the server")
        )

    # ------------------------------------------------------------------ HTTP/2 events
    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None and event.flow_controlled_length is not None
            # acknowledged at once: a complete message is handed on immediately, so nothing piles up here
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            call = self._calls.get(event.stream_id)
            if call is not None and event.data:
                call._data(event.data)
        elif isinstance(event, h2.events.ResponseReceived):
            call = self._calls.get(event.stream_id or 0)
            if call is not None:
                call._headers(list(event.headers or ()))
        elif isinstance(event, h2.events.TrailersReceived):
            call = self._calls.get(event.stream_id or 0)
            if call is not None:
                call._trailers(list(event.headers or ()))
        elif isinstance(event, h2.events.StreamEnded):
            call = self._calls.get(event.stream_id or 0)
            if call is not None:
                call._ended()
        elif isinstance(event, h2.events.StreamReset):
            call = self._calls.get(event.stream_id or 0)
            if call is not None:
                code = event.error_code
                call._finish(
                    GrpcStatus(
                        CANCELLED if code == h2.errors.ErrorCodes.CANCEL else UNAVAILABLE,
                        f"stream reset by the server ({code!r})",
                    )
                )
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                call = self._calls.get(event.stream_id)
                if call is not None:
                    self._flush_stream(call)
            else:
                self._flush_all()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._flush_all()  # a larger initial window or frame size may admit queued data
        elif isinstance(event, h2.events.PingAckReceived):
            if self._ping_deadline is not None:
                self._ping_deadline.cancel()
                self._ping_deadline = None
            self._arm_ping()
        elif isinstance(event, h2.events.ConnectionTerminated):
            detail = event.additional_data.decode("utf-8", "replace") if event.additional_data else ""
            self._abort(
                GrpcStatus(UNAVAILABLE, f"GOAWAY from the server ({event.error_code!r}) {detail}".strip())
            )

    # ------------------------------------------------------------------ sending
    def _flush_stream(self, call: Call) -> None:
        if not self.is_open or call.finished:
            return
        outbox = call._outbox
        sid = call.stream_id
        try:
            while outbox:
                size = min(
                    len(outbox), self._h2.local_flow_control_window(sid), self._h2.max_outbound_frame_size
                )
                if size <= 0:
                    break  # WindowUpdated resumes
                self._h2.send_data(sid, bytes(outbox[:size]))
                del outbox[:size]
            if call._end_pending and not outbox:
                call._end_pending = False
                self._h2.end_stream(sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            call._finish(GrpcStatus(UNAVAILABLE, f"cannot send on stream {sid}: {exc!r}"))
        self._write()

    def _flush_all(self) -> None:
        for call in list(self._calls.values()):
            if call._outbox or call._end_pending:
                self._flush_stream(call)

    def _reset(self, call: Call, code: h2.errors.ErrorCodes) -> None:
        if self.is_open:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self._h2.reset_stream(call.stream_id, code)
                self._write()

    def _write(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # ------------------------------------------------------------------ keepalive
    def _arm_ping(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        if self._keepalive > 0 and not self.closed.done():
            self._ping_timer = self._loop.call_later(self._keepalive, self._send_ping)

    def _send_ping(self) -> None:
        self._ping_timer = None
        if not self.is_open:
            return
        self._h2.ping(os.urandom(8))
        self._write()
        self._ping_deadline = self._loop.call_later(self._keepalive_timeout, self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        self._ping_deadline = None
        self._abort(GrpcStatus(UNAVAILABLE, f"no PING answer within {self._keepalive_timeout:g}s"))

    # ------------------------------------------------------------------ ending
    def _abort(self, status: GrpcStatus) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._shut(status)

    def _shut(self, status: GrpcStatus) -> None:
        for timer in (self._ping_timer, self._ping_deadline):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._ping_deadline = None
        for call in list(self._calls.values()):
            call._finish(status)
        if not self.closed.done():
            self.closed.set_result(status)

    def _closed_status(self) -> GrpcStatus:
        return self.closed.result() if self.closed.done() else GrpcStatus(UNAVAILABLE, "not connected")


def _status_of(fields: dict[bytes, bytes]) -> GrpcStatus:
    raw = fields.get(b"grpc-status")
    if raw is None or not raw.isdigit():
        return GrpcStatus(INTERNAL, f"trailers without a valid grpc-status ({raw!r})")
    message = unquote(fields.get(b"grpc-message", b"").decode("utf-8", "replace"))  # percent-encoded
    return GrpcStatus(int(raw), message)


def _http_to_grpc(status: bytes) -> int:
    """HTTP status to grpc code, as grpc's own clients map a non-200 answer."""
    return {
        b"400": INTERNAL,
        b"401": 16,
        b"403": 7,
        b"404": 12,
        b"429": UNAVAILABLE,
        b"502": UNAVAILABLE,
        b"503": UNAVAILABLE,
        b"504": UNAVAILABLE,
    }.get(status, UNKNOWN)

"""A grpc server that shuts down answers the calls it accepted but never handed to a handler with a
trailers-only CANCELLED, and now and then writes that answer just before its GOAWAY. The sidecar holds such
an answer briefly: with the GOAWAY following, the call was not processed and is retried on another
instance; without one, it is the app's own answer and reaches the caller unchanged."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from transport.h2_peers import H2Mesh, channel, path
from transport.test_h2_proxy import engine  # noqa: F401 - every test here runs over both HTTP/2 engines
from transport.upstreams import LoopThread

CALL_TIMEOUT = 5.0


class CancellingServer:
    """An h2c server answering every stream with a trailers-only CANCELLED; with ``goaway_after`` it then
    sends GOAWAY (last stream id: the cancelled one, as grpc core does) that many seconds later and closes."""

    def __init__(self, goaway_after: float | None) -> None:
        self.goaway_after = goaway_after
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.answered = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        h2c.initiate_connection()
        lock = threading.Lock()

        def send() -> None:
            with lock:
                data = h2c.data_to_send()
            if data:
                with contextlib.suppress(OSError):
                    conn.sendall(data)

        send()
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            with lock:
                events = h2c.receive_data(data)
            for ev in events:
                if isinstance(ev, h2.events.StreamEnded):
                    with lock:
                        h2c.send_headers(
                            ev.stream_id,
                            [
                                (b":status", b"200"),
                                (b"content-type", b"application/grpc"),
                                (b"grpc-status", b"1"),
                                (b"grpc-message", b"CANCELLED"),
                            ],
                            end_stream=True,
                        )
                    self.answered += 1
                    if self.goaway_after is not None:
                        threading.Timer(
                            self.goaway_after, self._goaway, (h2c, lock, conn, ev.stream_id)
                        ).start()
            send()

    def _goaway(
        self, h2c: h2.connection.H2Connection, lock: threading.Lock, conn: socket.socket, last: int
    ) -> None:
        with lock:
            h2c.close_connection(last_stream_id=last)
            data = h2c.data_to_send()
        try:
            conn.sendall(data)
            conn.close()
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_cancelled_just_before_goaway_is_retried_on_another_instance(lt: LoopThread) -> None:
    m = H2Mesh(lt)
    stopping = CancellingServer(goaway_after=0.01)
    try:
        app = m.app("healthy")
        m.set_instances("orders", [f"127.0.0.1:{stopping.port}", f"127.0.0.1:{app.port}"])
        with channel(m.service_port("orders")) as ch:
            for i in range(8):
                assert ch.unary_unary(path("Echo"))(b"%d" % i, timeout=CALL_TIMEOUT) == b"%d" % i
        assert stopping.answered >= 1  # round robin sent some calls to the stopping instance first
    finally:
        stopping.close()
        m.close()


def test_the_apps_own_cancelled_reaches_the_caller(lt: LoopThread) -> None:
    m = H2Mesh(lt)
    cancelling = CancellingServer(goaway_after=None)
    try:
        m.set_instances("orders", [f"127.0.0.1:{cancelling.port}"])
        with channel(m.service_port("orders")) as ch:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                ch.unary_unary(path("Echo"))(b"x", timeout=CALL_TIMEOUT)
            elapsed = time.monotonic() - started
        assert caught.value.code() is grpc.StatusCode.CANCELLED
        assert caught.value.details() == "CANCELLED"
        assert cancelling.answered == 1  # not retried
        assert elapsed < 2.0
    finally:
        cancelling.close()
        m.close()

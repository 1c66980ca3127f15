"""TESTING.md §A through a real listener: each malformed request gets its status, the connection closes,
the reject is counted by reason, and the recording upstream never receives a complete request."""

from __future__ import annotations

import socket
import time

import h11
import pytest
from codec.catalogue import CASES, Case

from transport.conftest import Mesh
from transport.upstreams import recv_until_closed, start_raw

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _complete_requests(raw: bytes | bytearray) -> int:
    """How many complete requests h11 finds in what the upstream received."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(bytes(raw))
    done = 0
    try:
        for _ in range(10_000):
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return done
            if isinstance(event, h11.EndOfMessage):
                done += 1
                return done
    except h11.RemoteProtocolError:
        return done
    raise AssertionError(f"h11 did not settle on {bytes(raw[:200])!r}")


@pytest.fixture
def recorded(mesh: Mesh) -> tuple[Mesh, list[bytearray]]:
    log: list[bytearray] = []
    _, port = mesh.lt.run(start_raw(log, OK))
    mesh.set_instances("svc", [f"127.0.0.1:{port}"])
    return mesh, log


def _send(mesh: Mesh, pieces: list[bytes]) -> bytes:
    with socket.create_connection(mesh.egress, timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(0.002)  # let the proxy read the first piece on its own
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # refused before everything was sent: fine
        return recv_until_closed(s)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_request_refused_and_nothing_reaches_upstream(
    recorded: tuple[Mesh, list[bytearray]], case: Case
) -> None:
    mesh, log = recorded
    data = case.data
    splits = [[data]] + [
        [data[:k], data[k:]] for k in sorted({1, len(data) // 2, len(data) - 1}) if 0 < k < len(data)
    ]
    for pieces in splits:
        reply = _send(mesh, pieces)
        assert reply.startswith(b"HTTP/1.1 %d " % case.status), (case.name, reply[:200])
        assert b"connection: close" in reply.lower() and reply.count(b"HTTP/1.1 ") == 1
        assert b"x-plexus-error: " in reply
    time.sleep(0.05)
    assert all(_complete_requests(raw) == 0 for raw in log), (case.name, [bytes(r[:200]) for r in log])
    text = mesh.lt.call(mesh.plane.metrics_text)
    assert "plexus_downstream_rejects_total{reason=" in text


def test_smuggled_second_request_never_forwarded(recorded: tuple[Mesh, list[bytearray]]) -> None:
    """CL.TE: a front end reading Content-Length sees one request; a back end reading chunked, two."""
    mesh, log = recorded
    attack = (
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: svc\r\n\r\n"
    )
    reply = _send(mesh, [attack])
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert not any(b"/admin" in raw for raw in log)


def test_good_requests_before_a_bad_one_are_answered_then_the_connection_closes(
    recorded: tuple[Mesh, list[bytearray]],
) -> None:
    mesh, log = recorded
    reply = _send(
        mesh, [b"GET /1 HTTP/1.1\r\nHost: svc\r\n\r\nGET /2 HTTP/1.1\r\nHost: svc\r\nX: a\r\n b\r\n\r\n"]
    )
    assert reply.startswith(b"HTTP/1.1 200 OK") and b"HTTP/1.1 400 " in reply
    assert sum([_complete_requests(raw) for raw in log]) == 1


def test_body_breaking_mid_stream_resets_the_upstream(mesh: Mesh) -> None:
    log: list[bytearray] = []
    _, port = mesh.lt.run(start_raw(log, None))  # an upstream that waits for the whole request
    mesh.set_instances("svc", [f"127.0.0.1:{port}"])
    with socket.create_connection(mesh.egress, timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.2)  # the head and first chunk are on their way upstream
        s.sendall(b"zz\r\n")
        reply = recv_until_closed(s)
    assert reply.startswith(b"HTTP/1.1 400 ")
    time.sleep(0.05)
    assert log and all(_complete_requests(raw) == 0 for raw in log)
    assert b"hello" in bytes(log[-1])  # it was streaming, and was cut off before completing


def test_body_limit_413(lt) -> None:  # type: ignore[no-untyped-def]
    mesh = Mesh(lt, max_body_bytes=10)
    try:
        log: list[bytearray] = []
        _, port = mesh.lt.run(start_raw(log, OK))
        mesh.set_instances("svc", [f"127.0.0.1:{port}"])
        reply = _send(mesh, [b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 11\r\n\r\nhello world"])
        assert reply.startswith(b"HTTP/1.1 413 ") and log == []
    finally:
        mesh.close()

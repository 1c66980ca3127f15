"""Raw TCP through a per-service egress port and a dedicated TCP ingress port; sniffing on a per-service
port whose protocol is unknown; HTTP Upgrade (101) turning the connection into a pipe."""

from __future__ import annotations

import asyncio
import os
import socket

from plexus.core.address import HostPort
from plexus.discovery.model import Instance
from transport.conftest import Mesh
from transport.upstreams import closed_port, read_response, recv_until_closed, start_echo


def _tcp_chain(mesh: Mesh, service: str = "db") -> HostPort:
    """app → egress:db (tcp) → tcp ingress → echo app. Returns the egress address."""
    _, echo_port = mesh.lt.run(start_echo())
    plane = mesh.plane
    ingress = mesh.lt.run(plane.listen_tcp_ingress(service, "127.0.0.1", 0, HostPort("127.0.0.1", echo_port)))
    mesh.set_instances(service, [str(ingress)], protocol="tcp")
    return mesh.lt.run(plane.listen_service_egress(service, "127.0.0.1", 0))


def test_tcp_echo_through_egress_and_ingress_with_half_close(mesh: Mesh) -> None:
    egress = _tcp_chain(mesh)
    payload = os.urandom(3 * 1024 * 1024)  # larger than socket buffers: flow control must hold it
    with socket.create_connection(egress, timeout=10) as s:
        import threading

        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        got = recv_until_closed(s, timeout=10)  # the echo's EOF comes back after ours: half-close both ways
        sender.join(10)
    assert got == payload
    text = mesh.lt.call(mesh.plane.metrics_text)
    assert f'plexus_tcp_received_bytes_total{{service="db",direction="egress"}} {len(payload)}' in text
    assert f'plexus_tcp_sent_bytes_total{{service="db",direction="ingress"}} {len(payload)}' in text


def test_tcp_connect_refused_is_retried_on_another_endpoint(mesh: Mesh) -> None:
    _, echo_port = mesh.lt.run(start_echo())
    ingress = mesh.lt.run(
        mesh.plane.listen_tcp_ingress("db", "127.0.0.1", 0, HostPort("127.0.0.1", echo_port))
    )
    mesh.set_instances("db", [f"127.0.0.1:{closed_port()}", str(ingress)], protocol="tcp")
    mesh.lt.call(mesh.plane.configure_service, "db", "round_robin")
    egress = mesh.lt.run(mesh.plane.listen_service_egress("db", "127.0.0.1", 0))
    for _ in range(4):
        with socket.create_connection(egress, timeout=5) as s:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"


def test_unknown_protocol_port_sniffs_http_and_tcp(mesh: Mesh) -> None:
    plane = mesh.plane
    # No instances published yet when connections arrive: the port must sniff.
    mesh.lt.call(plane.update_service, "web", [])
    egress = mesh.lt.run(plane.listen_service_egress("web", "127.0.0.1", 0))
    mesh.lt.call(plane.update_service, "web", [])  # still nothing: no protocol known
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        status, headers, _, _ = read_response(s)
        assert status == 503 and headers["x-plexus-error"] == "no_healthy_upstream; service=web"
    # Now point the service at an echo server but leave the published protocol out (sniffing decides).
    _, echo_port = mesh.lt.run(start_echo())
    cluster_instances = [Instance(service="web", address=f"127.0.0.1:{echo_port}", protocol="tcp")]
    mesh.lt.call(plane.update_service, "web", cluster_instances)
    mesh.lt.run(plane.close_service_egress("web"))
    egress = mesh.lt.run(plane.listen_service_egress("web", "127.0.0.1", 0))
    with socket.create_connection(egress, timeout=5) as s:
        s.sendall(b"\x00\x01binary")
        assert s.recv(8) == b"\x00\x01binary"


def test_sniff_timeout_sends_silent_clients_to_tcp(lt) -> None:  # type: ignore[no-untyped-def]
    """A server-first protocol on a port whose service has no instances yet when the client connects: the
    client says nothing, so after the sniff timeout the connection is piped as TCP to what is known then."""
    mesh = Mesh(lt, sniff_timeout=0.3)
    try:

        class Greeter(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                transport.write(b"220 hello\r\n")  # type: ignore[attr-defined]

        async def start() -> int:
            server = await asyncio.get_running_loop().create_server(Greeter, "127.0.0.1", 0)
            return int(server.sockets[0].getsockname()[1])

        port = mesh.lt.run(start())
        egress = mesh.lt.run(mesh.plane.listen_service_egress("smtp", "127.0.0.1", 0))
        with socket.create_connection(egress, timeout=5) as s:
            mesh.set_instances("smtp", [f"127.0.0.1:{port}"], protocol="tcp")  # the push lands meanwhile
            assert s.recv(64) == b"220 hello\r\n"
        text = mesh.lt.call(mesh.plane.metrics_text)
        assert 'plexus_tcp_connections_total{service="smtp",direction="egress"} 1' in text
    finally:
        mesh.close()


class _UpgradeUpstream(asyncio.Protocol):
    """Answers any request with 101, then echoes bytes upper-cased."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.upgraded = False
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.transport.write(data.upper())  # type: ignore[attr-defined]
            return
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            assert b"upgrade: websocket" in head.lower()
            self.upgraded = True
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            )
            if rest:
                self.transport.write(rest.upper())  # type: ignore[attr-defined]


def test_upgrade_pipes_bytes_both_ways_after_101(mesh: Mesh) -> None:
    async def start() -> int:
        server = await asyncio.get_running_loop().create_server(_UpgradeUpstream, "127.0.0.1", 0)
        return int(server.sockets[0].getsockname()[1])

    port = mesh.lt.run(start())
    mesh.set_instances("ws", [f"127.0.0.1:{port}"])
    with socket.create_connection(mesh.egress, timeout=5) as s:
        s.sendall(b"GET /chat HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and b"upgrade: websocket" in head.lower()
        got = rest
        while len(got) < 5:
            got += s.recv(4096)
        assert got == b"EARLY"
        s.sendall(b"more bytes")
        got = b""
        while len(got) < 10:
            got += s.recv(4096)
        assert got == b"MORE BYTES"


def test_close_tcp_ingress_stops_accepting_but_keeps_open_pipes(mesh: Mesh) -> None:
    _, echo_port = mesh.lt.run(start_echo())
    ingress = mesh.lt.run(
        mesh.plane.listen_tcp_ingress("db", "127.0.0.1", 0, HostPort("127.0.0.1", echo_port))
    )
    with socket.create_connection(ingress, timeout=5) as s:
        s.sendall(b"one")
        assert s.recv(3) == b"one"
        mesh.lt.run(mesh.plane.close_tcp_ingress("db"))
        s.sendall(b"two")
        assert s.recv(3) == b"two"
    try:
        socket.create_connection(ingress, timeout=1).close()
        refused = False
    except OSError:
        refused = True
    assert refused
    assert not any(listener["name"] == "ingress:db" for listener in mesh.plane.config_view()["listeners"])

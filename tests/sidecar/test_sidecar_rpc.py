"""Bolt and Dubbo through real sidecars: app → consumer sidecar A (per-request balancing, multiplexing) →
provider sidecars B and C (a dedicated ingress port piped to the app) → provider apps.

Run as a script, this module is the provider app: ``python test_sidecar_rpc.py PROTOCOL NAME READY_FILE``
answers each request with ``@NAME@`` and the request's bytes after its fixed header (so the caller's token
comes back), after a random delay of up to 20 ms so answers come out of order.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from sidecar_helpers import Group, addresses_seen, api, start_registry, start_sidecar

from plexus.codec import bolt, dubbo, hessian2
from plexus.codec.rpc import FrameKind, RpcFrame
from plexus.testing.procs import ManagedProcess, wait_for, write_ready_file

MAX_DELAY = 0.02


# --- the provider app ----------------------------------------------------------------------------------


class _App(asyncio.Protocol):
    def __init__(self, protocol: str, name: str) -> None:
        self.protocol = protocol
        self.name = name.encode()
        self.decoder = (bolt.BoltCodec() if protocol == "bolt" else dubbo.DubboCodec()).decoder()
        self.transport: asyncio.Transport | None = None
        self.rng = random.Random()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        for frame in self.decoder.feed(data):
            if frame.kind is not FrameKind.REQUEST:
                continue
            fixed = 22 if self.protocol == "bolt" else dubbo.HEADER_LENGTH
            content = b"@" + self.name + b"@" + frame.raw[fixed:]
            if self.protocol == "bolt":
                reply = bolt.encode_response(frame.request_id, bolt.BoltStatus.SUCCESS, content)
            else:
                reply = dubbo.encode_response(frame.request_id, dubbo.DubboStatus.OK, content)
            loop.call_later(self.rng.uniform(0, MAX_DELAY), self._write, reply)

    def _write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)


async def _serve(protocol: str, name: str, ready_file: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _App(protocol, name), "127.0.0.1", 0)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_ready_file(ready_file, {"listen": f"127.0.0.1:{server.sockets[0].getsockname()[1]}"})
    await stop.wait()
    server.close()


# --- the tests -----------------------------------------------------------------------------------------


def start_rpc_app(group: Group, protocol: str, name: str) -> int:
    fd, ready = tempfile.mkstemp(prefix=f"plexus-{protocol}-app-", suffix=".json")
    os.close(fd)
    os.unlink(ready)
    proc = group.add(
        ManagedProcess([sys.executable, str(Path(__file__)), protocol, name, ready], ready_file=Path(ready))
    )
    return int(proc.address("listen").rpartition(":")[2])


@dataclass
class RpcMesh:
    group: Group
    a: ManagedProcess  # the consumer's sidecar
    providers: list[ManagedProcess]  # provider sidecars B and C


@pytest.fixture(scope="module")
def rpc_mesh() -> Iterator[RpcMesh]:
    group = Group()
    try:
        registry = start_registry(group)
        providers = [start_sidecar(group, registry.address("listen")) for _ in range(2)]
        a = start_sidecar(group, registry.address("listen"))
        yield RpcMesh(group, a, providers)
    finally:
        group.stop_all()


def _token(request_id: int) -> bytes:
    return b"<tok:%d>" % request_id


def _request(protocol: str, request_id: int) -> bytes:
    if protocol == "bolt":
        headers = {bolt.HEADER_SERVICE: "com.acme.Echo:1.0", bolt.HEADER_METHOD: "echo"}
        return bolt.encode_request(request_id, headers, _token(request_id))
    tail = hessian2.encode_string("Ljava/lang/String;") + hessian2.encode_string(_token(request_id).decode())
    return dubbo.encode_request(request_id, "com.acme.Echo", "echo", tail=tail + b"HZ")


def _read(sock: socket.socket, protocol: str, count: int, timeout: float = 10.0) -> list[RpcFrame]:
    decoder = (bolt.BoltCodec() if protocol == "bolt" else dubbo.DubboCodec()).decoder()
    frames: list[RpcFrame] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(frames)} of {count} responses within {timeout}s"
        sock.settimeout(left)
        data = sock.recv(65536)
        assert data, f"connection closed after {len(frames)} of {count} responses"
        frames += decoder.feed(data)
    return frames


@pytest.mark.parametrize("protocol", ["bolt", "dubbo"])
def test_rpc_through_two_provider_sidecars(rpc_mesh: RpcMesh, protocol: str) -> None:
    service = f"echo-{protocol}"
    published: set[str] = set()
    for i, sidecar in enumerate(rpc_mesh.providers):
        app_port = start_rpc_app(rpc_mesh.group, protocol, f"app{i}")
        response = api(sidecar, "PUT", f"/v1/providers/{service}", {"port": app_port, "protocol": protocol})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["protocol"] == protocol
        assert body["address"] != sidecar.address("ingress")  # a dedicated ingress port, like tcp
        published.add(body["address"])
    egress = api(rpc_mesh.a, "PUT", f"/v1/consumers/{service}").json()["address"]
    wait_for(lambda: addresses_seen(rpc_mesh.a, service) == published, timeout=10, what="A sees both")
    host, _, port = egress.rpartition(":")
    count = 400
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"".join(_request(protocol, 1000 + i) for i in range(count)))
        frames = _read(conn, protocol, count)
    seen: dict[bytes, int] = {}
    for frame in frames:
        assert frame.kind is FrameKind.RESPONSE and _token(frame.request_id) in frame.raw  # not misdelivered
        found = re.search(rb"@(app\d)@", frame.raw)
        assert found is not None
        seen[found.group(1)] = seen.get(found.group(1), 0) + 1
    assert sorted(f.request_id for f in frames) == [1000 + i for i in range(count)]
    assert set(seen) == {b"app0", b"app1"}  # balanced per request over one downstream connection


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], sys.argv[2], sys.argv[3]))

"""TESTING.md §C through real sidecars, on the provider path: app → sidecar A (egress) → sidecar B (a Bolt or
Dubbo ingress that decodes, answers heartbeats and multiplexes to its app) → provider app, and back.

Run as a script, this module is the provider app: ``python test_bolt_dubbo_provider.py PROTOCOL NAME MODE
READY_FILE``; MODE ``echo`` answers each request with ``@NAME@`` + the request's bytes after its fixed header
(the caller's token) after a random delay of up to 20 ms, ``silent`` never answers; both count the
connections they accept (the ledger's "one connection" check reads it from the app's stdout).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import pytest

from plexus.codec import bolt, dubbo, hessian2
from plexus.codec.rpc import FrameKind, RpcFrame
from plexus.testing.procs import ManagedProcess, wait_for, write_ready_file

PROTOCOLS = ("bolt", "dubbo")
OK = {"bolt": bolt.BoltStatus.SUCCESS, "dubbo": dubbo.DubboStatus.OK}
UNAVAILABLE = {"bolt": bolt.BoltStatus.ERROR_COMM, "dubbo": dubbo.DubboStatus.SERVER_ERROR}
MAX_DELAY = 0.02
_CLIENT = httpx.Client(timeout=5)


# --- the provider app -----------------------------------------------------------------------------------


class _App(asyncio.Protocol):
    connections = 0

    def __init__(self, protocol: str, name: str, silent: bool) -> None:
        self.protocol = protocol
        self.name = name.encode()
        self.silent = silent
        self.decoder = (bolt.BoltCodec() if protocol == "bolt" else dubbo.DubboCodec()).decoder()
        self.transport: asyncio.Transport | None = None
        self.rng = random.Random()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.counted = False

    def data_received(self, data: bytes) -> None:
        if not self.counted:  # connections that carry frames (the sidecar's health check only connects)
            self.counted = True
            _App.connections += 1
            print(f"connections={_App.connections}", flush=True)
        loop = asyncio.get_running_loop()
        for frame in self.decoder.feed(data):
            if frame.kind is FrameKind.HEARTBEAT and self.transport is not None:
                self.transport.write(
                    bolt.heartbeat_reply(frame) if self.protocol == "bolt" else dubbo.heartbeat_reply(frame)
                )
            if frame.kind is not FrameKind.REQUEST or self.silent:
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


async def _serve(protocol: str, name: str, mode: str, ready_file: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _App(protocol, name, mode == "silent"), "127.0.0.1", 0)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_ready_file(ready_file, {"listen": f"127.0.0.1:{server.sockets[0].getsockname()[1]}"})
    await stop.wait()
    server.close()


# --- helpers --------------------------------------------------------------------------------------------


def start_app(protocol: str, name: str, mode: str = "echo") -> ManagedProcess:
    fd, ready = tempfile.mkstemp(prefix=f"plexus-{protocol}-app-", suffix=".json")
    os.close(fd)
    os.unlink(ready)
    argv = [sys.executable, str(Path(__file__)), protocol, name, mode, ready]
    return ManagedProcess(argv, ready_file=Path(ready))


def start_plexus(args: list[str]) -> ManagedProcess:
    return ManagedProcess.plexus(args)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def token(request_id: int) -> bytes:
    return b"<tok:%d>" % request_id


def request(protocol: str, request_id: int, timeout_ms: int = 0) -> bytes:
    if protocol == "bolt":
        headers = {bolt.HEADER_SERVICE: "com.acme.Echo:1.0", bolt.HEADER_METHOD: "echo"}
        return bolt.encode_request(request_id, headers, token(request_id), timeout_ms=timeout_ms)
    tail = hessian2.encode_string("Ljava/lang/String;") + hessian2.encode_string(token(request_id).decode())
    return dubbo.encode_request(request_id, "com.acme.Echo", "echo", tail=tail + b"HZ")


def read(sock: socket.socket, protocol: str, count: int, timeout: float = 15.0) -> list[RpcFrame]:
    decoder = (bolt.BoltCodec() if protocol == "bolt" else dubbo.DubboCodec()).decoder()
    frames: list[RpcFrame] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(frames)} of {count} frames within {timeout}s"
        sock.settimeout(left)
        data = sock.recv(65536)
        assert data, f"connection closed after {len(frames)} of {count} frames"
        frames += decoder.feed(data)
    return frames


@dataclass
class Pair:
    a: ManagedProcess  # the consumer's sidecar
    b: ManagedProcess  # the provider's sidecar
    started: list[ManagedProcess]

    def api(self, proc: ManagedProcess, method: str, path: str, body: object = None) -> httpx.Response:
        return _CLIENT.request(method, f"http://{proc.address('api')}{path}", json=body)

    def metrics(self, proc: ManagedProcess) -> str:
        return _CLIENT.get(f"http://{proc.address('admin')}/stats/prometheus").text

    def provide(self, service: str, protocol: str, mode: str = "echo") -> tuple[ManagedProcess, str, str]:
        """Start an app, publish it through B and consume it through A: (app, B's ingress, A's egress)."""
        app = start_app(protocol, service, mode)
        self.started.append(app)
        body = {"port": port_of(app.address("listen")), "protocol": protocol}
        response = self.api(self.b, "PUT", f"/v1/providers/{service}", body)
        assert response.status_code == 200, response.text
        ingress = response.json()["address"]
        egress = self.api(self.a, "PUT", f"/v1/consumers/{service}").json()["address"]

        def seen() -> bool:
            found = self.api(self.a, "GET", f"/v1/services/{service}")
            return found.status_code == 200 and [i["address"] for i in found.json()["instances"]] == [ingress]

        wait_for(seen, timeout=10, what=f"A sees {service}")
        return app, ingress, egress


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    started: list[ManagedProcess] = []
    try:
        registry = start_plexus(
            [
                "registry",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--warmup",
                "0",
                "--debounce-ms",
                "20",
            ]
        )
        started.append(registry)
        common = [
            "--registry",
            registry.address("listen"),
            "--ingress",
            "127.0.0.1:0",
            "--egress",
            "127.0.0.1:0",
        ]
        common += ["--api", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--health-interval", "0.2"]
        common += ["--drain-time", "0.2"]
        b = start_plexus(["sidecar", *common])
        started.append(b)
        a = start_plexus(["sidecar", *common])
        started.append(a)
        yield Pair(a, b, started)
    finally:
        for proc in reversed(started):
            proc.stop()


def connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=5)


# --- the tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_thousand_in_flight_out_of_order_one_app_connection(pair: Pair, protocol: str) -> None:
    service = f"many-{protocol}"
    app, _, egress = pair.provide(service, protocol)
    count = 1000
    ids = [50_000 + 7 * i for i in range(count)]
    with connect(egress) as s:
        s.sendall(b"".join(request(protocol, i) for i in ids))
        frames = read(s, protocol, count)
    misdelivered = sum(1 for f in frames if token(f.request_id) not in f.raw)
    order = [f.request_id for f in frames]
    lost = count - len(set(order))
    print(f"ledger {protocol}: sent={count} lost={lost} misdelivered={misdelivered} duplicated=0")
    assert misdelivered == 0
    assert sorted(order) == ids
    assert order != ids  # answered out of order
    assert all(f.status == OK[protocol] and f"@{service}@".encode() in f.raw for f in frames)
    assert re.findall(r"connections=(\d+)", app.log()) == ["1"]  # multiplexed over one app connection
    ingress_ok = f'plexus_requests_total{{service="{service}",direction="ingress",code_class="2xx"}} {count}'
    assert ingress_ok in pair.metrics(pair.b)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_split_at_every_offset_and_coalesced_at_the_provider_sidecar(pair: Pair, protocol: str) -> None:
    service = f"split-{protocol}"
    _, ingress, _ = pair.provide(service, protocol)
    beat = bolt.encode_heartbeat(1) if protocol == "bolt" else dubbo.encode_heartbeat(1)
    sample = beat + request(protocol, 2)
    expected: list[int] = []
    with connect(ingress) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for at in range(1, len(sample)):
            data = beat + request(protocol, 1000 + at)
            s.sendall(data[:at])
            time.sleep(0.001)
            s.sendall(data[at:])
            expected.append(1000 + at)
        burst = list(range(9000, 9200))
        s.sendall(b"".join(request(protocol, i) for i in burst))
        frames = read(s, protocol, 2 * len(expected) + len(burst))
    answers = sorted(f.request_id for f in frames if f.kind is FrameKind.RESPONSE)
    assert answers == sorted(expected + burst)
    assert all(token(f.request_id) in f.raw for f in frames if f.kind is FrameKind.RESPONSE)
    assert sum(f.kind is FrameKind.HEARTBEAT_REPLY for f in frames) == len(expected)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_app_killed_with_fifty_in_flight_every_caller_gets_an_error(pair: Pair, protocol: str) -> None:
    service = f"kill-{protocol}"
    app, _, egress = pair.provide(service, protocol, mode="silent")
    ids = list(range(1, 51))
    with connect(egress) as s:
        s.sendall(b"".join(request(protocol, i, timeout_ms=10_000) for i in ids))
        wait_for(lambda: "connections=1" in app.log(), timeout=5, what="the app connection")
        time.sleep(0.3)  # the 50 requests reach the app
        started = time.monotonic()
        app.kill()
        frames = read(s, protocol, len(ids), timeout=8)
        elapsed = time.monotonic() - started
    assert sorted(f.request_id for f in frames) == ids  # every caller answered
    assert {f.status for f in frames} == {UNAVAILABLE[protocol]}
    assert elapsed < 8  # within the callers' 10 s
    assert f'plexus_local_replies_total{{reason="upstream_reset",service="{service}"}} 50' in pair.metrics(
        pair.b
    )


def _oversized(protocol: str) -> bytes:
    if protocol == "bolt":
        return struct.pack(">BBHBIBiHHI", 1, 1, 1, 1, 77, 1, 0, 0, 0, 1 << 30)
    return struct.pack(">HBBQi", dubbo.MAGIC, 0xC2, 0, 77, 1 << 30)


def _bad_codec(protocol: str) -> bytes:
    good = request(protocol, 5)
    return good[:9] + b"\x02" + good[10:] if protocol == "bolt" else good[:2] + b"\xc7" + good[3:]


def _deep_string(protocol: str) -> bytes:
    chain = b"".join(b"R\x00\x01a" for _ in range(40)) + b"S\x00\x01a"
    if protocol == "bolt":  # Bolt has no Hessian routing fields: a class name far over its cap instead
        return struct.pack(">BBHBIBiHHI", 1, 1, 1, 1, 77, 1, 0, 0xFFFF, 0, 0)
    body = hessian2.encode_string("2.0.2") + chain
    return struct.pack(">HBBQi", dubbo.MAGIC, 0xC2, 0, 77, len(body)) + body


REASONS = {
    ("bolt", "oversized"): "rpc_frame_too_large",
    ("dubbo", "oversized"): "rpc_frame_too_large",
    ("bolt", "codec"): "bolt_codec_not_allowed",
    ("dubbo", "codec"): "dubbo_serialization_not_allowed",
    ("bolt", "deep"): "bolt_class_too_long",
    ("dubbo", "deep"): "hessian_too_deep",
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hostile_frames_close_only_their_connection(pair: Pair, protocol: str) -> None:
    service = f"hostile-{protocol}"
    _, ingress, _ = pair.provide(service, protocol)
    makers = {"oversized": _oversized, "codec": _bad_codec, "deep": _deep_string}
    with connect(ingress) as good:
        for kind, make in makers.items():
            with connect(ingress) as bad:
                good.sendall(request(protocol, 1))
                started = time.monotonic()
                bad.sendall(make(protocol))
                bad.settimeout(3)
                with contextlib.suppress(ConnectionResetError):
                    assert bad.recv(1024) == b""
                assert time.monotonic() - started < 1.0, kind
                (frame,) = read(good, protocol, 1)
                assert frame.status == OK[protocol] and token(1) in frame.raw
    text = pair.metrics(pair.b)
    for kind in makers:
        assert f'plexus_downstream_rejects_total{{reason="{REASONS[(protocol, kind)]}"}}' in text


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]))

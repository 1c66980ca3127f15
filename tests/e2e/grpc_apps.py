"""A grpcio test app (generic handlers, bytes in and out, no codegen) and the helpers that start it and a
mesh of real sidecars around it.

Run as a script, this module is the provider app::

    python tests/e2e/grpc_apps.py --name app0 --ready-file F [--port 0] [--ledger FILE] [--grace 5]
                                  [--max-streams 100]

It serves ``plexus.test.Echo`` with these methods (every one sends initial metadata ``x-instance: NAME``
first, and appends the caller's ``x-request-id`` to the ledger file, one line per call, so a test can count
what reached the app):

- ``Echo`` (unary): answers the request bytes; the trailers carry ``echo-<key>`` for every metadata key it saw
  (binary ``-bin`` keys keep their suffix and bytes).
- ``Whoami`` (unary): answers NAME.
- ``ServerStream`` (unary → stream): request ``b"COUNT,SIZE"`` or ``b"COUNT,SIZE,CODE"``; answers COUNT
  messages, message i being ``b"%08d" % i`` padded to SIZE bytes; with CODE it then aborts with that status
  (message ``after COUNT``).
- ``ClientStream`` (stream → unary): requests are decimal integers; answers ``b"COUNT,SUM"``.
- ``Sink`` (stream → unary): reads one message, stops reading for ``--sink-pause`` seconds (a slow
  reader: the client's messages must wait in flow control, not in a proxy's memory), then reads the rest;
  answers ``b"COUNT,BYTES"``.
- ``Bidi`` (stream → stream): answers each message as it arrives, prefixed ``b"echo:"``.
- ``Abort`` (unary): request JSON ``{"code": "NOT_FOUND", "message": "..."}``; aborts with them.
- ``Slow`` (unary): request ``b"SECONDS"`` or ``b"SECONDS,TOKEN"``; sleeps that long (or until cancelled),
  then answers ``NAME|`` + the request. Records the deadline that arrived with the call and cancellations.
- ``Stats`` (unary, not counted): JSON ``{"name", "calls": {method: n}, "total", "cancelled",
  "deadlines": [seconds left on arrival, ...], "active", "max_active"}`` (active: ``Slow`` calls now).

With ``--refuse`` it is instead a bare HTTP/2 server (the ``h2`` library) that answers every stream with
RST_STREAM REFUSED_STREAM (RFC 9113 §8.7: not processed, safe to retry) and appends the stream's
``x-request-id`` to the ledger: an instance that never serves, for the mesh's retry of refused streams.

SIGTERM or SIGINT stops the server with ``server.stop(grace)``: grpc core sends GOAWAY, in-flight calls
finish.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import grpc

from plexus.testing.procs import ManagedProcess, wait_for, write_ready_file

SERVICE = "plexus.test.Echo"
APP_PATH = Path(__file__)
# grpcio must not route loopback calls through an HTTP proxy named in the environment; large-message tests
# go past grpcio's default 4 MiB receive limit.
CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
)


def method_path(name: str) -> str:
    return f"/{SERVICE}/{name}"


# --- the provider app --------------------------------------------------------------------------------------


class EchoApp:
    """The handlers, and what they saw (read by ``Stats``)."""

    def __init__(self, name: str, ledger: Path | None, sink_pause: float = 1.0) -> None:
        self.name = name
        self.sink_pause = sink_pause
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.cancelled = 0
        self.active = 0
        self.max_active = 0
        self.deadlines: list[float | None] = []
        self.ledger = open(ledger, "a", buffering=1) if ledger else None  # noqa: SIM115 - lives with the app

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        context.send_initial_metadata((("x-instance", self.name),))
        request_id = dict(context.invocation_metadata()).get("x-request-id")
        with self.lock:
            self.calls[method] += 1
            if self.ledger is not None and isinstance(request_id, str):
                self.ledger.write(request_id + "\n")

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter("Echo", context)
        seen = [
            ("echo-" + key, value)
            for key, value in context.invocation_metadata()
            if not key.startswith((":", "grpc-"))
        ]
        context.set_trailing_metadata(seen)
        return request

    def whoami(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter("Whoami", context)
        return self.name.encode()

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._enter("ServerStream", context)
        count, size, *code = request.split(b",")
        width = max(int(size or 8), 8)
        for i in range(int(count)):
            yield (b"%08d" % i).ljust(width, b".")
        if code:
            context.abort(grpc.StatusCode[code[0].decode()], f"after {int(count)}")

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._enter("ClientStream", context)
        count = total = 0
        for message in requests:
            count += 1
            total += int(message)
        return b"%d,%d" % (count, total)

    def sink(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._enter("Sink", context)
        count = size = 0
        for message in requests:
            if count == 0:
                time.sleep(self.sink_pause)
            count += 1
            size += len(message)
        return b"%d,%d" % (count, size)

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._enter("Bidi", context)
        for message in requests:
            yield b"echo:" + message

    def abort(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter("Abort", context)
        spec = json.loads(request)
        context.abort(grpc.StatusCode[spec["code"]], spec["message"])
        raise AssertionError("abort never returns")

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter("Slow", context)
        with self.lock:
            self.deadlines.append(context.time_remaining())
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            end = time.monotonic() + float(request.partition(b",")[0])
            while time.monotonic() < end:
                if not context.is_active():  # cancelled by the caller, or its deadline passed
                    with self.lock:
                        self.cancelled += 1
                    return b""
                time.sleep(0.01)
            return self.name.encode() + b"|" + request
        finally:
            with self.lock:
                self.active -= 1

    def stats(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            return json.dumps(
                {
                    "name": self.name,
                    "calls": dict(self.calls),
                    "total": sum(self.calls.values()),
                    "cancelled": self.cancelled,
                    "deadlines": self.deadlines,
                    "active": self.active,
                    "max_active": self.max_active,
                }
            ).encode()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
                "Whoami": grpc.unary_unary_rpc_method_handler(self.whoami),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
                "Sink": grpc.stream_unary_rpc_method_handler(self.sink),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
                "Abort": grpc.unary_unary_rpc_method_handler(self.abort),
                "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
                "Stats": grpc.unary_unary_rpc_method_handler(self.stats),
            },
        )


def serve_refusing(ready_file: str, ledger: Path | None) -> None:
    import asyncio

    import h2.config
    import h2.connection
    import h2.errors
    import h2.events

    log = open(ledger, "a", buffering=1) if ledger else None  # noqa: SIM115 - lives with the app

    class Refuser(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)
            config = h2.config.H2Configuration(client_side=False, header_encoding=None)
            self.conn = h2.connection.H2Connection(config)
            self.conn.initiate_connection()
            self.transport.write(self.conn.data_to_send())

        def data_received(self, data: bytes) -> None:
            try:
                events = self.conn.receive_data(data)
            except Exception:
                self.transport.close()
                return
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    request_id = dict(event.headers).get(b"x-request-id", b"-")
                    if log is not None:
                        log.write(request_id.decode() + "\n")
                    self.conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            self.transport.write(self.conn.data_to_send())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Refuser, "127.0.0.1", 0)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        port = server.sockets[0].getsockname()[1]
        write_ready_file(ready_file, {"pid": os.getpid(), "listen": f"127.0.0.1:{port}"})
        await stop.wait()
        server.close()

    asyncio.run(main())


def serve(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="grpcio echo app for Plexus tests")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="app")
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--ledger", type=Path)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--max-streams", type=int, default=100)
    parser.add_argument("--workers", type=int, default=256)
    parser.add_argument("--sink-pause", type=float, default=1.0)
    parser.add_argument("--refuse", action="store_true", help="refuse every stream (REFUSED_STREAM)")
    args = parser.parse_args(argv)
    if args.refuse:
        serve_refusing(args.ready_file, args.ledger)
        return

    app = EchoApp(args.name, args.ledger, args.sink_pause)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=args.workers),
        options=[
            ("grpc.max_concurrent_streams", args.max_streams),
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),  # large-message tests send 5 MiB
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ],
    )
    server.add_generic_rpc_handlers((app.handler(),))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    write_ready_file(args.ready_file, {"pid": os.getpid(), "listen": f"127.0.0.1:{port}"})
    while not stop.wait(0.2):
        pass
    print(f"{args.name}: stopping with grace {args.grace}s", flush=True)
    server.stop(args.grace).wait()
    print(f"{args.name}: stopped", flush=True)


# --- helpers for the tests: processes ----------------------------------------------------------------------


class Group:
    """Processes started for one test or one module; stopped in reverse order, by PID."""

    def __init__(self) -> None:
        self.started: list[ManagedProcess] = []

    def add(self, proc: ManagedProcess) -> ManagedProcess:
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        # SIGTERM to all first so their drains overlap, then wait for each (SIGKILL after 10 s).
        for proc in reversed(self.started):
            with contextlib.suppress(OSError):
                proc.signal(signal.SIGTERM)
        for proc in reversed(self.started):
            proc.stop()

    def logs(self, last: int = 3000) -> str:
        return "\n".join(
            f"--- {' '.join(p.argv[1:5])} (pid {p.pid}):\n{p.log()[-last:]}" for p in self.started
        )


def _ready_path(prefix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".json")
    os.close(fd)
    os.unlink(name)
    return Path(name)


def start_app(
    group: Group,
    name: str,
    *,
    ledger: Path | None = None,
    grace: float = 5.0,
    max_streams: int = 100,
    refuse: bool = False,
) -> tuple[ManagedProcess, int]:
    """Start the grpcio app (or, with ``refuse``, the refusing one) as its own process; (process, port)."""
    ready = _ready_path(f"plexus-grpc-{name}-")
    argv = [sys.executable, str(APP_PATH), "--name", name, "--ready-file", str(ready), "--grace", str(grace)]
    argv += ["--max-streams", str(max_streams), *(["--refuse"] if refuse else [])]
    if ledger is not None:
        argv += ["--ledger", str(ledger)]
    proc = group.add(ManagedProcess(argv, ready_file=ready))
    return proc, int(proc.address("listen").rpartition(":")[2])


def start_registry(group: Group) -> ManagedProcess:
    # No warm-up hold and a short lease grace, so pushes are seen at once (as tests/sidecar does).
    args = ["registry", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--lease-grace", "1"]
    return group.add(ManagedProcess.plexus([*args, "--warmup", "0", "--debounce-ms", "20"]))


def start_sidecar(group: Group, registry: str, *extra: str) -> ManagedProcess:
    return start_sidecars(group, registry, 1, *extra)[0]


def start_sidecars(group: Group, registry: str, count: int, *extra: str) -> list[ManagedProcess]:
    """``count`` sidecars started side by side (each spends about a second of CPU starting up)."""
    args = ["sidecar", "--registry", registry, "--ingress", "127.0.0.1:0", "--egress", "127.0.0.1:0"]
    args += ["--api", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--health-interval", "0.2"]
    args += ["--drain-time", "0.5", *extra]
    with ThreadPoolExecutor(count) as pool:
        started = [pool.submit(ManagedProcess.plexus, args) for _ in range(count)]
    procs = []
    for future in started:  # every one is kept for stop_all, even when another failed to start
        with contextlib.suppress(Exception):
            procs.append(group.add(future.result()))
    if len(procs) < count:
        started[[f.exception() is not None for f in started].index(True)].result()  # raise the first error
    return procs


# --- helpers for the tests: local and admin APIs -----------------------------------------------------------


_CLIENT: list[Any] = []  # one httpx client for all control calls: a new one costs ~0.1 s (SSL context)


def _http(proc: ManagedProcess, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    import httpx  # the tests' process only

    if not _CLIENT:
        _CLIENT.append(httpx.Client(timeout=5, trust_env=False))
    response = _CLIENT[0].request(method, f"http://{proc.address(key)}{path}", json=body)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def provide(sidecar: ManagedProcess, service: str, port: int) -> str:
    """Publish a gRPC provider through its sidecar; returns the published address."""
    status, body = _http(
        sidecar, "api", "PUT", f"/v1/providers/{service}", {"port": port, "protocol": "grpc"}
    )
    assert status == 200, body
    return str(body["address"])


def unprovide(sidecar: ManagedProcess, service: str) -> None:
    _http(sidecar, "api", "DELETE", f"/v1/providers/{service}")


def consume(sidecar: ManagedProcess, service: str) -> str:
    """Subscribe through the consumer sidecar; returns its per-service egress address."""
    status, body = _http(sidecar, "api", "PUT", f"/v1/consumers/{service}")
    assert status == 200, body
    return str(body["address"])


def addresses_seen(sidecar: ManagedProcess, service: str) -> set[str]:
    status, body = _http(sidecar, "api", "GET", f"/v1/services/{service}")
    if status != 200:
        return set()
    return {i["address"] for i in body["instances"]}


def wait_seen(sidecar: ManagedProcess, service: str, addresses: set[str], timeout: float = 10.0) -> None:
    wait_for(lambda: addresses_seen(sidecar, service) == addresses, timeout=timeout, what=f"{service} seen")


def prometheus(sidecar: ManagedProcess) -> str:
    status, body = _http(sidecar, "admin", "GET", "/stats/prometheus")
    assert status == 200
    return str(body)


def counter(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus family's samples whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line.strip())
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def rss_kib(pid: int) -> int:
    """Resident set size of a process from /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# --- helpers for the tests: calls --------------------------------------------------------------------------


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def app_stats(port: int) -> dict[str, Any]:
    """The app's own counters, asked directly (not through the mesh; not counted)."""
    with channel(f"127.0.0.1:{port}") as ch:
        reply: bytes = ch.unary_unary(method_path("Stats"))(b"", timeout=5)
    result: dict[str, Any] = json.loads(reply)
    return result


def read_ledger(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


if __name__ == "__main__":
    serve(sys.argv[1:])

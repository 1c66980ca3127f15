"""gRPC through two real sidecars: a grpcio client → consumer sidecar A's per-service egress port (h2c) →
provider sidecar B's (or C's) shared ingress, routed by ``x-plexus-service`` → the grpcio app (h2c).

One registry and three sidecars (A consumes; B and C provide) are shared by the module; each test publishes
its own service with its own app processes (tests/e2e/grpc_apps.py). Reliability tests keep a request ledger
(TESTING.md "Nothing lost"): every call carries ``x-request-id``, the client records ok/error per id, the app
appends every id it receives to its ledger file; lost, misdelivered and duplicated must all be 0.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import grpc
import hpack
import pytest

from plexus.testing.procs import ManagedProcess, wait_for
from plexus.transport.h2_stream import LOCAL_REFUSAL_RETRIES

from . import h2_attack_clients as atk
from .grpc_apps import (
    Group,
    addresses_seen,
    app_stats,
    channel,
    consume,
    method_path,
    provide,
    read_ledger,
    rss_kib,
    start_app,
    start_registry,
    start_sidecars,
    unprovide,
    wait_seen,
)

CALL_TIMEOUT = 10.0  # every call is bounded; a hang fails the call, not the suite


@dataclass
class GrpcMesh:
    group: Group  # registry and sidecars, for the module
    a: ManagedProcess  # the consumer's sidecar
    b: ManagedProcess  # provider sidecar 1
    c: ManagedProcess  # provider sidecar 2
    tmp: Path
    apps: Group = field(default_factory=Group)  # the current test's apps, stopped when it ends


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcMesh]:
    group = Group()
    try:
        registry = start_registry(group)
        b, c, a = start_sidecars(group, registry.address("listen"), 3)
        yield GrpcMesh(group, a, b, c, tmp_path_factory.mktemp("grpc-mesh"))
    finally:
        group.stop_all()


@pytest.fixture(autouse=True)
def _apps_and_logs(request: pytest.FixtureRequest, mesh: GrpcMesh) -> Iterator[None]:
    failed_before = request.session.testsfailed
    mesh.apps = Group()
    try:
        yield
    finally:
        if request.session.testsfailed > failed_before:
            print(mesh.group.logs(), mesh.apps.logs(), sep="\n")
        mesh.apps.stop_all()


@dataclass
class App:
    proc: ManagedProcess
    port: int
    address: str  # what its sidecar published
    ledger: Path


def serve(mesh: GrpcMesh, service: str, sidecar: ManagedProcess, name: str, **kw: float | bool) -> App:
    """Start an app and publish it as a gRPC provider of ``service`` through ``sidecar``."""
    ledger = mesh.tmp / f"{service}-{name}.ledger"
    proc, port = start_app(mesh.apps, name, ledger=ledger, **kw)  # type: ignore[arg-type]
    return App(proc, port, provide(sidecar, service, port), ledger)


def egress(mesh: GrpcMesh, service: str, apps: list[App]) -> str:
    """A's egress address for ``service``, once A sees exactly ``apps``."""
    address = consume(mesh.a, service)
    wait_seen(mesh.a, service, {app.address for app in apps})
    return address


@dataclass
class Ledger:
    """What the client sent and heard, per request id."""

    sent: list[str] = field(default_factory=list)
    ok: dict[str, bytes] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, request_id: str, do: Callable[[], bytes]) -> None:
        with self.lock:
            self.sent.append(request_id)
        try:
            reply = do()
        except grpc.RpcError as exc:
            with self.lock:
                self.errors[request_id] = f"{exc.code().name}: {exc.details()}"
            return
        with self.lock:
            self.ok[request_id] = reply

    def check(self, received: Counter[str], expected: Callable[[str], bytes]) -> dict[str, int]:
        """The ledger counts; ``received`` is what the apps saw per id, ``expected`` the right answer."""
        sent = set(self.sent)
        result = {
            "sent": len(self.sent),
            "ok": len(self.ok),
            "errors": len(self.errors),
            "lost": len(sent - self.ok.keys() - self.errors.keys()),
            "misdelivered": sum(1 for rid, reply in self.ok.items() if reply != expected(rid)),
            "duplicated": sum(1 for n in received.values() if n > 1),
            "unrecorded": sum(1 for rid in self.ok if received[rid] == 0),
        }
        print("ledger:", " ".join(f"{k}={v}" for k, v in result.items()))
        if self.errors:
            print("error samples:", sorted(set(self.errors.values()))[:5])
        return result


def ledgers(*apps: App) -> Counter[str]:
    total: Counter[str] = Counter()
    for app in apps:
        total.update(read_ledger(app.ledger))
    return total


def clean(result: dict[str, int]) -> bool:
    return all(result[k] == 0 for k in ("errors", "lost", "misdelivered", "duplicated", "unrecorded"))


# --- the four call shapes ----------------------------------------------------------------------------------


def test_unary_ledger(mesh: GrpcMesh) -> None:
    app = serve(mesh, "g-unary", mesh.b, "u0")
    with channel(egress(mesh, "g-unary", [app])) as ch:
        echo = ch.unary_unary(method_path("Echo"))
        ledger = Ledger()

        def one(i: int) -> None:
            rid = f"unary-{i}"
            ledger.call(
                rid, lambda: echo(rid.encode(), metadata=[("x-request-id", rid)], timeout=CALL_TIMEOUT)
            )

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(300)))
    result = ledger.check(ledgers(app), lambda rid: rid.encode())
    assert result["sent"] == 300 and clean(result), (result, ledger.errors)


def test_server_client_and_bidi_streaming(mesh: GrpcMesh) -> None:
    app = serve(mesh, "g-streams", mesh.b, "s0")
    with channel(egress(mesh, "g-streams", [app])) as ch:
        replies = list(ch.unary_stream(method_path("ServerStream"))(b"500,100", timeout=CALL_TIMEOUT))
        assert [r[:8] for r in replies] == [b"%08d" % i for i in range(500)]
        assert all(len(r) == 100 for r in replies)

        total = ch.stream_unary(method_path("ClientStream"))(
            (b"%d" % i for i in range(1000)), timeout=CALL_TIMEOUT
        )
        assert total == b"1000,%d" % sum(range(1000))

        # Real interleaving: the next message is sent only after the previous answer came back, so a proxy
        # that waits for the end of the request stream (or buffers answers) deadlocks and times out.
        outbox: queue.Queue[bytes | None] = queue.Queue()
        outbox.put(b"0")
        call = ch.stream_stream(method_path("Bidi"))(iter(outbox.get, None), timeout=CALL_TIMEOUT)
        got = []
        for reply in call:
            got.append(reply)
            n = len(got)
            outbox.put(b"%d" % n if n < 50 else None)
        assert got == [b"echo:%d" % i for i in range(50)]
    stats = app_stats(app.port)
    assert stats["calls"] == {"ServerStream": 1, "ClientStream": 1, "Bidi": 1}, stats


def test_concurrent_bidi_streams_are_not_mixed(mesh: GrpcMesh) -> None:
    """40 bidi calls at once on one channel, over two instances: every message comes back on its own call,
    in order (misdelivered 0 at the message level)."""
    apps = [serve(mesh, "g-mux", mesh.b, "mx0"), serve(mesh, "g-mux", mesh.c, "mx1")]
    with channel(egress(mesh, "g-mux", apps)) as ch:
        bidi = ch.stream_stream(method_path("Bidi"))

        def one(call_id: int) -> list[bytes]:
            sent = [b"%d:%d" % (call_id, k) for k in range(30)]
            return [r.removeprefix(b"echo:") for r in bidi(iter(sent), timeout=CALL_TIMEOUT)]

        with ThreadPoolExecutor(40) as pool:
            results = list(pool.map(one, range(40)))
    wrong = [i for i, got in enumerate(results) if got != [b"%d:%d" % (i, k) for k in range(30)]]
    assert not wrong, [results[i][:3] for i in wrong[:3]]
    per_app = [app_stats(app.port)["calls"].get("Bidi", 0) for app in apps]
    assert sum(per_app) == 40 and min(per_app) > 0, per_app


def test_large_messages_both_ways(mesh: GrpcMesh) -> None:
    """A 5 MiB request and answer (past grpcio's default 4 MiB): many DATA frames and window updates."""
    app = serve(mesh, "g-large", mesh.b, "l0")
    body = os.urandom(5 * 1024 * 1024)
    with channel(egress(mesh, "g-large", [app])) as ch:
        assert ch.unary_unary(method_path("Echo"))(body, timeout=CALL_TIMEOUT) == body


def test_status_after_streamed_messages(mesh: GrpcMesh) -> None:
    """Trailers that follow data keep their status: 5 messages, then NOT_FOUND ``after 5``."""
    app = serve(mesh, "g-stream-status", mesh.b, "ss0")
    got = []
    with channel(egress(mesh, "g-stream-status", [app])) as ch:
        call = ch.unary_stream(method_path("ServerStream"))(b"5,64,NOT_FOUND", timeout=CALL_TIMEOUT)
        with pytest.raises(grpc.RpcError) as caught:
            for message in call:
                got.append(message[:8])
    assert got == [b"%08d" % i for i in range(5)]
    err: grpc.Call = caught.value
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "after 5")


def test_stalled_stream_does_not_block_its_connection(mesh: GrpcMesh) -> None:
    """One server stream whose reader stops (its window fills on every hop) shares the channel and the
    sidecars' upstream connections with unary calls: those still succeed (no head-of-line blocking through
    the connection-level window), and uploads in the other direction too."""
    app = serve(mesh, "g-hol", mesh.b, "h0")
    with channel(egress(mesh, "g-hol", [app])) as ch:
        stalled = ch.unary_stream(method_path("ServerStream"))(b"10000,6144", timeout=30)
        assert next(stalled)[:8] == b"00000000"
        time.sleep(0.5)  # let the stalled stream fill every window it can
        echo = ch.unary_unary(method_path("Echo"))
        big = os.urandom(256 * 1024)  # each more than a 64 KiB window
        for i in range(10):
            assert echo(b"%d" % i, timeout=5) == b"%d" % i
            assert echo(big, timeout=5) == big
        total = ch.stream_unary(method_path("ClientStream"))((b"1" for _ in range(200)), timeout=5)
        assert total == b"200,200"
        rest = sum(1 for _ in stalled)  # and the stalled stream still completes, all of it
    assert rest == 9_999


def test_client_stream_to_slow_app_bounded_memory(mesh: GrpcMesh) -> None:
    """32 MB uploaded to an app that stops reading for 1 s: the client waits in flow control, the
    sidecars do not buffer the upload (backpressure from app to client)."""
    count, size = 128, 256 * 1024  # large messages: grpcio's cost is per message, the proxies' per byte
    app = serve(mesh, "g-upload", mesh.b, "up0")
    with channel(egress(mesh, "g-upload", [app])) as ch:
        ch.unary_unary(method_path("Whoami"))(b"", timeout=CALL_TIMEOUT)
        idle = {"a": rss_kib(mesh.a.pid), "b": rss_kib(mesh.b.pid)}
        peak = dict(idle)

        def sample() -> None:
            for key, proc in (("a", mesh.a), ("b", mesh.b)):
                peak[key] = max(peak[key], rss_kib(proc.pid))

        def messages() -> Iterator[bytes]:
            for i in range(count):
                if i % 8 == 0:
                    sample()
                yield (b"%08d" % i).ljust(size, b"u")

        reply = ch.stream_unary(method_path("Sink"))(messages(), timeout=60)
        sample()  # freed memory seldom goes back to the OS: a buffered upload would still show here
    assert reply == b"%d,%d" % (count, count * size)
    growth = {k: (peak[k] - idle[k]) // 1024 for k in idle}
    print(f"RSS idle KiB {idle}, growth MiB {growth}")
    assert growth["a"] < 24 and growth["b"] < 24, growth  # below the 32 MB a buffering proxy would hold


# --- metadata, status, deadlines, cancellation -------------------------------------------------------------


def test_metadata_both_ways_including_binary(mesh: GrpcMesh) -> None:
    app = serve(mesh, "g-meta", mesh.b, "m0")
    binary = bytes(range(256))  # every byte value, NUL and 0xff included
    sent = [
        ("x-request-id", "meta-1"),
        ("x-long", "v" * 4000),  # KiBs in one field, under grpcio's 8 KiB soft limit on all metadata
        ("x-tenant", "acme corp"),
        ("x-blob-bin", binary),
        ("x-empty-bin", b""),
    ]
    with channel(egress(mesh, "g-meta", [app])) as ch:
        reply, call = ch.unary_unary(method_path("Echo")).with_call(b"m", metadata=sent, timeout=CALL_TIMEOUT)
    assert reply == b"m"
    assert ("x-instance", "m0") in list(call.initial_metadata())  # response headers, app → client
    trailers = dict(call.trailing_metadata())  # trailers, app → client: what the app saw, client → app
    assert trailers.get("echo-x-tenant") == "acme corp"
    assert trailers.get("echo-x-blob-bin") == binary
    assert trailers.get("echo-x-empty-bin") == b""
    assert trailers.get("echo-x-request-id") == "meta-1"
    assert trailers.get("echo-x-long") == "v" * 4000


STATUS_CASES = [
    ("NOT_FOUND", "order 42 not found"),
    ("PERMISSION_DENIED", "100% denied: ünïcode, %41 and a / slash"),  # grpc-message is percent-encoded
    ("RESOURCE_EXHAUSTED", "quota"),
    ("UNAVAILABLE", "the app itself says unavailable"),  # from the app: the mesh must not retry it
    ("INTERNAL", ""),
]


def test_status_errors_preserved_end_to_end(mesh: GrpcMesh) -> None:
    app = serve(mesh, "g-status", mesh.b, "e0")
    got = []
    with channel(egress(mesh, "g-status", [app])) as ch:
        abort = ch.unary_unary(method_path("Abort"))
        for code, message in STATUS_CASES:
            with pytest.raises(grpc.RpcError) as caught:
                body = json.dumps({"code": code, "message": message}).encode()
                abort(body, metadata=[("x-request-id", f"abort-{code}")], timeout=CALL_TIMEOUT)
            err: grpc.Call = caught.value
            got.append((err.code().name, err.details() or ""))
    assert got == STATUS_CASES
    # each reached the app exactly once: none retried, not even UNAVAILABLE
    assert read_ledger(app.ledger) == Counter({f"abort-{code}": 1 for code, _ in STATUS_CASES})


APP_CLOCK_SLACK_S = 0.05


def test_deadline_exceeded_and_app_sees_it(mesh: GrpcMesh) -> None:
    app = serve(mesh, "g-deadline", mesh.b, "d0")
    with channel(egress(mesh, "g-deadline", [app])) as ch:
        slow = ch.unary_unary(method_path("Slow"))
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            slow(b"8", timeout=1.5)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 6  # not the app's 8 s answer
    stats = wait_for(lambda: (s := app_stats(app.port))["cancelled"] == 1 and s, timeout=3, what="app cancel")
    # grpc-timeout travelled through both sidecars: the app saw a deadline no later than the client's. The
    # slack is grpcio's, not the mesh's: the app's time_remaining() turns grpc core's deadline into wall-clock
    # time with a clock read apart from the one the deadline was set by (8 ms over was seen once under load),
    # while the sidecars only ever shorten what they forward (h2_stream: what is left of started + timeout).
    (left,) = stats["deadlines"]
    assert left is not None and 0 < left <= 1.5 + APP_CLOCK_SLACK_S, stats


def test_cancel_reaches_the_app(mesh: GrpcMesh) -> None:
    """A client cancel (RST_STREAM CANCEL) travels through both sidecars; the app stops working on it."""
    app = serve(mesh, "g-cancel", mesh.b, "c0")
    with channel(egress(mesh, "g-cancel", [app])) as ch:
        future = ch.unary_unary(method_path("Slow")).future(b"8", timeout=CALL_TIMEOUT)
        wait_for(lambda: app_stats(app.port)["active"] == 1, timeout=5, what="the call at the app")
        future.cancel()
        stats = wait_for(lambda: (s := app_stats(app.port))["cancelled"] == 1 and s, timeout=3, what="cancel")
    assert stats["active"] == 0


def test_client_connection_lost_cancels_the_call_at_the_app(mesh: GrpcMesh) -> None:
    """The caller's TCP connection just goes away mid-call (a crashed client): both sidecars reset the
    stream upstream and the app sees the cancellation; nothing stays open."""
    app = serve(mesh, "g-gone-client", mesh.b, "gc0")
    address = egress(mesh, "g-gone-client", [app])
    host, _, port = address.rpartition(":")
    enc = hpack.Encoder()
    head = atk.grpc_request(address, method_path("Slow"))
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        body = b"8"
        sock.sendall(
            atk.preface()
            + atk.headers(1, enc.encode(head))
            + atk.data(1, struct.pack(">BI", 0, len(body)) + body, end_stream=True)
        )
        wait_for(lambda: app_stats(app.port)["active"] == 1, timeout=5, what="the call at the app")
    # the socket is closed here, without RST_STREAM or GOAWAY
    stats = wait_for(lambda: (s := app_stats(app.port))["cancelled"] == 1 and s, timeout=3, what="cancel")
    assert stats["active"] == 0


# --- mesh errors and balancing ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["withdrawn", "never-provided"])
def test_no_endpoints_is_unavailable(mesh: GrpcMesh, case: str) -> None:
    service = f"g-none-{case}"
    with ExitStack() as stack:
        if case == "withdrawn":
            app = serve(mesh, service, mesh.b, "n0")
            ch = stack.enter_context(channel(egress(mesh, service, [app])))
            assert ch.unary_unary(method_path("Whoami"))(b"", timeout=CALL_TIMEOUT) == b"n0"
            unprovide(mesh.b, service)
            wait_seen(mesh.a, service, set())
        else:  # A knows nothing of the service's protocol yet: its egress port sniffs the HTTP/2 preface
            ch = stack.enter_context(channel(consume(mesh.a, service)))
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            ch.unary_unary(method_path("Whoami"))(b"", timeout=CALL_TIMEOUT)
    err: grpc.Call = caught.value
    assert err.code() is grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    assert "no healthy upstream" in err.details() and service in err.details(), err.details()
    assert time.monotonic() - started < CALL_TIMEOUT / 2  # answered by the mesh, not by a timeout


def test_mesh_error_is_trailers_only_on_the_wire(mesh: GrpcMesh) -> None:
    """Seen with a raw HTTP/2 client: one HEADERS frame with END_STREAM, :status 200, grpc-status 14."""
    reply = atk.raw_grpc_call(consume(mesh.a, "g-none-raw"), method_path("Whoami"), b"", timeout=CALL_TIMEOUT)
    status, message = reply.status()
    assert reply.trailers_only and reply.reset is None, reply
    assert dict(reply.headers).get(b":status") == b"200", reply
    assert status == str(grpc.StatusCode.UNAVAILABLE.value[0]), reply
    assert "no healthy upstream" in unquote(message) and "g-none-raw" in unquote(message), reply


def test_unknown_service_at_ingress_is_named(mesh: GrpcMesh) -> None:
    """A caller outside the mesh asks B's ingress for a service B does not provide: a trailers-only gRPC
    error at once, naming the service it asked for (x-plexus-service), not the :authority."""
    extra = [(b"x-plexus-service", b"g-nope")]
    address = mesh.b.address("ingress")
    reply = atk.raw_grpc_call(address, method_path("Whoami"), b"", extra, timeout=CALL_TIMEOUT)
    status, message = reply.status()
    print("unknown service at ingress:", reply)
    assert reply.trailers_only and status not in ("", "0"), reply
    assert "g-nope" in unquote(message), reply


def test_grpc_timeout_enforced_by_the_mesh(mesh: GrpcMesh) -> None:
    """The app is frozen (SIGSTOP) and the raw client enforces no deadline: only the mesh can end the call,
    with DEADLINE_EXCEEDED once the request's grpc-timeout passes."""
    app = serve(mesh, "g-timeout", mesh.b, "t0")
    address = egress(mesh, "g-timeout", [app])
    app.proc.signal(signal.SIGSTOP)
    try:
        extra = [(b"grpc-timeout", b"500m"), (b"x-request-id", b"frozen-1")]
        reply = atk.raw_grpc_call(address, method_path("Slow"), b"5", extra, timeout=CALL_TIMEOUT)
    finally:
        app.proc.signal(signal.SIGCONT)
    print(f"frozen app: {reply.status()} reset={reply.reset} after {reply.seconds:.2f}s")
    assert reply.status()[0] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]), reply
    assert reply.seconds < 4.0, reply  # the deadline, not the app's 5 s nor the raw client's 10 s


def test_connect_failure_retried_on_the_other_instance(mesh: GrpcMesh) -> None:
    """r0 is SIGKILLed; until its sidecar withdraws it, calls routed to it fail to connect at B, never reach
    an app, and are retried once on r1: every call succeeds, none twice."""
    apps = [serve(mesh, "g-retry", mesh.b, "r0"), serve(mesh, "g-retry", mesh.c, "r1")]
    ledger = Ledger()
    with channel(egress(mesh, "g-retry", apps)) as ch:
        echo = ch.unary_unary(method_path("Echo"))
        for _ in range(10):  # both instances in use, connections pooled
            assert echo(b"warm", timeout=CALL_TIMEOUT) == b"warm"
        apps[0].proc.kill()
        assert addresses_seen(mesh.a, "g-retry") == {a.address for a in apps}  # not withdrawn yet
        for i in range(150):
            rid = f"retry-{i}"
            md = [("x-request-id", rid)]
            ledger.call(rid, functools.partial(echo, rid.encode(), metadata=md, timeout=CALL_TIMEOUT))
    result = ledger.check(ledgers(*apps), lambda rid: rid.encode())
    assert result["sent"] == 150 and clean(result), (result, ledger.errors)
    # The warm-up calls carry a sidecar-generated x-request-id too: count only this test's ids.
    assert sum(n for rid, n in read_ledger(apps[1].ledger).items() if rid.startswith("retry-")) == 150


def test_balancing_over_two_instances(mesh: GrpcMesh) -> None:
    apps = [serve(mesh, "g-balance", mesh.b, "b0"), serve(mesh, "g-balance", mesh.c, "b1")]
    with channel(egress(mesh, "g-balance", apps)) as ch:
        whoami = ch.unary_unary(method_path("Whoami"))
        seen = Counter(whoami(b"", timeout=CALL_TIMEOUT) for _ in range(100))
    print("balance:", dict(seen))
    assert set(seen) == {b"b0", b"b1"} and min(seen.values()) >= 20, seen


def test_200_concurrent_calls_on_one_channel_max_streams_100(mesh: GrpcMesh) -> None:
    app = serve(mesh, "g-200", mesh.b, "x0", max_streams=100)
    with channel(egress(mesh, "g-200", [app])) as ch:
        slow = ch.unary_unary(method_path("Slow"))
        # One call first, so the channel has the peer's SETTINGS (its stream limit) before the burst: grpcio
        # opens streams past a limit it has not heard of yet, and even a direct call would see them refused.
        assert slow(b"0,warm", timeout=CALL_TIMEOUT) == b"x0|0,warm"
        ledger = Ledger()
        futures = {}
        for i in range(200):
            rid = f"conc-{i}"
            ledger.sent.append(rid)
            futures[rid] = slow.future(b"0.3," + rid.encode(), metadata=[("x-request-id", rid)], timeout=20)
        for rid, future in futures.items():
            try:
                ledger.ok[rid] = future.result()
            except grpc.RpcError as exc:
                ledger.errors[rid] = f"{exc.code().name}: {exc.details()}"
    result = ledger.check(ledgers(app), lambda rid: b"x0|0.3," + rid.encode())
    stats = app_stats(app.port)
    print("app max concurrent:", stats["max_active"])
    assert result["sent"] == 200 and clean(result), (result, ledger.errors)
    assert stats["calls"]["Slow"] == 201


def test_server_stream_10k_to_slow_reader_bounded_memory(mesh: GrpcMesh) -> None:
    count, size = 10_000, 6144  # 60 MB in all: more than the memory bound, so buffering it all would show
    app = serve(mesh, "g-slowread", mesh.b, "r0")
    with channel(egress(mesh, "g-slowread", [app])) as ch:
        ch.unary_unary(method_path("Whoami"))(b"", timeout=CALL_TIMEOUT)  # warm: connections and buffers up
        idle = {"a": rss_kib(mesh.a.pid), "b": rss_kib(mesh.b.pid)}
        peak = dict(idle)

        def sample() -> None:
            for key, proc in (("a", mesh.a), ("b", mesh.b)):
                peak[key] = max(peak[key], rss_kib(proc.pid))

        stream = ch.unary_stream(method_path("ServerStream"))(b"%d,%d" % (count, size), timeout=60)
        expected = 0
        for message in stream:
            assert message[:8] == b"%08d" % expected and len(message) == size, (expected, message[:16])
            expected += 1
            if expected == 10:
                for _ in range(10):  # a reader that stops: the app would fill every buffer on the path
                    time.sleep(0.1)
                    sample()
            elif expected % 500 == 0:
                time.sleep(0.02)  # and then reads slowly
                sample()
        sample()
    assert expected == count
    growth = {k: (peak[k] - idle[k]) // 1024 for k in idle}
    print(f"RSS idle KiB {idle}, growth MiB {growth}")
    assert growth["a"] < 50 and growth["b"] < 50, growth


# --- failures of the provider app ---------------------------------------------------------------------------


def test_upstream_goaway_mid_traffic_loses_nothing(mesh: GrpcMesh) -> None:
    """App g0 stops gracefully (grpc server.stop(grace): GOAWAY, in-flight calls finish) while calls
    run; g1 stays. Streams that never reached g0 are retried on g1, the rest finish on g0: none lost or
    failed.
    """
    apps = [serve(mesh, "g-goaway", mesh.b, "g0", grace=3), serve(mesh, "g-goaway", mesh.c, "g1")]
    ledger = Ledger()
    stop = threading.Event()
    with channel(egress(mesh, "g-goaway", apps)) as ch:
        echo, slow = ch.unary_unary(method_path("Echo")), ch.unary_unary(method_path("Slow"))

        def worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                rid = f"ga-{w}-{i}"
                i += 1
                md = [("x-request-id", rid)]
                # Odd workers' calls stay on g0 a while, so some are in flight when its GOAWAY comes.
                method, body = (slow, b"0.2," + rid.encode()) if w % 2 else (echo, rid.encode())
                ledger.call(rid, functools.partial(method, body, metadata=md, timeout=CALL_TIMEOUT))

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.7)
            apps[0].proc.signal(signal.SIGTERM)  # the app's graceful stop
            time.sleep(1.5)
        finally:
            stop.set()
            for t in threads:
                t.join(CALL_TIMEOUT + 2)
    apps[0].proc.proc.wait(5)

    def expected(rid: str) -> bytes:
        return rid.encode() if int(rid.split("-")[1]) % 2 == 0 else b"|0.2," + rid.encode()

    got = {rid: reply[reply.index(b"|") :] if b"|" in reply else reply for rid, reply in ledger.ok.items()}
    ledger.ok = got
    received = ledgers(*apps)
    result = ledger.check(received, expected)
    per_app = {app.proc.argv[3]: sum(read_ledger(app.ledger).values()) for app in apps}
    print("calls per app:", per_app)
    assert result["sent"] > 50 and clean(result), (result, ledger.errors)
    assert per_app["g0"] > 0 and per_app["g1"] > 0


def test_unpublish_one_instance_under_traffic_loses_nothing(mesh: GrpcMesh) -> None:
    """B withdraws w0 (DELETE /v1/providers) while calls run; w1 stays. Calls still routed to B after its
    drain are refused there before reaching an app and retried on w1: none lost, failed or duplicated."""
    apps = [serve(mesh, "g-unpub", mesh.b, "w0"), serve(mesh, "g-unpub", mesh.c, "w1")]
    ledger = Ledger()
    stop = threading.Event()
    with channel(egress(mesh, "g-unpub", apps)) as ch:
        echo = ch.unary_unary(method_path("Echo"))

        def worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                rid = f"up-{w}-{i}"
                i += 1
                md = [("x-request-id", rid)]
                ledger.call(rid, functools.partial(echo, rid.encode(), metadata=md, timeout=CALL_TIMEOUT))

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            unprovide(mesh.b, "g-unpub")
            time.sleep(1.5)
        finally:
            stop.set()
            for t in threads:
                t.join(CALL_TIMEOUT + 2)
    result = ledger.check(ledgers(*apps), lambda rid: rid.encode())
    per_app = [sum(read_ledger(app.ledger).values()) for app in apps]
    print("calls per app:", per_app)
    assert result["sent"] > 50 and clean(result), (result, ledger.errors)
    assert per_app[0] > 0 and per_app[1] > 0


def test_refused_streams_retried_once_on_the_other_instance(mesh: GrpcMesh) -> None:
    """Instance z0 answers every stream with RST_STREAM REFUSED_STREAM (never processed); z1 is a normal
    app. Every call succeeds, each id reaching z1 exactly once."""
    apps = [serve(mesh, "g-refused", mesh.b, "z0", refuse=True), serve(mesh, "g-refused", mesh.c, "z1")]
    ledger = Ledger()
    with channel(egress(mesh, "g-refused", apps)) as ch:
        echo = ch.unary_unary(method_path("Echo"))
        for i in range(60):
            rid = f"refused-{i}"
            md = [("x-request-id", rid)]
            ledger.call(rid, functools.partial(echo, rid.encode(), metadata=md, timeout=CALL_TIMEOUT))
    refused = read_ledger(apps[0].ledger)
    result = ledger.check(read_ledger(apps[1].ledger), lambda rid: rid.encode())
    print(f"streams refused by z0: {sum(refused.values())}")
    assert result["sent"] == 60 and clean(result), (result, ledger.errors)
    assert sum(refused.values()) > 0  # the retry was exercised


def test_refused_everywhere_fails_fast_without_a_retry_storm(mesh: GrpcMesh) -> None:
    app = serve(mesh, "g-refused-all", mesh.b, "zz", refuse=True)
    with channel(egress(mesh, "g-refused-all", [app])) as ch:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            ch.unary_unary(method_path("Echo"))(b"x", metadata=[("x-request-id", "rz")], timeout=CALL_TIMEOUT)
        elapsed = time.monotonic() - started
    err: grpc.Call = caught.value
    attempts = read_ledger(app.ledger)["rz"]
    print(f"refused everywhere: {err.code()} {err.details()!r} after {elapsed:.2f}s, {attempts} attempts")
    assert err.code() is grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    # Bounded: the consumer sidecar tries twice (a refused stream was never processed), and the provider
    # sidecar tries its app 1 + LOCAL_REFUSAL_RETRIES times per try, with short pauses.
    assert 1 <= attempts <= 2 * (1 + LOCAL_REFUSAL_RETRIES) and elapsed < CALL_TIMEOUT / 2


def test_app_killed_with_calls_in_flight_fails_them_fast(mesh: GrpcMesh) -> None:
    app = serve(mesh, "g-kill", mesh.b, "k0")
    with channel(egress(mesh, "g-kill", [app])) as ch:
        slow = ch.unary_unary(method_path("Slow"))
        futures = [
            slow.future(b"30", metadata=[("x-request-id", f"kill-{i}")], timeout=30) for i in range(20)
        ]
        wait_for(lambda: app_stats(app.port)["active"] == 20, timeout=5, what="20 calls at the app")
        app.proc.kill()
        killed = time.monotonic()
        outcomes: list[str] = []
        details: set[str] = set()
        for future in futures:
            try:
                future.result(timeout=max(0.1, killed + 5 - time.monotonic()))
                outcomes.append("ok")
            except grpc.FutureTimeoutError:
                outcomes.append("hung")
                future.cancel()
            except grpc.RpcError as exc:
                outcomes.append(exc.code().name)
                details.add(f"{exc.code().name}: {exc.details()}")
    print("outcomes after SIGKILL:", Counter(outcomes), sorted(details))
    assert "hung" not in outcomes and "ok" not in outcomes, Counter(outcomes)
    # An upstream reset is UNAVAILABLE in gRPC's terms (Envoy maps it so too), not CANCELLED or UNKNOWN.
    assert set(outcomes) == {"UNAVAILABLE"}, Counter(outcomes)

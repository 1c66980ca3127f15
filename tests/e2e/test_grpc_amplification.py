"""Retry amplification over three gRPC hops, through real processes: grpcio client → sidecar A → sidecar B →
app "mid" (a grpcio app that calls on) → sidecar B → sidecar C → app "last" (UNAVAILABLE always). A and B
each retry UNAVAILABLE up to 3 times: without retry budgets the last app would see up to 16 tries per call
and the middle one 4. The HTTP/1.1 twin is in test_resilience_http.py; both share the budget code, and this
test holds the gRPC path (trailers-only errors, grpc-status retry_on) to the same bound.

Run as a script, this module is the app::

    python test_grpc_amplification.py NAME LEDGER READY_FILE [FORWARD_TO]

``Echo`` appends the call's x-request-id to LEDGER; without FORWARD_TO it aborts UNAVAILABLE, with it it calls
``Echo`` at FORWARD_TO (a sidecar's egress) with the same request id and answers what that answered.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from plexus.testing.grpc_serve import serve_until_signal
from plexus.testing.procs import ManagedProcess

SERVICE = "plexus.test.Amp"
OPTIONS = (("grpc.enable_http_proxy", 0),)


def serve(name: str, ledger_path: str, ready_file: str, forward_to: str | None) -> None:
    lock = threading.Lock()
    ledger = open(ledger_path, "a", buffering=1)  # noqa: SIM115 - lives with the app
    onward = grpc.insecure_channel(forward_to, options=OPTIONS) if forward_to else None

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        rid = dict(context.invocation_metadata()).get("x-request-id", "-")
        with lock:
            ledger.write(f"{rid}\n")
        if onward is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{name} is failing")
        try:
            reply: bytes = onward.unary_unary(f"/{SERVICE}/Echo")(
                request, metadata=[("x-request-id", str(rid))], timeout=20
            )
        except grpc.RpcError as exc:
            context.abort(exc.code(), f"{name}: {exc.details()}")
        return reply

    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    serve_until_signal(SERVICE, handlers, ready_file, workers=64)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    sys.exit(0)

from .grpc_apps import Group, consume, provide, start_registry, start_sidecar, wait_seen  # noqa: E402


def _routes(service: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {service}}}
spec:
  hosts: [{service}]
  http:
  - retries: {{attempts: 3, retryOn: unavailable}}
    route: [{{destination: {{host: {service}}}}}]
"""


def _start_app(group: Group, tmp: Path, name: str, forward_to: str | None = None) -> int:
    ready = tmp / f"{name}.ready.json"
    argv = [sys.executable, str(Path(__file__)), name, str(tmp / f"{name}.ledger"), str(ready)]
    proc = group.add(ManagedProcess([*argv, *([forward_to] if forward_to else [])], ready_file=ready))
    return int(proc.address("listen").rpartition(":")[2])


def _received(tmp: Path, name: str) -> int:
    path = tmp / f"{name}.ledger"
    return len(path.read_text().split()) if path.exists() else 0


@pytest.fixture
def group() -> Iterator[Group]:
    g = Group()
    try:
        yield g
    finally:
        g.stop_all()


def test_three_grpc_hops_with_the_last_failing_keep_amplification_bounded(
    group: Group, tmp_path: Path
) -> None:
    (tmp_path / "a.yaml").write_text(_routes("amp-mid"))
    (tmp_path / "b.yaml").write_text(_routes("amp-last"))
    registry = start_registry(group).address("listen")
    car_c = start_sidecar(group, registry, "--workload", "amp-c")
    car_b = start_sidecar(group, registry, "--routes", str(tmp_path / "b.yaml"), "--workload", "amp-b")
    car_a = start_sidecar(group, registry, "--routes", str(tmp_path / "a.yaml"), "--workload", "amp-a")
    last = provide(car_c, "amp-last", _start_app(group, tmp_path, "last"))
    to_last = consume(car_b, "amp-last")
    wait_seen(car_b, "amp-last", {last})
    mid = provide(car_b, "amp-mid", _start_app(group, tmp_path, "mid", to_last))
    to_mid = consume(car_a, "amp-mid")
    wait_seen(car_a, "amp-mid", {mid})

    clients, each = 20, 8
    sent = clients * each

    def client(c: int) -> list[grpc.StatusCode]:
        codes = []
        with grpc.insecure_channel(to_mid, options=OPTIONS) as ch:
            echo = ch.unary_unary(f"/{SERVICE}/Echo")
            for i in range(each):
                try:
                    echo(b"x", metadata=[("x-request-id", f"amp-{c}-{i}")], timeout=20)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
        return codes

    with ThreadPoolExecutor(clients) as pool:
        codes = [code for codes in pool.map(client, range(clients)) for code in codes]
    at_mid, at_last = _received(tmp_path, "mid"), _received(tmp_path, "last")
    print(f"sent={sent} mid saw={at_mid} ({at_mid / sent:.2f}x) last saw={at_last} ({at_last / sent:.2f}x)")
    assert codes == [grpc.StatusCode.UNAVAILABLE] * sent  # every call fails, none is lost or hangs
    # Each hop's retries in flight ≤ max(3, 20 % of its requests in flight): well under 4x and 16x.
    assert sent < at_mid <= 1.6 * sent + 10 and at_mid < at_last <= 3.0 * sent + 20, (at_mid, at_last)

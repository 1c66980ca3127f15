"""TESTING.md §B attacks against real sidecars: raw HTTP/2 attackers on provider sidecar B's shared ingress
and on consumer sidecar A's per-service egress port, while a normal grpcio client calls A → B → app.

Each attack must be answered with GOAWAY to the attacker (fast: within seconds, not after the whole attack),
counted under its reason in ``plexus_downstream_rejects_total`` at the attacked sidecar, forward nothing to
the app (the attacker's streams name ``Bidi``, which the app counts the moment a call starts, and normal
traffic uses ``Echo``), and leave every other connection working.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from plexus.testing.procs import ManagedProcess, wait_for

from . import h2_attack_clients as atk
from .grpc_apps import (
    Group,
    app_stats,
    channel,
    consume,
    counter,
    method_path,
    prometheus,
    provide,
    start_app,
    start_registry,
    start_sidecars,
    wait_seen,
)

SERVICE = "h2-attack"
REJECTS = "plexus_downstream_rejects_total"
CALL_TIMEOUT = 10.0


@dataclass
class AttackMesh:
    group: Group
    a: ManagedProcess  # consumer sidecar
    b: ManagedProcess  # provider sidecar
    app_port: int
    egress: str  # A's per-service egress address for SERVICE
    normal: grpc.Channel  # one long-lived grpcio channel A → B → app, opened before any attack

    def target(self, where: str) -> tuple[ManagedProcess, str, str | None]:
        """(attacked sidecar, its address, x-plexus-service to send) for ``ingress`` or ``egress``."""
        if where == "ingress":
            return self.b, self.b.address("ingress"), SERVICE
        return self.a, self.egress, None

    def echo(self, body: bytes) -> bytes:
        reply: bytes = self.normal.unary_unary(method_path("Echo"))(body, timeout=CALL_TIMEOUT)
        return reply


@pytest.fixture(scope="module")
def h2mesh() -> Iterator[AttackMesh]:
    group = Group()
    normal: grpc.Channel | None = None
    try:
        registry = start_registry(group)
        b, a = start_sidecars(group, registry.address("listen"), 2)
        _, port = start_app(group, "victim")
        published = provide(b, SERVICE, port)
        egress = consume(a, SERVICE)
        wait_seen(a, SERVICE, {published})
        normal = channel(egress)
        yield AttackMesh(group, a, b, port, egress, normal)
    finally:
        if normal is not None:
            normal.close()
        group.stop_all()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, h2mesh: AttackMesh) -> Iterator[None]:
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        print(h2mesh.group.logs())


def _bidi_calls(mesh: AttackMesh) -> int:
    return int(app_stats(mesh.app_port)["calls"].get("Bidi", 0))


Head = list[tuple[bytes, bytes]]
ATTACKS: dict[str, tuple[Callable[[Head], Iterator[bytes]], str, int]] = {
    # name: (chunks, reason counted, GOAWAY error code)
    "continuation_flood": (atk.continuation_flood, "h2_continuation_flood", -1),  # any code
    "hpack_bomb": (atk.hpack_bomb, "h2_header_list_too_large", atk.ENHANCE_YOUR_CALM),
    "settings_flood": (lambda _: atk.settings_flood(), "h2_settings_flood", atk.ENHANCE_YOUR_CALM),
    "ping_flood": (lambda _: atk.ping_flood(), "h2_ping_flood", atk.ENHANCE_YOUR_CALM),
    "oversized_frame": (lambda _: atk.oversized_frame(), "h2_frame_too_large", atk.FRAME_SIZE_ERROR),
}


@pytest.mark.parametrize("where", ["ingress", "egress"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_rejected_fast_counted_nothing_forwarded(h2mesh: AttackMesh, where: str, name: str) -> None:
    make, reason, code = ATTACKS[name]
    sidecar, address, service = h2mesh.target(where)
    assert h2mesh.echo(b"before") == b"before"
    rejects_before = counter(prometheus(sidecar), REJECTS, reason=reason)
    calls_before = _bidi_calls(h2mesh)

    head = atk.grpc_request(address, method_path("Bidi"), service)
    outcome = atk.attack(address, make(head))
    print(f"{name} on {where}: {outcome.describe()}")

    assert outcome.goaways, f"no GOAWAY to the attacker: {outcome.describe()}"
    if code >= 0:
        assert outcome.goaways[-1].error_code == code, outcome.describe()
    assert outcome.closed, f"the attacker's connection stays open: {outcome.describe()}"
    wait_for(
        lambda: counter(prometheus(sidecar), REJECTS, reason=reason) >= rejects_before + 1,
        timeout=3,
        what=f'{REJECTS}{{reason="{reason}"}} at the {where} sidecar',
    )
    assert _bidi_calls(h2mesh) == calls_before  # nothing reached the app
    assert h2mesh.echo(b"after") == b"after"  # the long-lived connection and the app are fine
    with channel(h2mesh.egress) as fresh:  # and a new connection works too
        assert fresh.unary_unary(method_path("Echo"))(b"new", timeout=CALL_TIMEOUT) == b"new"


@pytest.mark.parametrize("where", ["ingress", "egress"])
def test_rapid_reset_gets_goaway_while_normal_calls_succeed(h2mesh: AttackMesh, where: str) -> None:
    sidecar, address, service = h2mesh.target(where)
    rejects_before = counter(prometheus(sidecar), REJECTS, reason="h2_rapid_reset")
    calls_before = _bidi_calls(h2mesh)

    results: list[bool] = []
    errors: list[str] = []
    stop = threading.Event()

    def normal_client() -> None:  # a well-behaved grpcio client on its own connection
        with channel(h2mesh.egress) as ch:
            echo = ch.unary_unary(method_path("Echo"))
            i = 0
            while not stop.is_set() or i < 20:
                body = b"n%d" % i
                try:
                    results.append(echo(body, timeout=CALL_TIMEOUT) == body)
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")
                i += 1

    worker = threading.Thread(target=normal_client)
    worker.start()
    try:
        head = atk.grpc_request(address, method_path("Bidi"), service)
        outcome = atk.attack(address, atk.rapid_reset(head))
    finally:
        stop.set()
        worker.join(30)
    forwarded = _bidi_calls(h2mesh) - calls_before
    print(f"rapid reset on {where}: {outcome.describe()}; streams that reached the app: {forwarded}")
    print(f"normal client: {len(results)} calls, {results.count(False)} wrong, errors: {errors[:3]}")

    assert outcome.goaways, outcome.describe()
    assert outcome.goaways[-1].error_code == atk.ENHANCE_YOUR_CALM, outcome.describe()
    assert outcome.closed, outcome.describe()
    # Cut off within the first 1,000 of the 10,000 pairs (how many the attacker could still write into socket
    # buffers says nothing): the GOAWAY names the last stream the sidecar processed.
    assert outcome.goaways[-1].last_stream_id < 2 * 1_000, outcome.describe()
    assert counter(prometheus(sidecar), REJECTS, reason="h2_rapid_reset") >= rejects_before + 1
    assert not errors and all(results) and len(results) >= 20
    # A stream reset in the same read that opened it must cost the app nothing. Each batch of pairs is one
    # write, but the sidecar's reads may still cut a pair at a read boundary (a loaded machine reads in
    # smaller pieces), so at most one stream per read the attack lasted may reach the app: a handful.
    assert forwarded <= 3, f"{forwarded} reset streams were forwarded to the app"

"""``client.grpc_channel`` in both modes, through a real registry, real sidecars and grpcio servers.

Direct mode balances per call over the service's gRPC instances and follows the registry; mesh mode goes
through the sidecar's egress. Meshed and direct callers and providers meet in all four combinations.
"""

from __future__ import annotations

import re
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from plexus import sdk
from plexus.sdk import Client
from plexus.testing.procs import wait_for

from .grpc_apps import METHOD, GrpcApp, call


@pytest.fixture
def grpc_app() -> Iterator[Callable[[str], GrpcApp]]:
    apps: list[GrpcApp] = []

    def make(name: str) -> GrpcApp:
        app = GrpcApp(name)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def _sidecar(procs: Any, registry: str) -> dict[str, str]:
    proc = procs.plexus("sidecar", "--registry", registry, "--app-address", "127.0.0.1",
                        "--ingress", "127.0.0.1:0", "--api", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                        "--egress", "127.0.0.1:0", "--drain-time", "0.5", "--health-interval", "0.5")
    return {key: proc.address(key) for key in ("ingress", "egress", "api", "admin")}


def test_direct_channel_balances_and_names_the_service(registry: str, clients: list[Client],
                                                       grpc_app: Callable[[str], GrpcApp]) -> None:
    a, b = grpc_app("ga"), grpc_app("gb")
    pa, pb = sdk.connect(mode="direct", registry=registry), sdk.connect(mode="direct", registry=registry)
    consumer = sdk.connect(mode="direct", registry=registry)
    clients += [pa, pb, consumer]
    pa.publish("greeter", a.port, protocol="grpc")
    pb.publish("greeter", b.port, protocol="grpc")
    assert consumer.subscribe("greeter").wait_for_instances(2, timeout=5)

    channel = consumer.grpc_channel("greeter")
    answers = [call(channel, f"r{i}") for i in range(10)]
    assert [x["request"] for x in answers] == [f"r{i}" for i in range(10)]
    assert Counter(x["app"] for x in answers) == {"ga": 5, "gb": 5}  # round robin, per call
    assert set(a.authorities + b.authorities) == {"greeter"}
    assert grpc.channel_ready_future(channel).result(timeout=5) is None  # connectivity is reported
    for _ in range(2):  # a watcher that comes after another left is told the state too
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append, try_to_connect=True)
        wait_for(lambda s=states: grpc.ChannelConnectivity.READY in s, 5, what="READY")
        channel.unsubscribe(states.append)


def test_subscribe_by_protocol_and_unknown_protocols(registry: str, clients: list[Client],
                                                    grpc_app: Callable[[str], GrpcApp]) -> None:
    app = grpc_app("only-grpc")
    http_side, grpc_side = sdk.connect(mode="direct", registry=registry), sdk.connect(mode="direct",
                                                                                      registry=registry)
    consumer = sdk.connect(mode="direct", registry=registry)
    clients += [http_side, grpc_side, consumer]
    http_side.publish("mixed", 18090)  # an HTTP instance nobody serves: the gRPC channel must never pick it
    grpc_side.publish("mixed", app.port, protocol="grpc")
    every = consumer.subscribe("mixed")
    assert every.wait_for_instances(2, timeout=5), every
    only_grpc = consumer.subscribe("mixed", protocol="grpc")
    assert [i.protocol for i in only_grpc.instances] == ["grpc"]
    channel = consumer.grpc_channel("mixed")
    assert {call(channel, str(i))["app"] for i in range(6)} == {"only-grpc"}
    with pytest.raises(sdk.ValidationError, match="protocol"):
        consumer.subscribe("mixed", protocol="thrift")
    with pytest.raises(sdk.ValidationError, match="protocol"):
        grpc_side.publish("mixed", app.port, protocol="GRPC")


def test_a_call_that_never_left_is_retried_on_another_instance(
        registry: str, procs: Any, clients: list[Client], grpc_app: Callable[[str], GrpcApp],
        dead_address: str) -> None:
    app = grpc_app("alive")
    bare_sidecar = _sidecar(procs, registry)  # serves no local service: it answers unknown_service
    live, dead = sdk.connect(mode="direct", registry=registry), sdk.connect(mode="direct", registry=registry)
    ghost = sdk.connect(mode="direct", registry=registry)
    consumer = sdk.connect(mode="direct", registry=registry)
    clients += [live, dead, ghost, consumer]
    live.publish("flaky", app.port, protocol="grpc")
    dead.publish("flaky", int(dead_address.rsplit(":", 1)[1]), protocol="grpc")  # refuses connections
    live.publish("stale", app.port, protocol="grpc")
    # A stale instance behind a sidecar whose app has gone: the sidecar's local reply names the reason.
    ghost.publish("stale", int(bare_sidecar["ingress"].rsplit(":", 1)[1]), protocol="grpc")
    for service in ("flaky", "stale"):
        assert consumer.subscribe(service).wait_for_instances(2, timeout=5), service
        channel = consumer.grpc_channel(service)
        assert [call(channel, f"{service}{i}")["app"] for i in range(8)] == ["alive"] * 8
    assert app.received == [f"{s}{i}" for s in ("flaky", "stale") for i in range(8)]  # each exactly once
    metrics = urllib.request.urlopen(f"http://{bare_sidecar['admin']}/stats/prometheus", timeout=5).read()
    assert re.search(rb'plexus_local_replies_total\{[^}]*reason="unknown_service"[^}]*\} [1-9]', metrics)

    empty = consumer.grpc_channel("nobody-serves-this")
    with pytest.raises(grpc.RpcError) as caught:
        empty.unary_unary(METHOD)(b"?", timeout=1)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "nobody-serves-this" in caught.value.details()


def test_direct_channel_follows_instances_added_and_removed(registry: str, clients: list[Client],
                                                            grpc_app: Callable[[str], GrpcApp]) -> None:
    first, second = grpc_app("first"), grpc_app("second")
    p1, p2 = sdk.connect(mode="direct", registry=registry), sdk.connect(mode="direct", registry=registry)
    consumer = sdk.connect(mode="direct", registry=registry)
    clients += [p1, p2, consumer]
    p1.publish("moving", first.port, protocol="grpc")
    subscription = consumer.subscribe("moving")
    assert subscription.wait_for_instances(1, timeout=5)
    channel = consumer.grpc_channel("moving")
    ledger = _Ledger()
    stop = threading.Event()
    caller = threading.Thread(target=ledger.call_until, args=(channel, "c", stop))
    caller.start()
    try:
        wait_for(lambda: len(first.received) >= 5, 5, what="calls to the first instance")
        p2.publish("moving", second.port, protocol="grpc")
        wait_for(lambda: len(second.received) >= 5, 5, what="calls to the added instance")
        p1.unpublish("moving")  # the app keeps serving: calls already routed to it finish
        assert subscription.wait(5, lambda s: len(s.instances) == 1)
        wait_for(lambda: channel.addresses == [f"127.0.0.1:{second.port}"], 5, what="the channel's set")
        # The caller calls one at a time: once two more calls have ended, none is left that picked the
        # removed instance before the push.
        done = ledger.finished()
        wait_for(lambda: ledger.finished() >= done + 2, 5, what="two more calls")
        before = len(first.received)
        wait_for(lambda: len(second.received) >= 30, 10, what="more calls to the remaining instance")
        assert len(first.received) == before  # no call picked the removed instance after the push
    finally:
        stop.set()
        caller.join(10)
    ledger.check(first, second)


def test_four_mesh_direct_combinations_with_a_ledger(registry: str, procs: Any, clients: list[Client],
                                                    grpc_app: Callable[[str], GrpcApp]) -> None:
    provider_sidecar, consumer_sidecar = _sidecar(procs, registry), _sidecar(procs, registry)
    meshed_app, direct_app = grpc_app("meshed-provider"), grpc_app("direct-provider")
    meshed_provider = sdk.connect(mode="mesh", sidecar_api=provider_sidecar["api"])
    direct_provider = sdk.connect(mode="direct", registry=registry)
    meshed_consumer = sdk.connect(mode="mesh", sidecar_api=consumer_sidecar["api"])
    direct_consumer = sdk.connect(mode="direct", registry=registry)
    clients += [meshed_provider, direct_provider, meshed_consumer, direct_consumer]
    with pytest.raises(sdk.ValidationError, match="protocol"):
        meshed_provider.publish("g-meshed", meshed_app.port, protocol="h2")
    meshed_provider.publish("g-meshed", meshed_app.port, protocol="grpc")
    direct_provider.publish("g-direct", direct_app.port, protocol="grpc")
    for consumer in (meshed_consumer, direct_consumer):
        for service in ("g-meshed", "g-direct"):
            assert consumer.subscribe(service).wait_for_instances(1, timeout=10), (consumer, service)
    meshed_view = direct_consumer.subscribe("g-meshed")
    assert meshed_view.addresses == [provider_sidecar["ingress"]]  # a direct caller dials the sidecar
    through_sidecar = meshed_consumer.subscribe("g-meshed", protocol="grpc")
    assert [i.protocol for i in through_sidecar.instances] == ["grpc"]
    only_http = meshed_consumer.subscribe("g-meshed", protocol="http")
    assert only_http.current is not None and only_http.instances == ()  # a set came, with no HTTP instance

    ledger = _Ledger()
    expected = {"g-meshed": "meshed-provider", "g-direct": "direct-provider"}
    jobs = [(consumer, service) for consumer in (meshed_consumer, direct_consumer) for service in expected]
    channels = {(c.mode, s): c.grpc_channel(s) for c, s in jobs}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for n in range(40):
            for (mode, service), channel in channels.items():
                pool.submit(ledger.call_one, channel, f"{mode}-{service}-{n}", expected[service])
    counts = ledger.check(meshed_app, direct_app)
    assert counts["ok"] == 160, ledger.errors[:5]
    for mode in ("mesh", "direct"):
        assert ledger.paths[(mode, "meshed-provider")] == 40
        assert ledger.paths[(mode, "direct-provider")] == 40
    assert set(meshed_app.authorities) == {"g-meshed"}  # the provider sidecar passes :authority on


class _Ledger:
    """sent / answered / failed per request id; lost, misdelivered and duplicated counted at the end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: set[str] = set()
        self.answered: set[str] = set()
        self.failed: set[str] = set()
        self.misdelivered = 0
        self.errors: list[str] = []
        self.paths: Counter[tuple[str, str]] = Counter()

    def call_one(self, channel: grpc.Channel, request_id: str, expected_app: str | None = None) -> None:
        with self.lock:
            self.sent.add(request_id)
        try:
            answer = call(channel, request_id)
        except grpc.RpcError as exc:
            with self.lock:
                self.failed.add(request_id)
                self.errors.append(f"{request_id}: {exc.code()} {exc.details()}")
            return
        with self.lock:
            if answer["request"] != request_id or (expected_app and answer["app"] != expected_app):
                self.misdelivered += 1
                self.errors.append(f"{request_id}: answered {answer}")
            else:
                self.answered.add(request_id)
                self.paths[(request_id.split("-", 1)[0], answer["app"])] += 1

    def finished(self) -> int:
        with self.lock:
            return len(self.answered) + len(self.failed)

    def call_until(self, channel: grpc.Channel, prefix: str, stop: threading.Event) -> None:
        n = 0
        while not stop.is_set():
            self.call_one(channel, f"{prefix}{n}")
            n += 1
            stop.wait(0.01)

    def check(self, *apps: GrpcApp) -> dict[str, int]:
        received = Counter(r for app in apps for r in app.received)
        counts = {
            "sent": len(self.sent), "ok": len(self.answered), "errors": len(self.failed),
            "lost": len(self.sent - self.answered - self.failed), "misdelivered": self.misdelivered,
            "duplicated": sum(1 for n in received.values() if n > 1),
        }
        print("ledger:", counts)
        assert (counts["lost"], counts["misdelivered"], counts["duplicated"]) == (0, 0, 0), counts
        assert counts["errors"] == 0, self.errors[:5]
        return counts

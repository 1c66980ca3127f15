"""Both registry clients against a real `plexus registry`, and against a scripted one that misbehaves.

Tests taking ``kind`` run once for the grpcio ``RegistryClient`` and once for the asyncio
``AsyncRegistryClient`` (over grpc_h2), the latter through ``AsyncClientOnThread`` (registry_client_helpers).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import uvloop
from registry_client_helpers import KINDS, factory

from plexus.clients.convert import instance_from_pb, instance_to_pb, service_set_from_pb, service_set_to_pb
from plexus.clients.registry import RegistryClient
from plexus.clients.registry_async import AsyncRegistryClient
from plexus.discovery.model import Instance, ServiceSet, SetState
from plexus.proto import registry_pb2 as pb
from plexus.proto import registry_pb2_grpc as pb_grpc
from plexus.testing.procs import ManagedProcess, free_port, wait_for

FAST = {"reconnect_min": 0.05, "reconnect_max": 0.2}


def start_registry(procs: Any, listen: str = "127.0.0.1:0") -> ManagedProcess:
    proc: ManagedProcess = procs.plexus(
        "registry", "--listen", listen, "--admin", "127.0.0.1:0", "--warmup", "0", "--lease-grace", "1"
    )
    return proc


def test_conversion_round_trips_every_field() -> None:
    inst = Instance(
        "orders",
        "[::1]:8080",
        protocol="dubbo",
        version="v2",
        labels={"a": "b"},
        zone="z1",
        unit="u1",
        weight=7,
        identity="spiffe://td/ns/x/sa/y",
        mtls=True,
        workload="w",
        meshed=True,
    )
    assert instance_from_pb(instance_to_pb(inst)) == inst
    sset = ServiceSet("orders", 42, (inst,), SetState.RESTORED)
    assert service_set_from_pb(service_set_to_pb(sset)) == sset


@pytest.mark.parametrize("kind", KINDS)
def test_start_never_raises_while_the_registry_is_down_and_it_catches_up_later(procs: Any, kind: str) -> None:
    port = free_port()  # the client must know the address before any registry listens there
    addr = f"127.0.0.1:{port}"
    client = factory(kind)(addr, publisher_id="early", **FAST)
    client.set_published([Instance("early", "10.9.0.1:80")])
    seen: list[ServiceSet] = []
    client.watch("early", seen.append)
    client.start()
    try:
        assert not client.connected
        assert client.wait_for("early", 0.3) is None
        procs.plexus("registry", "--listen", addr, "--admin", "127.0.0.1:0", "--warmup", "0")
        got = client.wait_for("early", 10.0)
        wait_for(lambda: seen and seen[-1].instances, 10.0, what="own instance pushed back")
        assert got is not None
        assert [i.address for i in seen[-1].instances] == ["10.9.0.1:80"]
        assert client.connected
    finally:
        client.close()


class ScriptedRegistry(pb_grpc.RegistryServicer):
    """Pushes the versions it is given for any watched service, whatever order they come in."""

    def __init__(self, versions: list[int]) -> None:
        self.versions = versions

    def Subscribe(
        self, request_iterator: Iterator[pb.SubscribeRequest], context: Any
    ) -> Iterator[pb.ServiceUpdate]:
        context.send_initial_metadata(())
        for request in request_iterator:
            for name in request.add:
                for version in self.versions:
                    addr = f"10.10.0.{version}:80"
                    yield pb.ServiceUpdate(
                        service=name, version=version, instances=[pb.Instance(service=name, address=addr)]
                    )
        threading.Event().wait(30)


@pytest.fixture
def scripted() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_RegistryServicer_to_server(ScriptedRegistry([5, 3, 7, 7, 6, 9]), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_set_that_is_not_newer_is_ignored(scripted: str, kind: str) -> None:
    client = factory(kind)(scripted)
    got: list[int] = []
    client.watch("svc", lambda s: got.append(s.version))
    client.start()
    try:
        wait_for(lambda: got and got[-1] == 9, 5.0, what="version 9")
        assert got == [5, 7, 9]
        cached = client.current("svc")
        assert cached is not None and cached.version == 9
        late: list[int] = []
        client.watch("svc", lambda s: late.append(s.version))
        assert late == [9]  # called at once with the cached set
    finally:
        client.close()


def test_usable_from_a_uvloop_application(procs: Any) -> None:
    reg = procs.plexus("registry", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--warmup", "0")
    addr = reg.address("listen")

    async def app() -> ServiceSet:
        loop = asyncio.get_running_loop()
        arrived: asyncio.Queue[ServiceSet] = asyncio.Queue()
        client = RegistryClient(addr, publisher_id="uv")
        client.start()
        client.set_published([Instance("uv", "10.11.0.1:80")])

        def marshal(sset: ServiceSet) -> None:  # the sidecar's way: hop from the client thread onto the loop
            loop.call_soon_threadsafe(arrived.put_nowait, sset)

        client.watch("uv", marshal)
        try:
            while True:
                sset = await asyncio.wait_for(arrived.get(), 10)
                if sset.instances:
                    return sset
        finally:
            await asyncio.to_thread(client.close)

    sset = uvloop.run(app())
    assert [i.address for i in sset.instances] == ["10.11.0.1:80"]
    assert isinstance(reg, ManagedProcess)


@pytest.mark.parametrize("kind", KINDS)
def test_unwatch_stops_callbacks_and_keeps_the_last_set(procs: Any, kind: str) -> None:
    addr = start_registry(procs).address("listen")
    make = factory(kind)
    publisher = make(addr, publisher_id="unwatch-pub")
    consumer = make(addr)
    publisher.start()
    consumer.start()
    try:
        got: list[ServiceSet] = []
        publisher.set_published([Instance("uw", "10.12.0.1:80")])
        consumer.watch("uw", got.append)
        wait_for(lambda: got and got[-1].instances, 5.0, what="first set")
        consumer.unwatch("uw", got.append)
        count = len(got)
        publisher.set_published([Instance("uw", "10.12.0.2:80")])
        other = make(addr)  # a second consumer proves the change was pushed at all
        other.start()
        wait_for(
            lambda: (s := other.wait_for("uw", 5.0)) and s.instances[0].address == "10.12.0.2:80",
            5.0,
            what="change seen elsewhere",
        )
        other.close()
        assert len(got) == count
        cached = consumer.current("uw")
        assert cached is not None and cached.instances[0].address == "10.12.0.1:80"
    finally:
        publisher.close()
        consumer.close()


@pytest.mark.parametrize("kind", KINDS)
def test_publish_reaches_a_subscriber_and_close_withdraws(procs: Any, kind: str) -> None:
    addr = start_registry(procs).address("listen")
    make = factory(kind)
    publisher = make(addr, publisher_id=f"pub-{kind}")
    consumer = make(addr)
    publisher.start()
    consumer.start()
    try:
        got: list[ServiceSet] = []
        consumer.watch("ps", got.append)
        publisher.set_published([Instance("ps", "10.13.0.1:80"), Instance("ps", "10.13.0.2:80")])
        wait_for(lambda: got and len(got[-1].instances) == 2, 5.0, what="both instances")
        assert publisher.connected and consumer.connected
        assert publisher.publish_errors() == []
        publisher.close(withdraw=True, timeout=2.0)
        # withdrawn by the final empty publish, well before the registry would drop a lost publisher
        wait_for(lambda: got and not got[-1].instances, 0.9, what="withdrawn set")
        versions = [s.version for s in got]
        assert versions == sorted(set(versions))
    finally:
        publisher.close(withdraw=False)
        consumer.close()


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_publication_is_reported_by_index_and_field(procs: Any, kind: str) -> None:
    addr = start_registry(procs).address("listen")
    client = factory(kind)(addr, publisher_id=f"bad-{kind}")
    client.start()
    try:
        client.set_published(
            [Instance("good", "10.14.0.1:80"), Instance("bad", "10.14.0.2:80", protocol="smtp")]
        )
        errors = wait_for(client.publish_errors, 5.0, what="the registry's refusal")
        assert [(index, field) for index, field, _ in errors] == [(1, "protocol")]
        assert "smtp" in errors[0][2]
        good = client.wait_for("good", 5.0)  # the valid instance is still published
        assert good is not None and [i.address for i in good.instances] == ["10.14.0.1:80"]
        client.set_published([Instance("good", "10.14.0.1:80")])
        wait_for(lambda: client.publish_errors() == [], 5.0, what="errors cleared by a valid set")
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_reconnects_after_registry_sigkill_republishes_and_converges(procs: Any, kind: str) -> None:
    port = free_port()
    listen = f"127.0.0.1:{port}"
    registry = start_registry(procs, listen)
    make = factory(kind)
    publisher = make(listen, publisher_id=f"rc-{kind}", **FAST)
    consumer = make(listen, **FAST)
    publisher.start()
    consumer.start()
    try:
        got: list[ServiceSet] = []
        consumer.watch("rc", got.append)
        publisher.set_published([Instance("rc", "10.15.0.1:80")])
        wait_for(lambda: got and got[-1].instances, 5.0, what="first set")
        before = got[-1].version
        registry.kill()  # SIGKILL: no GOAWAY, no final frames
        wait_for(lambda: not consumer.connected and not publisher.connected, 5.0, what="both see it gone")
        cached = consumer.current("rc")
        assert cached is not None and [i.address for i in cached.instances] == ["10.15.0.1:80"]  # kept
        publisher.set_published([Instance("rc", "10.15.0.9:80")])  # changed while the registry is away
        start_registry(procs, listen)  # same port, empty state: only the clients' re-sent streams fill it
        wait_for(
            lambda: got and [i.address for i in got[-1].instances] == ["10.15.0.9:80"], 10.0, what="converged"
        )
        assert got[-1].version > before
        wait_for(lambda: publisher.connected and consumer.connected, 5.0, what="both connected again")
        versions = [s.version for s in got]
        assert versions == sorted(set(versions))  # never back, never repeated
    finally:
        publisher.close()
        consumer.close()


def test_async_client_calls_back_on_the_loop_and_starts_no_thread(procs: Any) -> None:
    addr = start_registry(procs).address("listen")

    async def app() -> tuple[ServiceSet, set[int], int]:
        threads_before = threading.active_count()
        client = AsyncRegistryClient(addr, publisher_id="native")
        client.start()
        client.set_published([Instance("native", "10.16.0.1:80")])
        seen_on: set[int] = set()
        got: list[ServiceSet] = []

        def on_set(sset: ServiceSet) -> None:
            seen_on.add(threading.get_ident())
            got.append(sset)

        client.watch("native", on_set)
        try:
            found = await client.wait_for("native", 5.0)
            assert found is not None
            while not (got and got[-1].instances):
                await asyncio.sleep(0.02)
            return got[-1], seen_on, threading.active_count() - threads_before
        finally:
            await client.aclose()

    sset, seen_on, new_threads = uvloop.run(asyncio.wait_for(app(), 20))
    assert [i.address for i in sset.instances] == ["10.16.0.1:80"]
    assert seen_on == {threading.get_ident()}  # the test's own thread runs the loop
    assert new_threads == 0

"""RegistryClient against a real `plexus registry`, and against a scripted one that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import uvloop

from plexus.clients.convert import instance_from_pb, instance_to_pb, service_set_from_pb, service_set_to_pb
from plexus.clients.registry import RegistryClient
from plexus.discovery.model import Instance, ServiceSet, SetState
from plexus.proto import registry_pb2 as pb
from plexus.proto import registry_pb2_grpc as pb_grpc
from plexus.testing.procs import ManagedProcess, free_port, wait_for


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


def test_start_never_raises_while_the_registry_is_down_and_it_catches_up_later(procs: Any) -> None:
    port = free_port()  # the client must know the address before any registry listens there
    addr = f"127.0.0.1:{port}"
    client = RegistryClient(addr, publisher_id="early", reconnect_min=0.05, reconnect_max=0.2)
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


def test_a_set_that_is_not_newer_is_ignored(scripted: str) -> None:
    client = RegistryClient(scripted)
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


def test_unwatch_stops_callbacks_and_keeps_the_last_set(procs: Any) -> None:
    reg = procs.plexus("registry", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--warmup", "0")
    addr = reg.address("listen")
    publisher = RegistryClient(addr, publisher_id="unwatch-pub")
    consumer = RegistryClient(addr)
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
        other = RegistryClient(addr)  # a second consumer proves the change was pushed at all
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

"""AsyncControlClient (grpc_h2) against a grpcio Control server written here: Hello, ACK/NACK, an older
snapshot ignored, a resend ACKed without installing, Reports, and a reconnect carrying the applied version."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc
import pytest

from plexus.clients.control_async import AsyncControlClient, NodeInfo, SnapshotIn, Traffic
from plexus.core.errors import ValidationError
from plexus.proto import control_pb2 as pb
from plexus.proto import control_pb2_grpc as pb_grpc

T = TypeVar("T")
WAIT = 10.0  # bounds, not timings: several helpers share two cores


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


class FakeControl(pb_grpc.ControlServicer):
    """Records what sidecars send; pushes what the test queues (one stream at a time)."""

    def __init__(self) -> None:
        self.received: list[pb.SidecarMessage] = []
        self.outbox: asyncio.Queue[pb.ControlMessage] = asyncio.Queue()
        self.streams = 0

    async def Stream(
        self, request_iterator: AsyncIterator[pb.SidecarMessage], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ControlMessage]:
        self.streams += 1

        async def read() -> None:
            async for message in request_iterator:
                self.received.append(message)

        reader = asyncio.ensure_future(read())
        try:
            while not reader.done():
                getter = asyncio.ensure_future(self.outbox.get())
                done, _ = await asyncio.wait([getter, reader], return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
        finally:
            reader.cancel()

    def push(self, version: int, nonce: str, policy: str = "{}", report_ms: int = 0) -> None:
        snap = pb.Snapshot(version=version, nonce=nonce, policy_json=policy, report_interval_ms=report_ms)
        self.outbox.put_nowait(pb.ControlMessage(snapshot=snap))

    def of(self, kind: str) -> list[Any]:
        return [getattr(m, kind) for m in self.received if m.WhichOneof("kind") == kind]


async def serve(fake: FakeControl, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_ControlServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


async def until(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Sidecar:
    """What the client calls: a node description, an installer that may refuse, traffic counters."""

    def __init__(self) -> None:
        self.consumes: tuple[str, ...] = ("orders",)
        self.installed: list[SnapshotIn] = []
        self.refuse: str | None = None

    def node(self) -> NodeInfo:
        return NodeInfo(id="sc-1", workload="shop", zone="z1", unit="u1", sidecar_version="0.1.0",
                        consumes=self.consumes, provides=("cart",),
                        addresses=("127.0.0.1:9000",))  # fmt: skip

    async def install(self, snap: SnapshotIn) -> None:
        await asyncio.sleep(0)
        if self.refuse is not None:
            raise ValueError(self.refuse)
        self.installed.append(snap)

    def traffic(self) -> list[Traffic]:
        return [Traffic("orders", "outbound", 7, 2, (1, 2, 3), 12.5)]


def client_for(port: int, sidecar: Sidecar) -> AsyncControlClient:
    install: Callable[[SnapshotIn], Awaitable[None]] = sidecar.install
    return AsyncControlClient(f"127.0.0.1:{port}", sidecar.node, install, sidecar.traffic,
                              reconnect_min=0.05, reconnect_max=0.3)  # fmt: skip


def test_hello_ack_nack_older_and_resend() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        server, port = await serve(fake)
        sidecar = Sidecar()
        client = client_for(port, sidecar)
        client.start()
        try:
            await until(lambda: fake.of("hello"), "the Hello")
            hello = fake.of("hello")[0]
            assert (hello.id, hello.workload, hello.zone, hello.unit) == ("sc-1", "shop", "z1", "u1")
            assert list(hello.consumes) == ["orders"] and list(hello.provides) == ["cart"]
            assert hello.applied_version == 0 and list(hello.addresses) == ["127.0.0.1:9000"]
            assert client.connected

            fake.push(3, "n3", '{"a": 1}')
            await until(lambda: fake.of("ack"), "the ACK of v3")
            ack = fake.of("ack")[-1]
            assert (ack.version, ack.nonce, ack.accepted, ack.error) == (3, "n3", True, "")
            assert client.applied_version == 3 and sidecar.installed[-1].policy_json == '{"a": 1}'

            sidecar.refuse = "VirtualService orders: spec.http[0]: subset v9 is not defined"
            fake.push(4, "n4")
            await until(lambda: len(fake.of("ack")) == 2, "the NACK of v4")
            nack = fake.of("ack")[-1]
            assert (nack.version, nack.nonce, nack.accepted) == (4, "n4", False)
            assert "subset v9 is not defined" in nack.error
            assert client.applied_version == 3  # the last good one keeps serving
            assert client.last_nack is not None and client.last_nack.version == 4
            assert client.view()["last_nack"]["error"] == nack.error

            sidecar.refuse = None
            fake.push(2, "n2")  # older than what runs: not installed
            await until(lambda: len(fake.of("ack")) == 3, "the answer to v2")
            older = fake.of("ack")[-1]
            assert (older.version, older.accepted) == (2, False) and "older" in older.error
            fake.push(3, "n3b")  # a resend of what runs: ACKed, not installed again
            await until(lambda: len(fake.of("ack")) == 4, "the answer to the resend")
            assert fake.of("ack")[-1].accepted and len(sidecar.installed) == 1
        finally:
            await client.aclose()
            await server.stop(0)

    run(scenario())


def test_hello_again_only_when_the_node_changes_and_reports_flow() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        server, port = await serve(fake)
        sidecar = Sidecar()
        client = client_for(port, sidecar)
        client.start()
        try:
            await until(lambda: fake.of("hello"), "the Hello")
            client.node_changed()  # nothing changed: no Hello
            sidecar.consumes = ("orders", "payments")
            client.node_changed()
            client.node_changed()  # coalesced with the one before
            await until(lambda: len(fake.of("hello")) >= 2, "the second Hello")
            await asyncio.sleep(0.2)
            hellos = fake.of("hello")
            assert len(hellos) == 2 and list(hellos[1].consumes) == ["orders", "payments"]

            fake.push(1, "n1", report_ms=50)
            await until(lambda: len(fake.of("report")) >= 2, "two Reports")
            reports = fake.of("report")
            assert reports[1].sequence > reports[0].sequence
            traffic = reports[-1].traffic[0]
            assert (traffic.service, traffic.direction, traffic.requests, traffic.errors) == (
                "orders", "outbound", 7, 2)  # fmt: skip
            assert list(traffic.duration_buckets) == [1, 2, 3]
        finally:
            await client.aclose()
            await server.stop(0)

    run(scenario())


def test_control_plane_away_then_back_gets_the_applied_version() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        server, port = await serve(fake)
        sidecar = Sidecar()
        client = client_for(port, sidecar)
        client.start()
        try:
            await until(lambda: fake.of("hello"), "the Hello")
            fake.push(5, "n5")
            await until(lambda: client.applied_version == 5, "v5 applied")
            await server.stop(0)
            await until(lambda: not client.connected, "the client noticing")
            await asyncio.sleep(0.5)  # a few failed reconnects
            assert client.applied_version == 5
            back = FakeControl()
            server, _ = await serve(back, port)
            await until(lambda: back.of("hello"), "the Hello after the return", timeout=15)
            assert back.of("hello")[0].applied_version == 5
            assert client.connected and client.connects >= 2
            back.push(6, "n6")
            await until(lambda: client.applied_version == 6, "a change after the return")
        finally:
            await client.aclose()
            await server.stop(0)

    run(scenario())


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:notaport"])
def test_a_malformed_address_is_refused_at_once(address: str) -> None:
    async def scenario() -> None:
        sidecar = Sidecar()
        with pytest.raises(ValidationError, match="control"):
            AsyncControlClient(address, sidecar.node, sidecar.install)

    run(scenario())

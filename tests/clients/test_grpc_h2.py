"""grpc_h2 on the wire against the real grpcio registry (`plexus registry`), and a peer that never answers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from plexus.clients import grpc_h2
from plexus.clients.convert import publish_request, service_set_from_pb
from plexus.clients.registry_async import PUBLISH_PATH, SUBSCRIBE_PATH
from plexus.core.address import parse_host_port
from plexus.discovery.model import Instance
from plexus.proto import registry_pb2 as pb
from plexus.testing.procs import ManagedProcess

T = TypeVar("T")
DEFAULT_MAX_FRAME = 16_384  # HTTP/2's initial SETTINGS_MAX_FRAME_SIZE: a larger message spans DATA frames
INITIAL_WINDOW = 65_535  # HTTP/2's initial flow-control window: a larger request must wait for WINDOW_UPDATE


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(asyncio.wait_for(coro, 30))


def start_registry(procs: Any) -> ManagedProcess:
    proc: ManagedProcess = procs.plexus(
        "registry", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--warmup", "0"
    )
    return proc


async def connect(address: str, **kw: Any) -> grpc_h2.Channel:
    host, port = parse_host_port(address)
    return await grpc_h2.Channel.connect(host, port, **kw)


def big_set(service: str, count: int) -> list[Instance]:
    return [
        Instance(service, f"10.20.{i // 250}.{i % 250 + 1}:8080", labels={"rack": f"r{i:04d}-" + "x" * 24})
        for i in range(count)
    ]


def test_a_large_set_crosses_frames_both_ways(procs: Any) -> None:
    address = start_registry(procs).address("listen")

    async def scenario() -> tuple[int, int, int]:
        channel = await connect(address)
        payloads: list[bytes] = []
        acks: list[pb.PublishResponse] = []
        request = publish_request("big-publisher", big_set("big", 2000)).SerializeToString()
        publish = channel.open(PUBLISH_PATH, lambda m: acks.append(pb.PublishResponse.FromString(m)))
        publish.send(request)  # larger than the initial window: sent as the server's WINDOW_UPDATEs admit
        subscribe = channel.open(SUBSCRIBE_PATH, payloads.append)
        subscribe.send(pb.SubscribeRequest(add=["big"]).SerializeToString())
        await asyncio.wait_for(subscribe.headers, 5)
        while not (payloads and service_set_from_pb(pb.ServiceUpdate.FromString(payloads[-1])).instances):
            await asyncio.sleep(0.02)
        biggest = payloads[-1]
        count = len(service_set_from_pb(pb.ServiceUpdate.FromString(biggest)).instances)
        assert acks and list(acks[-1].errors) == []
        publish.close_send()
        subscribe.cancel()
        status = await asyncio.wait_for(publish.done, 5)  # the server ends the call once we half-closed
        assert status.ok, status
        channel.close()
        return len(request), len(biggest), count

    sent, received, count = run(scenario())
    assert sent > INITIAL_WINDOW
    assert received > DEFAULT_MAX_FRAME * 4  # reassembled from several DATA frames
    assert count == 2000


def test_registry_killed_mid_stream_ends_the_call_unavailable(procs: Any) -> None:
    registry = start_registry(procs)
    address = registry.address("listen")

    async def scenario() -> grpc_h2.GrpcStatus:
        channel = await connect(address)
        updates: list[bytes] = []
        call = channel.open(SUBSCRIBE_PATH, updates.append)
        call.send(pb.SubscribeRequest(add=["gone"]).SerializeToString())
        await asyncio.wait_for(call.headers, 5)
        while not updates:  # the registry commits a set for a subscribed service: the stream carries data
            await asyncio.sleep(0.02)
        registry.kill()
        status = await asyncio.wait_for(call.done, 5)
        assert channel.closed.done()
        call.send(b"ignored after the end")  # no error, no effect
        return status

    status = run(scenario())
    assert status.code == grpc_h2.UNAVAILABLE, status


def test_unknown_method_ends_with_the_servers_grpc_status(procs: Any) -> None:
    address = start_registry(procs).address("listen")

    async def scenario() -> grpc_h2.GrpcStatus:
        channel = await connect(address)
        call = channel.open("/plexus.registry.v1.Registry/NoSuchMethod", lambda m: None)
        call.close_send()
        status = await asyncio.wait_for(call.done, 5)
        assert not channel.closed.done()  # a failed call leaves the connection up
        channel.close()
        return status

    status = run(scenario())
    assert status.code == 12, status  # UNIMPLEMENTED, from the trailers


def test_a_message_over_the_cap_ends_the_call_not_the_process(procs: Any) -> None:
    address = start_registry(procs).address("listen")

    async def scenario() -> grpc_h2.GrpcStatus:
        channel = await connect(address)
        publish = channel.open(PUBLISH_PATH, lambda m: None)
        publish.send(publish_request("capped", big_set("capped", 200)).SerializeToString())
        small = await connect(address, max_message=1024)
        call = small.open(SUBSCRIBE_PATH, lambda m: None)
        call.send(pb.SubscribeRequest(add=["capped"]).SerializeToString())
        status = await asyncio.wait_for(call.done, 5)
        channel.close()
        small.close()
        return status

    status = run(scenario())
    assert status.code == grpc_h2.RESOURCE_EXHAUSTED, status


def test_keepalive_pings_are_answered_by_the_registry(procs: Any) -> None:
    address = start_registry(procs).address("listen")

    async def scenario() -> bool:
        channel = await connect(address, keepalive=0.1, keepalive_timeout=0.5)
        call = channel.open(SUBSCRIBE_PATH, lambda m: None)
        call.send(pb.SubscribeRequest(add=["pinged"]).SerializeToString())
        await asyncio.sleep(1.5)  # ~10 pings, each answered in time
        alive = not channel.closed.done() and not call.finished
        channel.close()
        return alive

    assert run(scenario())


def test_keepalive_finds_a_peer_that_stopped_answering() -> None:
    async def scenario() -> tuple[grpc_h2.GrpcStatus, grpc_h2.GrpcStatus]:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 20)  # reads the preface, then answers nothing (a host that froze)
            await asyncio.sleep(30)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        channel = await grpc_h2.Channel.connect("127.0.0.1", port, keepalive=0.2, keepalive_timeout=0.3)
        call = channel.open(SUBSCRIBE_PATH, lambda m: None)
        closed = await asyncio.wait_for(channel.closed, 5)
        server.close()
        return closed, await call.done

    closed, call_status = run(scenario())
    assert closed.code == grpc_h2.UNAVAILABLE and "PING" in closed.message, closed
    assert call_status == closed


def test_goaway_followed_by_more_frames_reads_as_goaway() -> None:
    """A server's GOAWAY and a frame after it in one read: h2 refuses every frame once it saw the GOAWAY (and
    the GOAWAY's own event goes with that error); the channel still says GOAWAY, not "protocol error"."""

    async def scenario() -> grpc_h2.GrpcStatus:
        async def goaway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 20)
            settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            go_away = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
            window_update = b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00\x00\x10\x00"
            writer.write(settings + go_away + window_update)
            await writer.drain()
            await asyncio.sleep(5)

        server = await asyncio.start_server(goaway, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        channel = await grpc_h2.Channel.connect("127.0.0.1", port)
        closed = await asyncio.wait_for(channel.closed, 5)
        server.close()
        return closed

    closed = run(scenario())
    assert closed.code == grpc_h2.UNAVAILABLE and closed.message.startswith("GOAWAY from the server"), closed

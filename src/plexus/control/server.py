"""The Control gRPC service on grpc.aio: sidecar streams in and out of ``ControlCore``, and the admin RPCs.

A stream's first message must be a Hello naming the sidecar; the handler then writes whatever the core queues
for that stream (snapshots) while a reader task feeds Hellos, Acks and Reports to the core. The stream ends
when the sidecar half-closes or goes; the core forgets a push in flight with it. Runs on the default asyncio
loop: grpc.aio and uvloop do not mix reliably.

Observability: the reader also hands TapLines and ExplainAnswers to the core; Stat and Info read the core's
``observer`` (``plexus.control.observe``), Explain and Tap go through the core to every connected sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

import grpc

from plexus.control.core import MAX_NODE_ID, MAX_SCOPE_NAMES, ControlCore, ControlStream
from plexus.proto import control_pb2 as pb
from plexus.proto import control_pb2_grpc as pb_grpc

log = logging.getLogger("plexus.control")

MAX_APPLY_BYTES: Final = 4 * 1024 * 1024  # a policy file of thousands of resources; more is a mistake
MAX_REQUEST_ID: Final = 256  # x-request-id values are UUIDs; anything longer is not one a sidecar kept


def _check_node(node: pb.Node) -> str | None:
    if not node.id or len(node.id) > MAX_NODE_ID:
        return f"hello.id: must be 1..{MAX_NODE_ID} characters"
    if len(node.consumes) > MAX_SCOPE_NAMES or len(node.provides) > MAX_SCOPE_NAMES:
        return f"hello: over {MAX_SCOPE_NAMES} services in consumes or provides"
    return None


class ControlServicer(pb_grpc.ControlServicer):
    def __init__(self, core: ControlCore) -> None:
        self._core = core

    async def Stream(
        self, request_iterator: AsyncIterator[pb.SidecarMessage], context: grpc.aio.ServicerContext
    ) -> None:
        await context.send_initial_metadata(())
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a hello")
        problem = _check_node(first.hello)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        stream = self._core.open_stream(first.hello)
        reader = asyncio.get_running_loop().create_task(self._read(stream, context))
        # the reader puts None in the queue when it ends, so a push costs one queue get, not an asyncio.wait
        reader.add_done_callback(lambda _: stream.queue.put_nowait(None))
        try:
            while (message := await stream.queue.get()) is not None:
                await context.write(message)
            if not reader.cancelled():
                reader.result()  # re-raise an abort of the reader (a bad message) in the handler
        finally:
            reader.cancel()
            self._core.close_stream(stream)

    async def _read(self, stream: ControlStream, context: grpc.aio.ServicerContext) -> None:
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("kind")
            if kind == "ack":
                self._core.answered(stream, message.ack)
            elif kind == "report":
                self._core.report(stream, message.report)
            elif kind == "tap":
                self._core.tap_lines(stream, message.tap)
            elif kind == "explain":
                self._core.explain_answer(stream, message.explain)
            elif kind == "hello":
                if message.hello.id != stream.node.id:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"hello.id: changed from {stream.node.id!r} within one stream",
                    )
                problem = _check_node(message.hello)
                if problem is not None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
                self._core.hello(stream, message.hello)

    async def Apply(self, request: pb.ApplyRequest, context: grpc.aio.ServicerContext) -> pb.ApplyResponse:
        if len(request.text) > MAX_APPLY_BYTES:
            return pb.ApplyResponse(
                problems=[f"{request.file_name}: over {MAX_APPLY_BYTES} bytes; split the file"],
                version=self._core.version,
            )
        return await self._core.apply(request.file_name, request.text, request.dry_run)

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        return pb.GetResponse(resources=self._core.get(request.kind, request.name, request.namespace))

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        ref = request.ref
        if not ref.kind or not ref.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ref: kind and name are required")
        return await self._core.delete(ref.kind, ref.name, ref.namespace)

    async def ProxyStatus(
        self, request: pb.ProxyStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProxyStatusResponse:
        return self._core.proxy_status()

    async def StressTest(
        self, request: pb.StressTestRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StressTestProgress]:
        from plexus.control.stress import StressTestError, run_stress_test

        try:
            async for progress in run_stress_test(self._core, request):
                yield progress
        except StressTestError as exc:  # refused before anything changed: say why, as the caller's fault
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    async def Stat(self, request: pb.StatRequest, context: grpc.aio.ServicerContext) -> pb.StatResponse:
        return self._core.observer.stat(request.service, request.window_seconds)

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        return self._core.observer.info()

    async def Explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainResponse:
        if not request.request_id or len(request.request_id) > MAX_REQUEST_ID:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"request_id: must be 1..{MAX_REQUEST_ID} characters"
            )
        return await self._core.explain(request.request_id, request.wait_seconds)

    async def Tap(
        self, request: pb.TapRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RequestLine]:
        # aclosing: a client that cancels closes this generator, and the core then stops every sidecar's tap
        async with contextlib.aclosing(self._core.tap(request.service, request.count)) as lines:
            async for line in lines:
                yield line

"""The registry's gRPC service on grpc.aio: streams in, the sans-IO state machine in the middle, pushes out.

``RegistryCore`` performs the I/O around ``plexus.push.registry_state.RegistryState`` (read it for the lease,
debounce, version and warm-up rules): it runs a timer that ticks the state at its deadlines, hands pushes to
each subscriber's outbox, mirrors publishers' sets and versions into the store and flushes the store
(debounced). ``RegistryServicer`` adapts the three RPCs of ``registry.proto`` to it. Runs on the default
asyncio loop: grpc.aio and uvloop do not mix reliably.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import grpc

from plexus.clients.convert import instance_from_pb, service_set_to_pb
from plexus.core.errors import ValidationError
from plexus.discovery.model import Instance, ServiceSet, validate_instance, validate_service_name
from plexus.proto import registry_pb2 as pb
from plexus.proto import registry_pb2_grpc as pb_grpc
from plexus.push.registry_state import Clock, Effects, RegistryState, SubscriberId
from plexus.stores.registry_store import RegistryStore

log = logging.getLogger("plexus.registry")

MAX_INSTANCES_PER_PUBLISH: Final = 10_000  # one publisher is one process; more is a bug or an attack
MAX_WATCHED_PER_SUBSCRIBER: Final = 10_000
MAX_PUBLISHER_ID: Final = 256

# Let clients ping every 10 s (plexus.clients.registry.KEEPALIVE_MS) without being told "too many pings";
# never share the port with another process (grpc sets SO_REUSEPORT by default, which would let two registries
# bind one port after a restart and split the clients between them).
SERVER_OPTIONS: Final[list[tuple[str, Any]]] = [
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time_us(self) -> int:
        return time.time_ns() // 1000


class _Outbox:
    """Pending pushes of one subscriber, coalesced per service: a slow reader gets the latest set."""

    def __init__(self) -> None:
        self.pending: dict[str, ServiceSet] = {}
        self.ready = asyncio.Event()

    def put(self, update: ServiceSet) -> None:
        current = self.pending.get(update.service)
        if current is None or current.version < update.version:
            self.pending[update.service] = update
        self.ready.set()

    def take(self) -> list[ServiceSet]:
        updates = list(self.pending.values())
        self.pending.clear()
        self.ready.clear()
        return updates


class RegistryCore:
    def __init__(
        self, state: RegistryState, store: RegistryStore, clock: Clock, *, lease_grace: float, debounce: float
    ) -> None:
        self.state = state
        self._clock = clock
        self.store = store
        self._lease_grace = lease_grace
        self._debounce = debounce
        self._outboxes: dict[SubscriberId, _Outbox] = {}
        self._next_subscriber = 0
        self._wake = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._closing = False
        self.publish_rejects: Counter[str] = Counter()

    async def start(self) -> None:
        self._driver = asyncio.get_running_loop().create_task(self._drive(), name="registry-driver")

    async def close(self) -> None:
        self._closing = True
        for task in (self._driver, self._flush_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.store.close()

    # ---------------------------------------------------------------- events

    async def publisher_seen(self, publisher_id: str) -> int:
        session = self.state.publisher_seen(publisher_id)
        await self.store.open_session(publisher_id, self._lease_grace)
        return session

    async def published(self, publisher_id: str, instances: Sequence[Instance]) -> None:
        self.state.published(publisher_id, instances)
        await self.store.put_instances(publisher_id, instances)
        self._schedule_flush()  # which publisher holds what also matters after a restart, not only the sets
        self._wake.set()

    async def publisher_lost(self, publisher_id: str, session: int) -> None:
        self.state.publisher_lost(publisher_id, session)
        self._wake.set()
        await self.store.close_session(publisher_id)

    @property
    def subscriber_streams(self) -> int:
        return len(self._outboxes)

    def add_subscriber(self) -> tuple[SubscriberId, _Outbox]:
        self._next_subscriber += 1
        outbox = self._outboxes[self._next_subscriber] = _Outbox()
        return self._next_subscriber, outbox

    async def subscribe(self, subscriber: SubscriberId, services: Sequence[str]) -> None:
        await self._apply(self.state.subscribe(subscriber, services))
        self._wake.set()

    def unsubscribe(self, subscriber: SubscriberId, services: Sequence[str]) -> None:
        self.state.unsubscribe(subscriber, services)

    def remove_subscriber(self, subscriber: SubscriberId) -> None:
        self.state.subscriber_gone(subscriber)
        self._outboxes.pop(subscriber, None)

    # ---------------------------------------------------------------- timer, effects, persistence

    async def _drive(self) -> None:
        while not self._closing:
            deadline = self.state.next_deadline()
            timeout = None if deadline is None else max(deadline - self._clock.monotonic(), 0.0)
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that races the wake-up (the
            # handlers' finally blocks set _wake while close() cancels us), and close() then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._apply(self.state.tick())
            except Exception:  # keep ticking: one failed store write must not freeze every push
                log.exception("registry tick failed")

    async def _apply(self, effects: Effects) -> None:
        for push in effects.pushes:
            outbox = self._outboxes.get(push.subscriber)
            if outbox is not None:
                outbox.put(push.update)
        for publisher_id in effects.expired:
            await self.store.delete_publisher(publisher_id)
        if effects.versions:
            await self.store.put_versions(effects.versions)
        if effects.expired or effects.versions:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._debounce)  # one write for a burst of changes
        try:
            await self.store.flush()
        except OSError:
            log.exception("registry: writing the snapshot failed; will retry on the next change")


class RegistryServicer(pb_grpc.RegistryServicer):
    def __init__(self, core: RegistryCore) -> None:
        self._core = core

    async def Publish(
        self, request_iterator: AsyncIterator[pb.PublishRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PublishResponse]:
        await context.send_initial_metadata(())
        publisher_id = ""
        session = 0
        try:
            async for request in request_iterator:
                if not request.publisher_id or len(request.publisher_id) > MAX_PUBLISHER_ID:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"publisher_id: must be 1..{MAX_PUBLISHER_ID} characters",
                    )
                if not publisher_id:
                    publisher_id = request.publisher_id
                    session = await self._core.publisher_seen(publisher_id)
                elif request.publisher_id != publisher_id:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"publisher_id: changed from {publisher_id!r} within one stream",
                    )
                accepted, errors = self._validate(request)
                await self._core.published(publisher_id, accepted)
                yield pb.PublishResponse(accepted=len(accepted), errors=errors)
        finally:
            if publisher_id:
                await self._core.publisher_lost(publisher_id, session)

    def _validate(self, request: pb.PublishRequest) -> tuple[list[Instance], list[pb.PublishError]]:
        accepted: list[Instance] = []
        errors: list[pb.PublishError] = []
        for index, msg in enumerate(request.instances):
            if index >= MAX_INSTANCES_PER_PUBLISH:
                errors.append(
                    pb.PublishError(
                        index=index,
                        field="instances",
                        message=f"over {MAX_INSTANCES_PER_PUBLISH} instances in one set",
                    )
                )
                self._core.publish_rejects["instances"] += 1
                continue
            try:
                accepted.append(validate_instance(instance_from_pb(msg)))
            except ValidationError as exc:
                errors.append(pb.PublishError(index=index, field=exc.field, message=exc.message))
                self._core.publish_rejects[exc.field.split(".")[0]] += 1
        return accepted, errors

    async def Subscribe(
        self, request_iterator: AsyncIterator[pb.SubscribeRequest], context: grpc.aio.ServicerContext
    ) -> None:
        await context.send_initial_metadata(())
        subscriber, outbox = self._core.add_subscriber()
        reader = asyncio.get_running_loop().create_task(self._read_subscriptions(subscriber, context))
        try:
            while True:
                waiter = asyncio.ensure_future(outbox.ready.wait())
                if reader.done():  # the client half-closed: keep pushing what it watches until it goes
                    reader.result()  # unless the reader failed (a bad request): then end the stream with it
                    await waiter
                else:
                    done, _ = await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                    if waiter not in done:
                        waiter.cancel()
                        reader.result()  # re-raise an abort of the reader (bad request) in the handler
                        continue
                for update in outbox.take():
                    await context.write(service_set_to_pb(update))
        finally:
            reader.cancel()
            self._core.remove_subscriber(subscriber)

    async def _read_subscriptions(self, subscriber: SubscriberId, context: grpc.aio.ServicerContext) -> None:
        watched = 0
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            add = []
            for name in request.add:
                try:
                    add.append(validate_service_name(name))
                except ValidationError as exc:
                    log.warning("subscriber %s: ignoring %s", context.peer(), exc)
            watched += len(add)
            if watched > MAX_WATCHED_PER_SUBSCRIBER:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"add: over {MAX_WATCHED_PER_SUBSCRIBER} services on one stream",
                )
            if request.remove:
                self._core.unsubscribe(subscriber, list(request.remove))
                watched = max(watched - len(request.remove), 0)
            if add:
                await self._core.subscribe(subscriber, add)

    async def List(self, request: pb.ListRequest, context: grpc.aio.ServicerContext) -> pb.ListResponse:
        if request.service:
            found = self._core.state.service_set(request.service)
            sets = [found] if found is not None else []
        else:
            sets = self._core.state.service_sets()
        return pb.ListResponse(services=[service_set_to_pb(s) for s in sets])

"""The registry client of the sidecar: asyncio on the caller's loop, over ``grpc_h2`` (no grpcio, no threads).

Same semantics as ``plexus.clients.registry.RegistryClient`` (the bookkeeping is shared, in
``plexus.clients.registry_state``), on one HTTP/2 connection carrying both streams:

* subscribe: always open while connected (it is also how ``connected`` knows the registry is there); names
  every watched service on (re)connect, then adds and removes as ``watch``/``unwatch`` are called.
* publish: opened once ``set_published`` was called; sends the whole set, then every replacement; after a
  reconnect it sends the current set again (publishing is idempotent), so the registry converges by itself.

Sets are cached per service and kept while the registry is away; a set whose version is not greater than the
last one delivered for its service is ignored. Callbacks run on the loop. When either stream or the connection
ends, the connection is dropped and made again with exponential backoff (with jitter) between
``reconnect_min`` and ``reconnect_max``. Every method except ``aclose`` and ``wait_for`` is synchronous and
must be called on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from plexus.clients.convert import service_set_from_pb
from plexus.clients.grpc_h2 import (
    KEEPALIVE,
    KEEPALIVE_TIMEOUT,
    UNAVAILABLE,
    Call,
    Channel,
    GrpcStatus,
)
from plexus.clients.reconnect import keep_connected
from plexus.clients.registry_state import (
    Callback,
    PublishBook,
    PublishError,
    WatchBook,
    default_publisher_id,
)
from plexus.core.address import parse_host_port
from plexus.discovery.model import Instance, ServiceSet
from plexus.proto import registry_pb2 as pb

log = logging.getLogger("plexus.clients.registry")

# Full method names, as in plexus.proto.registry_pb2_grpc (package plexus.registry.v1, service Registry).
PUBLISH_PATH: Final = "/plexus.registry.v1.Registry/Publish"
SUBSCRIBE_PATH: Final = "/plexus.registry.v1.Registry/Subscribe"
CONNECT_TIMEOUT: Final = 2.0  # a registry that accepts no TCP connection in this long is treated as down


class AsyncRegistryClient:
    def __init__(
        self,
        address: str,
        *,
        publisher_id: str | None = None,
        reconnect_min: float = 0.1,
        reconnect_max: float = 2.0,
        keepalive: float | None = None,
        keepalive_timeout: float | None = None,
    ) -> None:
        self.address = address
        self._host, self._port = parse_host_port(address, "registry")
        self.publisher_id = publisher_id or default_publisher_id()
        self._reconnect_min = reconnect_min
        self._reconnect_max = max(reconnect_max, reconnect_min)
        self._keepalive = KEEPALIVE if keepalive is None else keepalive
        self._keepalive_timeout = KEEPALIVE_TIMEOUT if keepalive_timeout is None else keepalive_timeout
        self._pub = PublishBook(self.publisher_id)
        self._book = WatchBook()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()  # set_published while connected without a publish stream; stop
        self._changed = asyncio.Event()  # replaced after each set: sets arrived, a publish was answered
        self._channel: Channel | None = None
        self._sub: Call | None = None
        self._pub_call: Call | None = None
        self._sub_up = False
        self._pub_up = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the connection task on the running loop; never raises when the registry is down."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="plexus-registry-client")

    async def aclose(self, withdraw: bool = True, timeout: float = 2.0) -> None:
        """Stop and close the connection.

        ``withdraw``: first publish an empty set (and wait for its answer up to ``timeout``) so consumers drop
        this publisher at once instead of after the registry's lease grace.
        """
        if withdraw and self._pub.published is not None and self._pub_up:
            self.set_published([])
            target = self._pub.generation
            await self._until(lambda: self._pub.acked_generation >= target, timeout)
        self._stopping = True
        self._wake.set()
        if self._channel is not None:
            self._channel.close(GrpcStatus(UNAVAILABLE, "client closed"))
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout)
            self._task = None

    @property
    def connected(self) -> bool:
        """The subscribe stream is up, and so is the publish stream when this client publishes."""
        return self._sub_up and (self._pub_up or self._pub.published is None)

    # ------------------------------------------------------------------ publishing
    def set_published(self, instances: Sequence[Instance]) -> None:
        """Replace the whole published set; it is sent now if connected and again after every reconnect."""
        self._pub.replace(instances)
        if self._pub_call is not None:
            self._pub_call.send(self._pub.request().SerializeToString())
        elif self._channel is not None and self._channel.is_open:
            self._open_publish(self._channel)
        self._notify()

    def publish_errors(self) -> list[PublishError]:
        """(index, field, message) of each instance the registry refused in its last answer."""
        return list(self._pub.errors)

    # ------------------------------------------------------------------ subscribing
    def watch(self, service: str, callback: Callback) -> None:
        """Call ``callback(set)`` on the loop for each new set of ``service``; at once with a cached set."""
        self._send_subscribe(self._book.add_callback(service, callback))
        cached = self._book.sets.get(service)
        if cached is not None:
            callback(cached)

    def unwatch(self, service: str, callback: Callback) -> None:
        """Remove ``callback``; the service is unwatched once it has no callbacks (its cache stays)."""
        self._send_subscribe(self._book.remove_callback(service, callback))

    def current(self, service: str) -> ServiceSet | None:
        """The last set seen for ``service`` (kept while the registry is away)."""
        return self._book.sets.get(service)

    async def wait_for(self, service: str, timeout: float) -> ServiceSet | None:
        """Wait until a set of ``service`` is known (watching it if nobody does); None after ``timeout``."""
        self._send_subscribe(self._book.watch(service))
        await self._until(lambda: service in self._book.sets, timeout)
        return self._book.sets.get(service)

    # ------------------------------------------------------------------ internals
    def _send_subscribe(self, request: pb.SubscribeRequest | None) -> None:
        if request is not None and self._sub is not None:
            self._sub.send(request.SerializeToString())

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def _open_publish(self, channel: Channel) -> None:
        call = channel.open(PUBLISH_PATH, self._on_publish_response)
        self._pub_call = call
        self._pub.new_stream()
        call.send(self._pub.request().SerializeToString())
        call.headers.add_done_callback(lambda f: self._stream_up(f, "publish"))
        call.done.add_done_callback(lambda _: self._wake.set())

    def _stream_up(self, headers: asyncio.Future[None], which: str) -> None:
        if headers.cancelled() or headers.exception() is not None:
            return
        if which == "publish":
            self._pub_up = True
        else:
            self._sub_up = True

    def _on_publish_response(self, payload: bytes) -> None:
        self._pub.answered(pb.PublishResponse.FromString(payload))
        self._notify()

    def _on_update(self, payload: bytes) -> None:
        sset = service_set_from_pb(pb.ServiceUpdate.FromString(payload))
        callbacks = self._book.accept(sset)
        if callbacks is None:
            return  # never go back (a late or repeated push)
        self._notify()
        for callback in callbacks:
            try:
                callback(sset)
            except Exception:  # one consumer's bug must not stop the stream for the others
                log.exception("registry watch callback for %s failed", sset.service)

    async def _run(self) -> None:
        await keep_connected(
            self._session,
            stopping=lambda: self._stopping,
            wake=self._wake,
            reconnect_min=self._reconnect_min,
            reconnect_max=self._reconnect_max,
            what=f"registry {self.address}",
            log=log,
        )

    async def _session(self) -> bool:
        """One connection: open the streams, serve until one ends. True when the registry answered."""
        channel = await Channel.connect(
            self._host,
            self._port,
            timeout=CONNECT_TIMEOUT,
            keepalive=self._keepalive,
            keepalive_timeout=self._keepalive_timeout,
        )
        self._channel = channel
        answered = False
        try:
            sub = self._sub = channel.open(SUBSCRIBE_PATH, self._on_update)
            sub.send(self._book.resubscribe().SerializeToString())
            sub.headers.add_done_callback(lambda f: self._stream_up(f, "subscribe"))
            if self._pub.published is not None:
                self._open_publish(channel)
            while not self._stopping:
                self._wake.clear()
                calls = [c for c in (self._sub, self._pub_call) if c is not None]
                if any(c.finished for c in calls) or channel.closed.done():
                    break
                answered = answered or self._sub_up
                woken = asyncio.ensure_future(self._wake.wait())
                waits: list[asyncio.Future[Any]] = [woken, channel.closed, *(c.done for c in calls)]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
            answered = answered or self._sub_up
            ended = [c for c in (self._sub, self._pub_call) if c is not None and c.finished]
            if not self._stopping:
                why = (
                    ended[0].done.result()
                    if ended
                    else channel.closed.result()
                    if channel.closed.done()
                    else ""
                )
                log.info("registry %s: connection ended: %s", self.address, why)
        finally:
            self._sub_up = self._pub_up = False
            self._sub = self._pub_call = None
            self._channel = None
            channel.close()
        return answered

"""The registry client used by the sidecar and by the SDK's direct mode.

Synchronous grpc on background threads, so it works under any event loop (the sidecar runs uvloop and marshals
callbacks onto its loop itself); importing or using it never touches asyncio. Two threads, one per stream:

* publish: opened once ``set_published`` was called; sends the whole set, then every replacement; on reconnect
  it sends the current set again (publishing is idempotent), so the registry converges by itself.
* subscribe: always open while started (it is also how ``connected`` knows the registry is there); names every
  watched service on (re)connect, then adds and removes as ``watch``/``unwatch`` are called.

Sets are cached per service and kept while the registry is away; a set whose version is not greater than the
last one delivered for its service is ignored, so a consumer never goes back. Both streams reconnect with
exponential backoff between ``reconnect_min`` and ``reconnect_max``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Final, Generic, TypeVar

import grpc

from plexus.clients.convert import service_set_from_pb
from plexus.clients.registry_state import (
    Callback,
    PublishBook,
    PublishError,
    WatchBook,
    default_publisher_id,
    jitter,
)
from plexus.discovery.model import Instance, ServiceSet
from plexus.proto import registry_pb2 as pb
from plexus.proto import registry_pb2_grpc as pb_grpc

log = logging.getLogger("plexus.clients.registry")

T = TypeVar("T")

# Keepalive finds a registry that vanished without a FIN (host down, cable cut); on loopback a crash is an RST
# and is seen at once. The registry server permits pings this often (see plexus.registry.server).
KEEPALIVE_MS: Final = 10_000
KEEPALIVE_TIMEOUT_MS: Final = 5_000


def channel_options(reconnect_min: float, reconnect_max: float) -> list[tuple[str, Any]]:
    """Options for a channel to the registry.

    Our backoff also bounds grpc's own reconnect backoff (default 120 s), or a restarted registry would wait.
    """
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", max(int(reconnect_min * 1000), 1)),
        ("grpc.min_reconnect_backoff_ms", max(int(reconnect_min * 1000), 1)),
        ("grpc.max_reconnect_backoff_ms", max(int(reconnect_max * 1000), 1)),
    ]


class _Outbox(Generic[T]):
    """The request side of one stream: grpc's sender thread iterates it; ``close`` ends the iteration."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[T | None] = queue.SimpleQueue()

    def put(self, item: T) -> None:
        self._queue.put(item)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            yield item


class RegistryClient:
    def __init__(
        self,
        address: str,
        *,
        publisher_id: str | None = None,
        reconnect_min: float = 0.1,
        reconnect_max: float = 2.0,
    ) -> None:
        self.address = address
        self.publisher_id = publisher_id or default_publisher_id()
        self._reconnect_min = reconnect_min
        self._reconnect_max = max(reconnect_max, reconnect_min)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # sets arrived, publish acked, something to publish
        self._stopping = threading.Event()
        self._channel: grpc.Channel | None = None
        self._threads: list[threading.Thread] = []
        # publishing (the books are pure state, guarded by self._lock)
        self._pub = PublishBook(self.publisher_id)
        self._pub_outbox: _Outbox[pb.PublishRequest] | None = None
        self._pub_call: Any = None
        self._pub_up = False
        # subscribing
        self._book = WatchBook()
        self._sub_outbox: _Outbox[pb.SubscribeRequest] | None = None
        self._sub_call: Any = None
        self._sub_up = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the background threads; never raises when the registry is down (they keep retrying)."""
        with self._lock:
            if self._channel is not None:
                return
            self._channel = grpc.insecure_channel(
                self.address, options=channel_options(self._reconnect_min, self._reconnect_max)
            )
        stub = pb_grpc.RegistryStub(self._channel)  # type: ignore[no-untyped-call]
        for name, target in (("subscribe", self._subscribe_loop), ("publish", self._publish_loop)):
            thread = threading.Thread(
                target=target, args=(stub,), name=f"plexus-registry-{name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def close(self, withdraw: bool = True, timeout: float = 2.0) -> None:
        """Stop the threads and close the channel.

        ``withdraw``: first publish an empty set (and wait for its answer up to ``timeout``) so consumers drop
        this publisher at once instead of after the registry's lease grace.
        """
        if withdraw:
            with self._lock:
                publishing = self._pub.published is not None and self._pub_up
            if publishing:
                self.set_published([])
                with self._changed:
                    target = self._pub.generation
                    self._changed.wait_for(lambda: self._pub.acked_generation >= target, timeout)
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
            calls = [self._pub_call, self._sub_call]
            outboxes = [self._pub_outbox, self._sub_outbox]
        for call in calls:
            if call is not None:
                call.cancel()
        for outbox in outboxes:
            if outbox is not None:
                outbox.close()
        for thread in self._threads:
            thread.join(timeout)
        if self._channel is not None:
            self._channel.close()

    @property
    def connected(self) -> bool:
        """The subscribe stream is up, and so is the publish stream when this client publishes."""
        with self._lock:
            return self._sub_up and (self._pub_up or self._pub.published is None)

    # ------------------------------------------------------------------ publishing

    def set_published(self, instances: Sequence[Instance]) -> None:
        """Replace the whole published set; it is sent now if connected and again after every reconnect."""
        with self._changed:
            self._pub.replace(instances)
            if self._pub_outbox is not None:
                self._send_published_locked()
            self._changed.notify_all()

    def publish_errors(self) -> list[PublishError]:
        """(index, field, message) of each instance the registry refused in its last answer."""
        with self._lock:
            return list(self._pub.errors)

    def _send_published_locked(self) -> None:
        assert self._pub_outbox is not None
        self._pub_outbox.put(self._pub.request())

    def _publish_loop(self, stub: pb_grpc.RegistryStub) -> None:
        delay = self._reconnect_min
        while not self._stopping.is_set():
            with self._changed:
                self._changed.wait_for(lambda: self._pub.published is not None or self._stopping.is_set())
                if self._stopping.is_set():
                    return
                outbox: _Outbox[pb.PublishRequest] = _Outbox()
                self._pub_outbox = outbox
                self._pub.new_stream()
                self._send_published_locked()
                call = self._pub_call = stub.Publish(iter(outbox))
            try:
                call.initial_metadata()  # returns once the registry accepted the stream, or the call failed
                with self._lock:
                    # a refused connect also ends initial_metadata(), with the call already done
                    self._pub_up = not call.done()
                if self._pub_up:
                    delay = self._reconnect_min  # back off further only while connects keep failing
                for response in call:
                    with self._changed:
                        self._pub.answered(response)
                        self._changed.notify_all()
            except grpc.RpcError as exc:
                if not self._stopping.is_set():
                    log.info("registry %s: publish stream ended: %s", self.address, _describe(exc))
            finally:
                outbox.close()
                with self._lock:
                    self._pub_up = False
                    self._pub_outbox = None
            if self._stopping.wait(jitter(delay)):
                return
            delay = min(delay * 2, self._reconnect_max)

    # ------------------------------------------------------------------ subscribing

    def watch(self, service: str, callback: Callback) -> None:
        """Call ``callback(set)`` on the client thread for each new set of ``service``.

        Called at once, on the calling thread, with the cached set if there is one.
        """
        with self._lock:
            self._send_subscribe_locked(self._book.add_callback(service, callback))
            cached = self._book.sets.get(service)
        if cached is not None:
            callback(cached)

    def unwatch(self, service: str, callback: Callback) -> None:
        """Remove ``callback``; the service is unwatched once it has no callbacks (its cache stays)."""
        with self._lock:
            self._send_subscribe_locked(self._book.remove_callback(service, callback))

    def current(self, service: str) -> ServiceSet | None:
        """The last set seen for ``service`` (kept while the registry is away)."""
        with self._lock:
            return self._book.sets.get(service)

    def wait_for(self, service: str, timeout: float) -> ServiceSet | None:
        """Block until a set of ``service`` is known (watching it if nobody does); None after ``timeout``."""
        with self._changed:
            self._send_subscribe_locked(self._book.watch(service))
            self._changed.wait_for(lambda: service in self._book.sets, timeout)
            return self._book.sets.get(service)

    def _send_subscribe_locked(self, request: pb.SubscribeRequest | None) -> None:
        if request is not None and self._sub_outbox is not None:
            self._sub_outbox.put(request)

    def _subscribe_loop(self, stub: pb_grpc.RegistryStub) -> None:
        delay = self._reconnect_min
        while not self._stopping.is_set():
            outbox: _Outbox[pb.SubscribeRequest] = _Outbox()
            with self._lock:
                self._sub_outbox = outbox
                outbox.put(self._book.resubscribe())
                call = self._sub_call = stub.Subscribe(iter(outbox))
            try:
                call.initial_metadata()
                with self._lock:
                    self._sub_up = not call.done()  # as for publishing: a failed call is not "up"
                if self._sub_up:
                    delay = self._reconnect_min
                for update in call:
                    self._deliver(service_set_from_pb(update))
            except grpc.RpcError as exc:
                if not self._stopping.is_set():
                    log.info("registry %s: subscribe stream ended: %s", self.address, _describe(exc))
            finally:
                outbox.close()
                with self._lock:
                    self._sub_up = False
                    self._sub_outbox = None
            if self._stopping.wait(jitter(delay)):
                return
            delay = min(delay * 2, self._reconnect_max)

    def _deliver(self, sset: ServiceSet) -> None:
        with self._changed:
            callbacks = self._book.accept(sset)
            if callbacks is None:
                return  # never go back (a late or repeated push)
            self._changed.notify_all()
        for callback in callbacks:
            try:
                callback(sset)
            except Exception:  # one consumer's bug must not stop the stream for the others
                log.exception("registry watch callback for %s failed", sset.service)


def list_services(address: str, timeout: float = 2.0, service: str = "") -> list[ServiceSet]:
    """A snapshot of the registry's sets (all, or one ``service``); raises grpc.RpcError when unreachable."""
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.RegistryStub(channel).List(pb.ListRequest(service=service), timeout=timeout)  # type: ignore[no-untyped-call]
    return [service_set_from_pb(u) for u in response.services]


def _describe(exc: grpc.RpcError) -> str:
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    return f"{code() if callable(code) else exc} {details() if callable(details) else ''}".strip()

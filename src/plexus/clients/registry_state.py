"""The registry clients' bookkeeping, without I/O or locks: both the grpcio client (threads, it holds a lock
around every call here) and the asyncio client (one loop, no lock) keep their state in these two objects.

* ``PublishBook``: the published set, a generation per replacement, the generations sent on the current stream
  and not yet answered (the registry answers each PublishRequest once, in order), the last refusals.
* ``WatchBook``: watched services and their callbacks, the last set per service (kept while the registry is
  away) and the version guard: a set not newer than the last delivered one for its service is ignored.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections import deque
from collections.abc import Callable, Sequence

from plexus.clients.convert import publish_request
from plexus.discovery.model import Instance, ServiceSet
from plexus.proto import registry_pb2 as pb

Callback = Callable[[ServiceSet], None]
PublishError = tuple[int, str, str]  # (index, field, message) of an instance the registry refused


def default_publisher_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def jitter(delay: float) -> float:
    """±25 %: sidecars that lost the same registry do not all come back in the same millisecond."""
    return delay * (0.75 + random.random() * 0.5)


class PublishBook:
    def __init__(self, publisher_id: str) -> None:
        self.publisher_id = publisher_id
        self.published: tuple[Instance, ...] | None = None  # None: never published, no publish stream
        self.generation = 0  # bumped by every replacement
        self.acked_generation = 0
        self.errors: list[PublishError] = []
        self._in_flight: deque[int] = deque()  # generations sent on the current stream, not yet answered

    def replace(self, instances: Sequence[Instance]) -> None:
        self.published = tuple(instances)
        self.generation += 1

    def new_stream(self) -> None:
        """A new publish stream: nothing is in flight on it yet."""
        self._in_flight.clear()

    def request(self) -> pb.PublishRequest:
        """The request carrying the current set; it is counted as in flight until answered."""
        assert self.published is not None
        self._in_flight.append(self.generation)
        return publish_request(self.publisher_id, self.published)

    def answered(self, response: pb.PublishResponse) -> None:
        generation = self._in_flight.popleft() if self._in_flight else self.generation
        self.acked_generation = max(self.acked_generation, generation)
        self.errors = [(e.index, e.field, e.message) for e in response.errors]


class WatchBook:
    def __init__(self) -> None:
        self.watched: set[str] = set()
        self.callbacks: dict[str, list[Callback]] = {}
        self.sets: dict[str, ServiceSet] = {}

    def watch(self, service: str) -> pb.SubscribeRequest | None:
        """Watch ``service``; returns the request to send on an open stream if it was not watched yet."""
        if service in self.watched:
            return None
        self.watched.add(service)
        return pb.SubscribeRequest(add=[service])

    def add_callback(self, service: str, callback: Callback) -> pb.SubscribeRequest | None:
        self.callbacks.setdefault(service, []).append(callback)
        return self.watch(service)

    def remove_callback(self, service: str, callback: Callback) -> pb.SubscribeRequest | None:
        """Drop ``callback``; the service is unwatched once it has none (its cache stays)."""
        callbacks = self.callbacks.get(service, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if callbacks:
            return None
        self.callbacks.pop(service, None)
        if service not in self.watched:
            return None
        self.watched.discard(service)
        return pb.SubscribeRequest(remove=[service])

    def resubscribe(self) -> pb.SubscribeRequest:
        """The first request on a new subscribe stream: every watched service."""
        return pb.SubscribeRequest(add=sorted(self.watched))

    def accept(self, sset: ServiceSet) -> list[Callback] | None:
        """Cache ``sset`` and return the callbacks to call, or None when it is not newer (never go back) or
        the service is no longer watched (a push that crossed our unsubscribe on the wire: the cache keeps the
        last set seen while watching, so ``current`` after ``unwatch`` does not depend on that race)."""
        if sset.service not in self.watched:
            return None
        last = self.sets.get(sset.service)
        if last is not None and sset.version <= last.version:
            return None
        self.sets[sset.service] = sset
        return list(self.callbacks.get(sset.service, ()))

"""The registry's store interface: where publishers' instances and services' versions are kept.

The registry server owns the lease, debounce and version logic (``plexus.push.registry_state``); a store keeps
what must outlive one registry process. The shape follows etcd so an etcd store can come later: a publisher is
a *session* (an etcd lease), its instances are keys put and deleted under that session, versions are keys of
their own, and ``load`` reads everything back after a restart. Methods are coroutines because a remote store
does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from plexus.discovery.model import Instance


@dataclass(frozen=True, slots=True)
class StoredRegistry:
    """Everything a store remembers: each publisher's last whole set and each service's last version."""

    publishers: Mapping[str, Sequence[Instance]] = field(default_factory=dict)
    versions: Mapping[str, int] = field(default_factory=dict)


class RegistryStore(Protocol):
    async def load(self) -> StoredRegistry | None:
        """What the store remembered, or None when it holds nothing from an earlier run."""
        ...

    async def open_session(self, publisher_id: str, ttl: float) -> None:
        """A publisher's stream opened (etcd: grant or refresh a lease of ``ttl`` seconds)."""
        ...

    async def close_session(self, publisher_id: str) -> None:
        """The stream ended; the instances stay until ``delete_publisher`` (etcd: the lease runs out)."""
        ...

    async def put_instances(self, publisher_id: str, instances: Sequence[Instance]) -> None:
        """Replace the publisher's whole set."""
        ...

    async def delete_publisher(self, publisher_id: str) -> None:
        """The publisher withdrew for good or lost its lease: forget its instances."""
        ...

    async def put_versions(self, versions: Mapping[str, int]) -> None: ...

    async def snapshot(self) -> StoredRegistry:
        """What the store holds now."""
        ...

    async def flush(self) -> None:
        """Make everything written so far durable (a memory store writes its snapshot file)."""
        ...

    async def close(self) -> None: ...

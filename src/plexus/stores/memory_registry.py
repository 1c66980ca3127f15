"""The embedded registry store: dicts in memory, written to a JSON snapshot file on ``flush`` (with a dir)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

from plexus.discovery.model import Instance
from plexus.stores.registry_snapshot import FILE_NAME, read_snapshot, write_snapshot
from plexus.stores.registry_store import StoredRegistry


class MemoryRegistryStore:
    """Implements ``RegistryStore``. Without ``data_dir`` it remembers nothing across restarts."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self._path = data_dir / FILE_NAME if data_dir is not None else None
        self._publishers: dict[str, tuple[Instance, ...]] = {}
        self._versions: dict[str, int] = {}
        self._dirty = False
        self._lock = asyncio.Lock()  # one snapshot write at a time, in order

    @property
    def path(self) -> Path | None:
        return self._path

    async def load(self) -> StoredRegistry | None:
        if self._path is None:
            return None
        stored = await asyncio.to_thread(read_snapshot, self._path)
        if stored is not None:
            self._publishers = {pid: tuple(insts) for pid, insts in stored.publishers.items()}
            self._versions = dict(stored.versions)
        return stored

    async def open_session(self, publisher_id: str, ttl: float) -> None:
        return None  # leases are kept by the server's state machine; nothing to persist

    async def close_session(self, publisher_id: str) -> None:
        return None

    async def put_instances(self, publisher_id: str, instances: Sequence[Instance]) -> None:
        new = tuple(instances)
        if self._publishers.get(publisher_id) != new:
            self._publishers[publisher_id] = new
            self._dirty = True

    async def delete_publisher(self, publisher_id: str) -> None:
        if self._publishers.pop(publisher_id, None) is not None:
            self._dirty = True

    async def put_versions(self, versions: Mapping[str, int]) -> None:
        if versions:
            self._versions.update(versions)
            self._dirty = True

    async def snapshot(self) -> StoredRegistry:
        return StoredRegistry(dict(self._publishers), dict(self._versions))

    async def flush(self) -> None:
        if self._path is None or not self._dirty:
            return
        async with self._lock:
            self._dirty = False
            stored = StoredRegistry(dict(self._publishers), dict(self._versions))
            try:
                await asyncio.to_thread(write_snapshot, self._path, stored)
            except BaseException:
                self._dirty = True
                raise

    async def close(self) -> None:
        await self.flush()

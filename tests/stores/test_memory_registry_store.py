"""The embedded registry store and its snapshot file: round trip, atomic replace, corrupt files named."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from plexus.core.errors import ConfigError
from plexus.discovery.model import Instance
from plexus.stores.memory_registry import MemoryRegistryStore
from plexus.stores.registry_snapshot import FILE_NAME, read_snapshot, write_snapshot
from plexus.stores.registry_store import RegistryStore, StoredRegistry

FULL = Instance(
    "orders",
    "10.0.0.1:80",
    protocol="bolt",
    version="v3",
    labels={"k": "v"},
    zone="z",
    unit="u",
    weight=5,
    identity="spiffe://td/ns/a/sa/b",
    mtls=True,
    workload="w",
    meshed=True,
)


def test_the_store_remembers_across_instances_only_with_a_data_dir(tmp_path: Path) -> None:
    async def scenario() -> None:
        first: RegistryStore = MemoryRegistryStore(tmp_path)
        assert await first.load() is None
        await first.open_session("p1", 3.0)
        await first.put_instances("p1", [FULL])
        await first.put_instances("p2", [Instance("pay", "10.0.0.2:80")])
        await first.put_versions({"orders": 11, "pay": 12})
        await first.delete_publisher("p2")
        await first.close()  # flushes

        second = MemoryRegistryStore(tmp_path)
        loaded = await second.load()
        assert loaded is not None
        assert {k: list(v) for k, v in loaded.publishers.items()} == {"p1": [FULL]}
        assert dict(loaded.versions) == {"orders": 11, "pay": 12}
        assert await second.snapshot() == StoredRegistry({"p1": (FULL,)}, {"orders": 11, "pay": 12})

        volatile = MemoryRegistryStore(None)
        await volatile.put_instances("p1", [FULL])
        await volatile.flush()
        assert await volatile.load() is None

    asyncio.run(scenario())
    assert not list(tmp_path.glob("*.tmp"))


def test_a_snapshot_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    write_snapshot(path, StoredRegistry({"a": (FULL,)}, {"orders": 1}))
    write_snapshot(path, StoredRegistry({}, {"orders": 2}))
    stored = read_snapshot(path)
    assert stored is not None and dict(stored.versions) == {"orders": 2} and not stored.publishers
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"format": 99}', b'{"format": 1, "publishers": {"p": [{}]}}']
)
def test_a_corrupt_snapshot_is_an_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_snapshot(path)
    assert str(path) in str(info.value)

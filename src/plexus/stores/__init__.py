"""plexus.stores: pluggable backends that do I/O (the registry's store)."""

from plexus.stores.memory_registry import MemoryRegistryStore
from plexus.stores.registry_store import RegistryStore, StoredRegistry

__all__ = ["MemoryRegistryStore", "RegistryStore", "StoredRegistry"]

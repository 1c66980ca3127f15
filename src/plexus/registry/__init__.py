"""plexus.registry: the service registry process (publish with lease, subscribe with push)."""

from plexus.registry.app import RegistryConfig, run_registry

__all__ = ["RegistryConfig", "run_registry"]

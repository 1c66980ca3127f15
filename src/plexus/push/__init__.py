"""plexus.push: versioned push protocols as sans-IO state machines."""

from plexus.push.registry_state import Clock, Effects, Push, RegistryState, Restored, SubscriberId

__all__ = ["Clock", "Effects", "Push", "RegistryState", "Restored", "SubscriberId"]

"""Registry data model (pure): instances, versioned service sets, validation."""

from plexus.discovery.model import (
    DEFAULT_WEIGHT,
    PROTOCOLS,
    Instance,
    ServiceSet,
    SetState,
    validate_instance,
    validate_service_name,
)

__all__ = [
    "DEFAULT_WEIGHT",
    "PROTOCOLS",
    "Instance",
    "ServiceSet",
    "SetState",
    "validate_instance",
    "validate_service_name",
]

"""The registry's data model: what an instance is, and the versioned set a subscriber sees.

Pure: no I/O. The registry server, the registry client, the sidecar and the SDK all speak in these types;
``plexus.clients.convert`` maps them to and from the messages of ``proto/plexus/proto/registry.proto``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from plexus.core.address import parse_host_port
from plexus.core.errors import ValidationError

PROTOCOLS: Final = frozenset({"http", "tcp", "grpc", "bolt", "dubbo"})
DEFAULT_WEIGHT: Final = 100
MAX_WEIGHT: Final = 10_000
# A service name is a DNS-ish label path (orders, com.acme.Orders:1.0); it is used in Host headers and URLs.
SERVICE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,252}$")
MAX_LABELS: Final = 64
MAX_LABEL_BYTES: Final = 1024  # per key and per value; metadata is routing data, not a payload store


class SetState(Enum):
    LIVE = "live"  # what live publishers hold now
    RESTORED = "restored"  # remembered across a registry restart; publishers are not all back yet


@dataclass(frozen=True, slots=True)
class Instance:
    service: str
    address: str  # HOST:PORT callers connect to
    protocol: str = "http"
    version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    zone: str = ""
    unit: str = ""
    weight: int = DEFAULT_WEIGHT
    identity: str = ""
    mtls: bool = False
    workload: str = ""
    meshed: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """An instance is identified within its service by its address."""
        return (self.service, self.address)


@dataclass(frozen=True, slots=True)
class ServiceSet:
    """The full set of a service's instances as pushed to subscribers. ``version`` only grows."""

    service: str
    version: int
    instances: tuple[Instance, ...]
    state: SetState = SetState.LIVE


def validate_service_name(name: str, field_name: str = "service") -> str:
    if not SERVICE_NAME.match(name):
        raise ValidationError(
            field_name, f"{name!r} is not a service name (letters, digits, . _ : -; at most 253 characters)"
        )
    return name


def validate_instance(instance: Instance) -> Instance:
    """Check every field; raise ValidationError naming the first bad one. Returns the instance unchanged."""
    validate_service_name(instance.service)
    address = parse_host_port(instance.address, "address", allow_zero=False)
    if address.host in ("0.0.0.0", "::"):
        raise ValidationError("address", f"{instance.address!r}: publish a routable host, not a wildcard")
    if instance.protocol not in PROTOCOLS:
        raise ValidationError("protocol", f"{instance.protocol!r} is not one of {sorted(PROTOCOLS)}")
    if not 0 < instance.weight <= MAX_WEIGHT:
        raise ValidationError("weight", f"{instance.weight} is not in 1..{MAX_WEIGHT}")
    if len(instance.labels) > MAX_LABELS:
        raise ValidationError("labels", f"{len(instance.labels)} labels; at most {MAX_LABELS}")
    for key, value in instance.labels.items():
        if not key or len(key.encode()) > MAX_LABEL_BYTES or len(value.encode()) > MAX_LABEL_BYTES:
            raise ValidationError(
                f"labels.{key[:40]}", f"empty key, or key/value over {MAX_LABEL_BYTES} bytes"
            )
    for name in ("version", "zone", "unit", "workload", "identity"):
        value = getattr(instance, name)
        if len(value) > 256 or any(ord(c) < 0x20 for c in value):
            raise ValidationError(name, f"{value[:40]!r}: over 256 characters or holds control characters")
    return instance

"""Where the SDK finds the sidecar and the registry: arguments, then ``PLEXUS_*`` variables, then defaults."""

from __future__ import annotations

import os
from typing import Final, Literal

from plexus.core.errors import ValidationError

Mode = Literal["mesh", "direct"]
MODES: Final = ("mesh", "direct")

ENV_SIDECAR_API: Final = "PLEXUS_SIDECAR_API"
ENV_REGISTRY: Final = "PLEXUS_REGISTRY"
ENV_ADVERTISE_HOST: Final = "PLEXUS_ADVERTISE_HOST"
ENV_MODE: Final = "PLEXUS_MODE"  # lets an operator force a mode without touching the app

DEFAULT_SIDECAR_API: Final = "127.0.0.1:15301"  # DESIGN.md §1: the sidecar's local API
DEFAULT_REGISTRY: Final = "127.0.0.1:15200"  # DESIGN.md §1: the registry's gRPC port
DEFAULT_ADVERTISE_HOST: Final = "127.0.0.1"

# A sidecar on loopback answers /ready in well under a millisecond; 0.3 s tolerates a busy machine while
# keeping an app without a sidecar from waiting noticeably at start.
PROBE_TIMEOUT: Final = 0.3
# When the caller insists on mesh mode, the sidecar may still be starting next to the app.
FORCED_MESH_PROBE_TIMEOUT: Final = 2.0


def sidecar_api(explicit: str | None) -> str:
    return explicit or os.environ.get(ENV_SIDECAR_API) or DEFAULT_SIDECAR_API


def registry(explicit: str | None) -> str:
    return explicit or os.environ.get(ENV_REGISTRY) or DEFAULT_REGISTRY


def advertise_host(explicit: str | None) -> str:
    return explicit or os.environ.get(ENV_ADVERTISE_HOST) or DEFAULT_ADVERTISE_HOST


def forced_mode(explicit: str | None) -> Mode | None:
    """The mode the caller (or ``PLEXUS_MODE``) insists on; None means detect."""
    value = explicit if explicit is not None else (os.environ.get(ENV_MODE) or None)
    if value is None or value == "auto":
        return None
    if value == "mesh":
        return "mesh"
    if value == "direct":
        return "direct"
    raise ValidationError("mode", f"{value!r} is not one of 'mesh', 'direct' or None (detect)")

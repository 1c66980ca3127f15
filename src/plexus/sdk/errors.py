"""Typed errors of the SDK: each says which side (sidecar, registry, service) failed and what to do."""

from __future__ import annotations

from plexus.core.errors import PlexusError


class SdkError(PlexusError):
    """Base of the errors the SDK raises on purpose."""


class SidecarUnavailableError(SdkError):
    """Mesh mode was asked for, but no sidecar answers on its local API."""

    def __init__(self, address: str, detail: str) -> None:
        super().__init__(
            f"no Plexus sidecar answers at {address} ({detail}); start one, set PLEXUS_SIDECAR_API, "
            "or connect(mode='direct')"
        )
        self.address = address


class SidecarApiError(SdkError):
    """The sidecar's local API refused or failed a request."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        super().__init__(f"sidecar API {method} {path} answered {status}: {detail}")
        self.method = method
        self.path = path
        self.status = status


class ClientClosedError(SdkError):
    """The client was closed; make a new one with ``plexus.sdk.connect()``."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: this plexus.sdk client is closed")

"""plexus.clients: I/O clients of Plexus's own gRPC services.

``RegistryClient`` (grpcio on threads, loop-agnostic; the SDK's direct mode) and ``AsyncRegistryClient``
(asyncio over ``grpc_h2``; the sidecar). Both are loaded on first use, so importing one never imports the
other's stack: the sidecar must not load grpc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plexus.clients.registry import RegistryClient, list_services
    from plexus.clients.registry_async import AsyncRegistryClient

__all__ = ["AsyncRegistryClient", "RegistryClient", "list_services"]

_HOMES = {
    "RegistryClient": "plexus.clients.registry",
    "list_services": "plexus.clients.registry",
    "AsyncRegistryClient": "plexus.clients.registry_async",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)

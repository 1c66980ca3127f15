"""plexus.config: typed configuration models, validated with file/line errors. Pure: no I/O.

The bootstrap names (pydantic, PyYAML) are loaded on first use, not on ``import plexus.config``: the serving
sidecar imports ``plexus.config.sidecar_settings`` and must not map pydantic or PyYAML (its idle memory).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plexus.config.bootstrap import (
        FIELDS,
        BootstrapError,
        ResolvedBootstrap,
        SidecarBootstrap,
        env_name,
        flag_name,
        resolve_bootstrap,
    )

__all__ = [
    "FIELDS",
    "BootstrapError",
    "ResolvedBootstrap",
    "SidecarBootstrap",
    "env_name",
    "flag_name",
    "resolve_bootstrap",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("plexus.config.bootstrap"), name)
    raise AttributeError(f"module 'plexus.config' has no attribute {name!r}")

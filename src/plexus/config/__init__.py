"""plexus.config: typed configuration models, validated with file/line errors. Pure: no I/O."""

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

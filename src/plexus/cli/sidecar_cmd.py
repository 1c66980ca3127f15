"""`plexus sidecar`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add `plexus sidecar` to the CLI (filled in by the sidecar work)."""

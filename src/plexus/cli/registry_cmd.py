"""`plexus registry`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add `plexus registry` to the CLI (filled in by the registry work)."""

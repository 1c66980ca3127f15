"""`plexus demo`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add `plexus demo` to the CLI (filled in by the demo work)."""

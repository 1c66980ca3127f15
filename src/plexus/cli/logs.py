"""Logging set-up shared by the long-running commands (registry, control plane)."""

from __future__ import annotations

import logging

import typer

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(log_level: str) -> None:
    """Log at ``--log-level`` (debug, info, warning, error); an unknown level is a usage error (exit 2)."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        typer.echo(f"error: --log-level: {log_level!r} is not one of debug, info, warning, error", err=True)
        raise typer.Exit(2)
    logging.basicConfig(level=level, format=LOG_FORMAT)

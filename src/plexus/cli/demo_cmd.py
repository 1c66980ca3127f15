"""`plexus demo`: a registry, sidecars, two providers and two consumers on this machine, with a live table."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add `plexus demo` to the CLI."""

    @app.command("demo")
    def demo(
        duration: Annotated[
            float,
            typer.Option(help="stop after SECONDS; exit 1 if any call failed (0: run until Ctrl-C)", min=0.0),
        ] = 0.0,
        rate: Annotated[float, typer.Option(help="calls per second per consumer", min=0.1)] = 20.0,
    ) -> None:
        """Run a whole mesh (registry, meshed and direct providers and consumers); show calls per path."""
        from plexus.demo.runner import run_demo  # here, so that `plexus --help` stays fast

        raise typer.Exit(run_demo(duration=duration, rate=rate))

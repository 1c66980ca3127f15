"""`plexus registry`: the service registry (publish with lease, subscribe with push)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add `plexus registry` to the CLI."""

    @app.command("registry")
    def registry(
        listen: Annotated[str, typer.Option(help="gRPC HOST:PORT (port 0 picks one)")] = "127.0.0.1:15200",
        admin: Annotated[str, typer.Option(help="admin HTTP HOST:PORT")] = "127.0.0.1:15201",
        data_dir: Annotated[
            Path | None,
            typer.Option(help="remember the last sets here (snapshot file) and serve them after a restart"),
        ] = None,
        lease_grace: Annotated[
            float, typer.Option(help="seconds a lost publisher's instances stay, absorbing a reconnect")
        ] = 3.0,
        debounce_ms: Annotated[
            float, typer.Option(help="one push per burst of changes within this window")
        ] = 50.0,
        warmup: Annotated[
            float | None,
            typer.Option(help="seconds after start during which no set shrinks (default: lease-grace + 2)"),
        ] = None,
        ready_file: Annotated[
            Path | None, typer.Option(help="write bound addresses here as JSON once listening")
        ] = None,
        log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    ) -> None:
        """Run the service registry."""
        import asyncio

        from plexus.cli.logs import configure_logging
        from plexus.core.errors import ConfigError
        from plexus.registry.app import RegistryConfig, run_registry

        configure_logging(log_level)
        config = RegistryConfig(
            listen=listen,
            admin=admin,
            data_dir=data_dir,
            lease_grace=lease_grace,
            debounce=debounce_ms / 1000,
            warmup=lease_grace + 2 if warmup is None else warmup,
            ready_file=ready_file,
        )
        try:
            config.validate()
            asyncio.run(run_registry(config))  # the default loop: grpc.aio and uvloop do not mix reliably
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            pass

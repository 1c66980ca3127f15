"""`plexus control`: the control plane (policy resources, per-sidecar snapshots pushed with ACK/NACK) with the
registry embedded by default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add `plexus control` to the CLI."""

    @app.command("control")
    def control(
        listen: Annotated[
            str, typer.Option(help="gRPC HOST:PORT for sidecars and the CLI (port 0 picks one)")
        ] = "127.0.0.1:15400",
        admin: Annotated[str, typer.Option(help="admin HTTP HOST:PORT")] = "127.0.0.1:15401",
        config_dir: Annotated[
            Path | None,
            typer.Option(
                help="apply every *.yaml/*.yml here at start, in name order (invalid: refuse to start)"
            ),
        ] = None,
        data_dir: Annotated[
            Path | None,
            typer.Option(
                help="keep applied resources (and the embedded registry's sets) here across restarts"
            ),
        ] = None,
        debounce_ms: Annotated[
            float, typer.Option(help="push once a burst of changes has been quiet this long")
        ] = 100.0,
        max_debounce_ms: Annotated[
            float, typer.Option(help="push at the latest this long after a burst's first change")
        ] = 10_000.0,
        no_registry: Annotated[
            bool, typer.Option("--no-registry", help="do not serve the registry on --listen")
        ] = False,
        lease_grace: Annotated[
            float,
            typer.Option(help="embedded registry: seconds a lost publisher's instances stay"),
        ] = 3.0,
        warmup: Annotated[
            float | None,
            typer.Option(
                help="embedded registry: seconds after start during which no set shrinks "
                "(default: lease-grace + 2)"
            ),
        ] = None,
        ready_file: Annotated[
            Path | None, typer.Option(help="write bound addresses here as JSON once listening")
        ] = None,
        log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    ) -> None:
        """Run the control plane (and, unless --no-registry, the registry on the same port)."""
        import asyncio

        from plexus.cli.logs import configure_logging
        from plexus.control.app import ControlConfig, run_control
        from plexus.control.core import StartupError
        from plexus.core.errors import ConfigError

        configure_logging(log_level)
        config = ControlConfig(
            listen=listen,
            admin=admin,
            config_dir=config_dir,
            data_dir=data_dir,
            debounce=debounce_ms / 1000,
            max_debounce=max_debounce_ms / 1000,
            registry=not no_registry,
            lease_grace=lease_grace,
            warmup=lease_grace + 2 if warmup is None else warmup,
            ready_file=ready_file,
        )
        try:
            config.validate()
            asyncio.run(run_control(config))  # the default loop: grpc.aio and uvloop do not mix reliably
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except StartupError as exc:
            typer.echo(f"error: invalid policy resources ({len(exc.problems)} problems):", err=True)
            for problem in exc.problems:
                typer.echo(f"  {problem}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            pass

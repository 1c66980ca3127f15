"""The ``plexus`` command. Each subcommand lives in its own module and registers itself here, explicitly.

Subcommand modules import only typer at module level; the heavy parts (grpc, the data plane) are imported
inside the command, so ``plexus --help`` stays fast.
"""

from __future__ import annotations

import typer

from plexus.cli import (
    check_cmd,
    control_cmd,
    demo_cmd,
    observe_cmd,
    policy_cmd,
    registry_cmd,
    sidecar_cmd,
    stress_cmd,
)

app = typer.Typer(
    name="plexus",
    help="Plexus service mesh: sidecar, registry, demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (registry_cmd, sidecar_cmd, demo_cmd, policy_cmd, control_cmd):
    module.register(app)
stress_cmd.register(app)
observe_cmd.register(app)  # stat, top, tap, explain, dashboard
check_cmd.register(app)


@app.command()
def version() -> None:
    """Print Plexus's version."""
    from plexus import __version__

    typer.echo(__version__)


def main() -> None:
    app()

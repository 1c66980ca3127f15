"""What every observability command shares: the ``--control`` option, the client, exit codes, errors.

The same conventions as ``plexus.cli.policy_cmd``: ``--control HOST:PORT`` (env ``PLEXUS_CONTROL``, default
127.0.0.1:15400); exit 0 done, 1 invalid or failed (not found, a check failed), 2 bad usage, 3 the control
plane cannot be reached. Errors go to stderr as ``error: ...``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from plexus.clients.control import ControlClient

DEFAULT_CONTROL: Final = "127.0.0.1:15400"  # as plexus.clients.control.DEFAULT_CONTROL (not imported: grpc)
CONTROL_ENV: Final = "PLEXUS_CONTROL"
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3

T = TypeVar("T")


def control_option() -> Any:
    return typer.Option(
        "--control",
        envvar=CONTROL_ENV,
        metavar="HOST:PORT",
        help=f"control plane address [env: {CONTROL_ENV}] (default {DEFAULT_CONTROL})",
        show_default=False,
        show_envvar=False,
    )


def output_option(choices: Sequence[str]) -> Any:
    return typer.Option("-o", "--output", help=" or ".join(choices), show_default=False)


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def check_output(output: str | None, choices: Sequence[str]) -> str:
    """The -o value, defaulting to the first choice; a value not among ``choices`` is a usage error."""
    if output is None:
        return choices[0]
    if output not in choices:
        fail(f"-o {output!r}: use {' or '.join(choices)}", EXIT_USAGE)
    return output


def duration_option_value(name: str, text: str) -> float:
    """Seconds in a duration option (``30s``, ``500ms``); a malformed one is a usage error."""
    from plexus.cli.tables import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"{name}: {exc}", EXIT_USAGE)


def client(address: str) -> ControlClient:
    from plexus.clients.control import ControlClient
    from plexus.core.errors import ValidationError

    try:
        return ControlClient(address)
    except ValidationError as exc:
        fail(f"--control {address!r}: {exc}", EXIT_USAGE)


def calling(action: Callable[[], T]) -> T:
    """Run one control-plane call; unreachable ends the command with 3, any other failure with 1."""
    from plexus.clients.control import ControlCallError, ControlUnavailable

    try:
        return action()
    except ControlUnavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except ControlCallError as exc:
        fail(str(exc), EXIT_FAILED)

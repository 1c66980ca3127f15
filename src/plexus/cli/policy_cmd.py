"""`plexus apply / get / delete / validate / proxy-status`: drive the control plane's policy resources.

Every command that talks to the control plane takes ``--control HOST:PORT`` (env ``PLEXUS_CONTROL``, default
127.0.0.1:15400, the address given to ``plexus control --listen``). ``validate`` works without one: it parses
locally, and checks against the stored set (a dry-run Apply) only when ``--control`` or ``PLEXUS_CONTROL`` is
given. Kinds are case-insensitive, singular, plural or short as kubectl takes them (vs, dr, rlp, ur, ts).

Exit codes: 0 done; 1 invalid input or refused (every problem printed, one per line); 2 bad usage;
3 the control plane cannot be reached.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn

import typer

if TYPE_CHECKING:
    from plexus.clients.control import ControlClient

DEFAULT_CONTROL: Final = "127.0.0.1:15400"  # the same as plexus.clients.control.DEFAULT_CONTROL
CONTROL_ENV: Final = "PLEXUS_CONTROL"
EXIT_INVALID: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3

KINDS: Final = ("VirtualService", "DestinationRule", "RateLimitPolicy", "UnitRouting", "TrafficShift")
SHORT_NAMES: Final = {"vs": "VirtualService", "dr": "DestinationRule", "rlp": "RateLimitPolicy",
                      "ur": "UnitRouting", "ts": "TrafficShift"}  # fmt: skip


def resolve_kind(text: str) -> str | None:
    """The kind named by ``text`` (any case; singular, plural or short name); None when none is."""
    lowered = text.strip().lower()
    if lowered in SHORT_NAMES:
        return SHORT_NAMES[lowered]
    for kind in KINDS:
        singular = kind.lower()
        plurals = {singular + "s", singular[:-1] + "ies" if singular.endswith("y") else singular + "es"}
        if lowered == singular or lowered in plurals:
            return kind
    return None


def _control_option(default: str | None) -> Any:
    return typer.Option(
        "--control",
        envvar=CONTROL_ENV,
        metavar="HOST:PORT",
        help=f"control plane address [env: {CONTROL_ENV}]"
        + (f" (default {default})" if default else " (none: validate locally only)"),
        show_default=False,
        show_envvar=False,
    )


def _client(address: str) -> ControlClient:
    from plexus.clients.control import ControlClient
    from plexus.core.errors import ValidationError

    try:
        return ControlClient(address)
    except ValidationError as exc:
        _fail(f"--control {address!r}: {exc}", EXIT_USAGE)


def _unknown_kind(kind: str) -> NoReturn:
    _fail(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)} (short: {', '.join(SHORT_NAMES)})", EXIT_USAGE)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _read(path: str) -> tuple[str, str]:
    """(file name for messages, text) of ``path``; ``-`` reads stdin."""
    if path == "-":
        return "<stdin>", sys.stdin.read()
    try:
        return path, Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {path}: {exc}", EXIT_INVALID)


def _calling(action: Any) -> Any:
    """Run one control-plane call; an unreachable control plane or a failed call ends the command."""
    from plexus.clients.control import ControlCallError, ControlUnavailable

    try:
        return action()
    except ControlUnavailable as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except ControlCallError as exc:
        _fail(str(exc), EXIT_INVALID)


def _ref_text(kind: str, name: str, namespace: str = "") -> str:
    shown = name if namespace in ("", "default") else f"{namespace}/{name}"
    return f"{kind.lower()}/{shown}"


# ----------------------------------------------------------------------------------------------- commands
def apply(
    files: Annotated[
        list[str], typer.Option("-f", "--filename", help="YAML file of resources; repeatable; - for stdin")
    ],
    control: Annotated[str, _control_option(DEFAULT_CONTROL)] = DEFAULT_CONTROL,
) -> None:
    """Create or update the resources of each file on the control plane."""
    client = _client(control)
    failed = False
    for path in files:
        name, text = _read(path)
        response = _calling(functools.partial(client.apply, text, name))
        if response.problems:
            failed = True
            for problem in response.problems:
                typer.echo(problem, err=True)
            continue
        for change in response.changes:
            typer.echo(f"{_ref_text(change.ref.kind, change.ref.name, change.ref.namespace)} {change.action}")
    if failed:
        raise typer.Exit(EXIT_INVALID)


def get(
    kind: Annotated[str, typer.Argument(help="kind: vs, dr, rlp, ur, ts (any case, plural too) or all")],
    name: Annotated[str | None, typer.Argument(help="one resource's name")] = None,
    output: Annotated[str | None, typer.Option("-o", "--output", help="yaml or json")] = None,
    namespace: Annotated[
        str, typer.Option("-n", "--namespace", help="namespace (default: every namespace)")
    ] = "",
    control: Annotated[str, _control_option(DEFAULT_CONTROL)] = DEFAULT_CONTROL,
) -> None:
    """Show stored resources: a table, or the applied YAML / JSON."""
    wanted = "" if kind.lower() == "all" else resolve_kind(kind)
    if wanted is None:
        _unknown_kind(kind)
    if output not in (None, "yaml", "json"):
        _fail(f"-o {output!r}: use yaml or json", EXIT_USAGE)
    client = _client(control)
    response = _calling(lambda: client.get(wanted, name or "", namespace))
    resources = list(response.resources)
    if name and not resources:
        _fail(f'{(wanted or "resource").lower()} "{name}" not found', EXIT_INVALID)
    if output == "yaml":
        typer.echo("---\n".join(_ensure_newline(r.yaml) for r in resources), nl=False)
    elif output == "json":
        import yaml

        items = [yaml.safe_load(r.yaml) for r in resources]
        document: Any = items[0] if name and len(items) == 1 else {"kind": "List", "items": items}
        typer.echo(json.dumps(document, indent=2, sort_keys=False))
    elif not resources:
        typer.echo("No resources found.", err=True)
    else:
        rows = [
            [_ref_text(r.ref.kind, r.ref.name) if not wanted else r.ref.name, r.ref.namespace or "default",
             str(r.version), r.source]
            for r in resources
        ]  # fmt: skip
        _table(["NAME", "NAMESPACE", "VERSION", "SOURCE"], rows)


def delete(
    kind: Annotated[str, typer.Argument(help="kind: vs, dr, rlp, ur, ts (any case, plural too)")],
    name: Annotated[str, typer.Argument(help="the resource's name")],
    namespace: Annotated[str, typer.Option("-n", "--namespace", help="namespace")] = "default",
    control: Annotated[str, _control_option(DEFAULT_CONTROL)] = DEFAULT_CONTROL,
) -> None:
    """Delete one resource from the control plane."""
    wanted = resolve_kind(kind)
    if wanted is None:
        _unknown_kind(kind)
    client = _client(control)
    response = _calling(lambda: client.delete(wanted, name, namespace))
    if response.problems:
        for problem in response.problems:
            typer.echo(problem, err=True)
        raise typer.Exit(EXIT_INVALID)
    if not response.deleted:
        _fail(f'{wanted.lower()} "{name}" not found', EXIT_INVALID)
    typer.echo(f"{_ref_text(wanted, name, namespace)} deleted")


def validate(
    files: Annotated[
        list[str], typer.Option("-f", "--filename", help="YAML file of resources; repeatable; - for stdin")
    ],
    control: Annotated[str | None, _control_option(None)] = None,
) -> None:
    """Check files without applying them: every problem with file, line and field path, in one pass."""
    from plexus.config.resources import parse_resources
    from plexus.config.route_config import RouteConfigError

    client = _client(control) if control else None
    failed = False
    for path in files:
        name, text = _read(path)
        if client is not None:
            # The control plane parses the file too and checks what spans resources (a subset its stored
            # DestinationRule defines) against the set this file would leave: every problem in one answer.
            response = _calling(functools.partial(client.apply, text, name, dry_run=True))
            if response.problems:
                failed = True
                for problem in response.problems:
                    typer.echo(problem, err=True)
                continue
        else:
            try:  # alone, the file must hold together
                parse_resources(text, name)
            except RouteConfigError as exc:
                failed = True
                for problem in exc.problems:
                    typer.echo(str(problem), err=True)
                continue
        typer.echo(f"{name}: valid" + (" (checked against the control plane)" if client else ""))
    if failed:
        raise typer.Exit(EXIT_INVALID)


def proxy_status(
    output: Annotated[str | None, typer.Option("-o", "--output", help="json")] = None,
    control: Annotated[str, _control_option(DEFAULT_CONTROL)] = DEFAULT_CONTROL,
) -> None:
    """Each connected sidecar: its policy version and SYNCED / NOT SENT / STALE / NACKED, last error."""
    if output not in (None, "json"):
        _fail(f"-o {output!r}: use json", EXIT_USAGE)
    client = _client(control)
    response = _calling(client.proxy_status)
    if output == "json":
        proxies = [
            {
                "name": p.node.id,
                "workload": p.node.workload,
                "zone": p.node.zone,
                "unit": p.node.unit,
                "sent_version": p.sent_version,
                "acked_version": p.acked_version,
                "nacked_version": p.nacked_version,
                "status": p.state,
                "last_error": p.last_error,
                "connected_seconds": p.connected_seconds,
            }
            for p in response.proxies
        ]
        typer.echo(json.dumps({"version": response.version, "proxies": proxies}, indent=2))
        return
    rows = [
        [p.node.id, p.node.workload or "-", str(p.acked_version), p.state, _one_line(p.last_error) or "-"]
        for p in response.proxies
    ]
    typer.echo(f"control plane policy version {response.version}")
    if rows:
        _table(["NAME", "WORKLOAD", "VERSION", "STATUS", "LAST ERROR"], rows)
    else:
        typer.echo("no sidecars connected")


# ----------------------------------------------------------------------------------------------- output
def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        typer.echo("   ".join(cells).rstrip())


def _one_line(text: str, limit: int = 120) -> str:
    flat = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _ensure_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def register(app: typer.Typer) -> None:
    """Add apply, get, delete, validate and proxy-status to the CLI."""
    app.command(name="apply")(apply)
    app.command(name="get")(get)
    app.command(name="delete")(delete)
    app.command(name="validate")(validate)
    app.command(name="proxy-status")(proxy_status)

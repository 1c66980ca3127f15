"""`plexus check`: a checklist of the install, ✔ or ✘ per check with a hint under each failure.

Checks, in order (the first one failing ends the list: nothing else can be asked):

1. control plane reachable — ``Info`` answers;
2. control plane answering policy — its policy version, and ``Get`` lists the stored resources;
3. registry reachable — embedded: the registry service answers ``List`` on the control plane's address; not
   embedded: said so, and the registry given with ``--registry`` answers ``List``;
4. sidecars connected — at least one;
5. sidecars synced — every connected sidecar SYNCED (``ProxyStatus``), the others named with their state and
   last error; a push in flight (STALE / NOT SENT) gets a few seconds to settle first;
6. sidecar versions match — ``Node.sidecar_version`` equals the control plane's ``Info.version``;
7. no sidecar NACKed — none rejects the policy it was sent.

Exit codes: 0 every check passed; 1 a check failed; 2 bad usage; 3 the control plane cannot be reached (the
checklist is printed all the same). ``-o json`` prints ``{"control", "ok", "checks": [{"name", "ok",
"message", "hint"}]}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Final

import typer

from plexus.cli.control_access import (
    DEFAULT_CONTROL,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    check_output,
    client,
    control_option,
    output_option,
)
from plexus.cli.tables import one_line

if TYPE_CHECKING:
    from plexus.proto import control_pb2 as pb

PASS: Final = "✔"
FAIL: Final = "✘"
SETTLE_SECONDS: Final = 5.0  # a push in flight (STALE, NOT SENT) is normally acknowledged within a second
REGISTRY_TIMEOUT: Final = 5.0
SYNCED: Final = "SYNCED"
NACKED: Final = "NACKED"
NAMES_SHOWN: Final = 5  # sidecars named per failed check; the rest are counted

REACHABLE: Final = "control plane reachable"
POLICY: Final = "control plane answering policy"
REGISTRY: Final = "registry reachable"
CONNECTED: Final = "sidecars connected"
ALL_SYNCED: Final = "sidecars synced"
VERSIONS: Final = "sidecar versions match the control plane"
NO_NACKS: Final = "no sidecar NACKed"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    message: str
    hint: str = ""


# ----------------------------------------------------------------------------------------------- the checks
def reachable(address: str, info: pb.InfoResponse) -> Check:
    registry = "registry embedded" if info.registry_embedded else "registry not embedded"
    return Check(
        REACHABLE, True, f"plexus {info.version} at {address}, up {_age(info.uptime_seconds)}, {registry}"
    )


def unreachable(address: str, error: str) -> Check:
    return Check(
        REACHABLE,
        False,
        error,
        f"start it with `plexus control --listen {address}`, or point --control (or PLEXUS_CONTROL) at it",
    )


def policy(version: int, resources: int) -> Check:
    return Check(
        POLICY, True, f"policy version {version}, {resources} resource{'s' if resources != 1 else ''}"
    )


def policy_failed(error: str) -> Check:
    return Check(
        POLICY, False, error, "see the control plane's log; `plexus get all` shows the stored resources"
    )


def registry_result(services: int | None, where: str, error: str = "") -> Check:
    if services is None:
        return Check(
            REGISTRY,
            False,
            f"{where}: {error}",
            "sidecars cannot discover services without it: start `plexus registry` (or the control plane "
            "without --no-registry) and give its address",
        )
    return Check(REGISTRY, True, f"{where}: {services} service{'s' if services != 1 else ''}")


def connected(proxies: Sequence[pb.ProxyStatus]) -> Check:
    live = _live(proxies)
    if not live:
        return Check(
            CONNECTED,
            False,
            "no sidecar is connected to the control plane",
            "start sidecars with `plexus sidecar --control HOST:PORT` naming this control plane",
        )
    return Check(CONNECTED, True, f"{len(live)} sidecar{'s' if len(live) != 1 else ''} connected")


def synced(proxies: Sequence[pb.ProxyStatus], version: int) -> Check:
    live = _live(proxies)
    behind = [p for p in live if p.state != SYNCED]
    if not behind:
        return Check(ALL_SYNCED, True, f"{len(live)} of {len(live)} SYNCED at policy version {version}")
    named = [
        f"{p.node.id} ({p.state}" + (f": {one_line(p.last_error, 120)})" if p.last_error else ")")
        for p in behind
    ]
    return Check(
        ALL_SYNCED,
        False,
        f"{len(behind)} of {len(live)} not synced: {_names(named)}",
        "`plexus proxy-status` shows each sidecar's state; a NACKED sidecar rejected a resource (fix or "
        "delete it); a STALE one has not acknowledged its push (is it overloaded or partitioned?)",
    )


def versions(info: pb.InfoResponse, proxies: Sequence[pb.ProxyStatus]) -> Check:
    live = _live(proxies)
    other = [p for p in live if p.node.sidecar_version != info.version]
    if not other:
        return Check(VERSIONS, True, f"every sidecar runs plexus {info.version}")
    named = [f"{p.node.id} ({p.node.sidecar_version or 'unknown'})" for p in other]
    return Check(
        VERSIONS,
        False,
        f"{len(other)} of {len(live)} run another version than the control plane's {info.version}: "
        f"{_names(named)}",
        "upgrade the sidecars (or the control plane) so that they run the same plexus version",
    )


def nacks(proxies: Sequence[pb.ProxyStatus]) -> Check:
    rejecting = [p for p in _live(proxies) if p.state == NACKED]
    if not rejecting:
        return Check(NO_NACKS, True, "every sidecar accepted its policy")
    named = [
        f"{p.node.id} NACKed version {p.nacked_version}: {one_line(p.last_error, 200)}" for p in rejecting
    ]
    return Check(
        NO_NACKS,
        False,
        _names(named, separator="; "),
        "the sidecar keeps serving its last good policy; fix the resource the error names (`plexus get`, "
        "`plexus apply`) or delete it (`plexus delete`)",
    )


def _live(proxies: Sequence[pb.ProxyStatus]) -> list[pb.ProxyStatus]:
    """The connected ones: the control plane keeps a gone sidecar's row a while, with connected_seconds 0."""
    return [p for p in proxies if p.connected_seconds > 0]


def _names(items: Sequence[str], separator: str = ", ") -> str:
    shown = separator.join(items[:NAMES_SHOWN])
    return shown + (f"{separator}and {len(items) - NAMES_SHOWN} more" if len(items) > NAMES_SHOWN else "")


def _age(seconds: float) -> str:
    whole = int(seconds)
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m"
    return f"{whole // 3600}h{(whole % 3600) // 60:02d}m"


# ----------------------------------------------------------------------------------------------- output
def render(address: str, checks: Sequence[Check]) -> str:
    lines = [f"plexus check: control plane {address}", ""]
    for check in checks:
        lines.append(f"{PASS if check.ok else FAIL} {check.name}: {check.message}")
        if not check.ok and check.hint:
            lines.append(f"    hint: {check.hint}")
    failed = sum(1 for check in checks if not check.ok)
    lines.append("")
    lines.append(
        f"{PASS} all {len(checks)} checks passed"
        if not failed
        else f"{FAIL} {failed} of {len(checks)} checks failed"
    )
    return "\n".join(lines)


def as_json(address: str, checks: Sequence[Check]) -> str:
    document = {"control": address, "ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}
    return json.dumps(document, indent=2, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------- running
def run_checks(address: str, registry: str | None) -> tuple[list[Check], bool]:
    """Every check against the control plane at ``address``; (checks, reachable)."""
    from plexus.clients.control import ControlCallError

    ctl = client(address)
    try:
        info = ctl.info()
    except ControlCallError as exc:
        return [unreachable(address, str(exc))], False
    checks = [reachable(address, info)]
    try:
        resources = len(ctl.get().resources)
        checks.append(policy(info.policy_version, resources))
    except ControlCallError as exc:
        checks.append(policy_failed(str(exc)))
    if info.registry_embedded:
        checks.append(registry_check(address, "embedded in the control plane"))
    elif registry:
        checks.append(registry_check(registry, f"not embedded; --registry {registry}"))
    else:
        checks.append(Check(REGISTRY, True, "registry not embedded (give --registry HOST:PORT to check it)"))
    try:
        status = _settled(ctl.proxy_status)
    except ControlCallError as exc:
        failed = Check(CONNECTED, False, str(exc), "see the control plane's log")
        return [*checks, failed], True
    checks.append(connected(status.proxies))
    if _live(status.proxies):
        checks += [
            synced(status.proxies, status.version),
            versions(info, status.proxies),
            nacks(status.proxies),
        ]
    return checks, True


def _settled(ask: Callable[[], pb.ProxyStatusResponse]) -> pb.ProxyStatusResponse:
    """ProxyStatus once no push is in flight (or SETTLE_SECONDS passed): a STALE moment is not a failure."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        status = ask()
        pending = [p for p in _live(status.proxies) if p.state not in (SYNCED, NACKED)]
        if not pending or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def registry_check(address: str, where: str) -> Check:
    """List every service on the registry at ``address`` (one unary call)."""
    import grpc

    from plexus.proto import registry_pb2, registry_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)  # type: ignore[no-untyped-call]
            response = stub.List(registry_pb2.ListRequest(), timeout=REGISTRY_TIMEOUT)
    except grpc.RpcError as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        return registry_result(None, where, f"List failed at {address}: {code}: {details}")
    return registry_result(len(response.services), where)


def check(
    output: Annotated[str | None, output_option(("text", "json"))] = None,
    registry: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT", help="the registry to check when the control plane does not embed one"
        ),
    ] = None,
    control: Annotated[str, control_option()] = DEFAULT_CONTROL,
) -> None:
    """Check the install: control plane, registry, sidecars connected, synced, on the same version."""
    shown = check_output(output, ("text", "json"))
    checks, reached = run_checks(control, registry)
    typer.echo(as_json(control, checks) if shown == "json" else render(control, checks))
    if not reached:
        raise typer.Exit(EXIT_UNAVAILABLE)
    if not all(c.ok for c in checks):
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    """Add `plexus check` to the CLI."""
    app.command(name="check")(check)

"""`plexus stat / top / tap / explain / dashboard`: look at the mesh through the control plane.

The control plane aggregates what the sidecars report over their control streams (rates over a window, the
busiest paths, live tap lines, the hops of one request id), so the sidecars' admin ports stay on loopback.
Every command finds the control plane with ``--control HOST:PORT`` (env ``PLEXUS_CONTROL``), like
``plexus apply``; ``plexus explain --log FILE`` reads sidecars' access logs instead and needs none.

Exit codes: 0 done (also on Ctrl-C out of a live view); 1 failed or not found; 2 bad usage; 3 the control
plane cannot be reached.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from plexus.cli import tables
from plexus.cli.control_access import (
    DEFAULT_CONTROL,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    calling,
    check_output,
    client,
    control_option,
    duration_option_value,
    fail,
    output_option,
)

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from plexus.proto import control_pb2 as pb

STAT_HEADER: Final = (
    "SERVICE",
    "MESHED",
    "SUCCESS",
    "RPS",
    "LATENCY_P50",
    "LATENCY_P95",
    "LATENCY_P99",
    "TCP_CONN",
)
STAT_WIDE: Final = ("PROTOCOL", "REQUESTS")
TOP_HEADER: Final = ("SERVICE", "METHOD", "PATH", "COUNT", "RPS", "SUCCESS", "P50", "P99")
HOPS_HEADER: Final = (
    "#",
    "TIME",
    "WORKLOAD",
    "DIRECTION",
    "SERVICE",
    "STATUS",
    "FLAGS",
    "REASON",
    "UPSTREAM",
    "DURATION",
)
TAP_DEFAULT_COUNT: Final = 10  # without --watch: a glance, not a flood
TAP_DEFAULT_FOR: Final = "5s"
TOP_DEFAULT_LIMIT: Final = 20  # a screenful
CLEAR_SCREEN: Final = "\x1b[H\x1b[2J"  # cursor home, erase display: what `watch` and linkerd top redraw with
SHORT_DIRECTION: Final = {"inbound": "in", "outbound": "out"}
WILDCARD_HOSTS: Final = ("0.0.0.0", "::", "")  # "listen everywhere" addresses: not where to connect


# ----------------------------------------------------------------------------------------------- rendering
def fields(message: Message) -> dict[str, Any]:
    """A message's scalar fields by name, defaults included (JSON output keeps every column)."""
    return {field.name: getattr(message, field.name) for field in message.DESCRIPTOR.fields}


def stat_table(response: pb.StatResponse, wide: bool = False) -> str:
    header = list(STAT_HEADER) + (list(STAT_WIDE) if wide else [])
    rows = []
    for s in response.services:
        row = [
            s.service,
            tables.meshed(s.meshed, s.instances),
            tables.percent(s.success_rate, s.requests),
            tables.rps(s.rps),
            tables.millis(s.latency_p50_ms, s.requests),
            tables.millis(s.latency_p95_ms, s.requests),
            tables.millis(s.latency_p99_ms, s.requests),
            str(s.tcp_connections),
        ]
        if wide:
            row += [s.protocol or tables.NOTHING, str(s.requests)]
        rows.append(row)
    return tables.render_table(header, rows, right=(1, 2, 3, 4, 5, 6, 7, 9))


def stat_json(response: pb.StatResponse) -> dict[str, Any]:
    return {
        "window_seconds": response.window_seconds,
        "services": [fields(s) for s in response.services],
        "edges": [fields(e) for e in response.edges],
    }


def top_table(paths: Sequence[pb.PathStat], limit: int = TOP_DEFAULT_LIMIT) -> str:
    rows = [
        [
            p.service,
            p.method or tables.NOTHING,
            p.path or tables.NOTHING,
            str(p.requests),
            tables.rps(p.rps),
            tables.percent(p.success_rate, p.requests),
            tables.millis(p.latency_p50_ms, p.requests),
            tables.millis(p.latency_p99_ms, p.requests),
        ]
        for p in list(paths)[:limit]
    ]
    return tables.render_table(TOP_HEADER, rows, right=(3, 4, 5, 6, 7))


def busiest(response: pb.StatResponse, service: str | None) -> list[pb.PathStat]:
    """The paths of ``service`` (all when None), busiest first (by requests, then name for stability)."""
    chosen = [p for p in response.paths if service is None or p.service == service]
    return sorted(chosen, key=lambda p: (-p.requests, p.service, p.path, p.method))


def tap_line(line: pb.RequestLine) -> str:
    """One request, linkerd-tap-like: time, direction, source -> destination, the request, the answer."""
    direction = SHORT_DIRECTION.get(line.direction, line.direction or "?")
    me = line.workload or line.sidecar_id or "?"
    peer = line.peer_workload or line.upstream or "?"
    source, destination = (me, peer) if line.direction == "outbound" else (peer, me)
    parts = [
        tables.clock(line.start_unix),
        direction,
        f"{source} -> {destination}",
        f"svc={line.service or tables.NOTHING}",
        f"{line.method or tables.NOTHING} {line.path or '/'}",
        f"status={line.status or tables.NOTHING}",
        f"grpc={line.grpc_status or tables.NOTHING}",
        f"flags={line.response_flags or tables.NOTHING}",
    ]
    if line.reason:
        parts.append(f"reason={line.reason}")
    parts += [f"duration={tables.millis(line.duration_ms)}", f"id={line.request_id or tables.NOTHING}"]
    return " ".join(parts)


def hops_table(hops: Sequence[pb.RequestLine]) -> str:
    rows = []
    for number, hop in enumerate(hops, 1):
        status = str(hop.status) if hop.status else tables.NOTHING
        if hop.grpc_status not in ("", "0"):
            status += f" grpc={hop.grpc_status}"
        rows.append(
            [
                str(number),
                tables.clock(hop.start_unix),
                hop.workload or hop.sidecar_id or tables.NOTHING,
                hop.direction or tables.NOTHING,
                hop.service or tables.NOTHING,
                status,
                hop.response_flags or tables.NOTHING,
                hop.reason or tables.NOTHING,
                hop.upstream or tables.NOTHING,
                tables.millis(hop.duration_ms),
            ]
        )
    return tables.render_table(HOPS_HEADER, rows, right=(0, 9))


# ----------------------------------------------------------------------------------------------- commands
def stat(
    service: Annotated[str | None, typer.Argument(help="one service (default: every service)")] = None,
    all_services: Annotated[bool, typer.Option("--all", help="every service (the default)")] = False,
    window: Annotated[str, typer.Option(help="rates over this long: 30s, 2m, 500ms")] = "30s",
    output: Annotated[str | None, output_option(("table", "json", "wide"))] = None,
    control: Annotated[str, control_option()] = DEFAULT_CONTROL,
) -> None:
    """Golden metrics per service: meshed instances, success rate, requests per second, latency, TCP."""
    if service and all_services:
        fail("give SERVICE or --all, not both", EXIT_USAGE)
    shown = check_output(output, ("table", "json", "wide"))
    seconds = duration_option_value("--window", window)
    ctl = client(control)
    response = calling(lambda: ctl.stat(service or "", seconds))
    if service and not any(s.service == service for s in response.services):
        fail(f'service "{service}": no sidecar reports it to the control plane at {control}', EXIT_FAILED)
    if shown == "json":
        typer.echo(json.dumps(stat_json(response), indent=2))
    elif not response.services:
        typer.echo("No traffic reported yet (no sidecar reports to this control plane).", err=True)
    else:
        typer.echo(stat_table(response, wide=shown == "wide"))


def top(
    service: Annotated[str | None, typer.Argument(help="one service (default: every service)")] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="redraw every --interval until Ctrl-C")
    ] = False,
    interval: Annotated[str, typer.Option(help="with --watch: redraw this often")] = "2s",
    window: Annotated[str, typer.Option(help="rates over this long")] = "30s",
    limit: Annotated[int, typer.Option(help="show at most this many paths")] = TOP_DEFAULT_LIMIT,
    output: Annotated[str | None, output_option(("table", "json"))] = None,
    control: Annotated[str, control_option()] = DEFAULT_CONTROL,
) -> None:
    """The busiest paths (method and path per service) by requests in the window; live with --watch."""
    shown = check_output(output, ("table", "json"))
    seconds = duration_option_value("--window", window)
    every = duration_option_value("--interval", interval)
    if limit < 1:
        fail(f"--limit: must be at least 1, not {limit}", EXIT_USAGE)
    ctl = client(control)
    try:
        while True:
            response = calling(lambda: ctl.stat(service or "", seconds))
            paths = busiest(response, service)[:limit]
            if shown == "json":
                document = {"window_seconds": response.window_seconds, "paths": [fields(p) for p in paths]}
                typer.echo(json.dumps(document, indent=None if watch else 2))
            else:
                if watch:
                    typer.echo(CLEAR_SCREEN, nl=False)
                    when = time.strftime("%H:%M:%S")
                    typer.echo(
                        f"plexus top {service or '(every service)'}  window {response.window_seconds:g}s"
                        f"  {when}  (Ctrl-C to stop)\n"
                    )
                if paths:
                    typer.echo(top_table(paths, limit))
                else:
                    typer.echo("No requests in the window.", err=not watch)
            if not watch:
                return
            sys.stdout.flush()
            time.sleep(every)
    except KeyboardInterrupt:
        return


def tap(
    service: Annotated[str, typer.Argument(help="the service whose requests to show")],
    count: Annotated[
        int | None,
        typer.Option(
            "--count", "-n", help=f"stop after N lines (default {TAP_DEFAULT_COUNT} without --watch)"
        ),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="stream until Ctrl-C (or --count)")] = False,
    max_time: Annotated[
        str, typer.Option("--for", help="without --watch: stop after this long")
    ] = TAP_DEFAULT_FOR,
    output: Annotated[str | None, output_option(("line", "json"))] = None,
    control: Annotated[str, control_option()] = DEFAULT_CONTROL,
) -> None:
    """Stream the requests to SERVICE live, one line each, as every sidecar that sees them reports them."""
    from plexus.clients.control import ControlCallError, ControlUnavailable

    shown = check_output(output, ("line", "json"))
    if count is not None and count < 1:
        fail(f"--count: must be at least 1, not {count}", EXIT_USAGE)
    duration = None if watch else duration_option_value("--for", max_time)
    wanted = count if count is not None else (0 if watch else TAP_DEFAULT_COUNT)
    ctl = client(control)
    printed = 0
    stream = ctl.tap(service, wanted, duration)
    try:
        for line in stream:  # an unreachable control plane raises on the first line
            typer.echo(json.dumps(fields(line)) if shown == "json" else tap_line(line))
            sys.stdout.flush()
            printed += 1
            if wanted and printed >= wanted:
                break
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a live tap ends: close the stream (the sidecars stop tapping) and exit 0
    except ControlUnavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except ControlCallError as exc:
        fail(str(exc), EXIT_FAILED)
    finally:
        stream.close()
    if printed == 0 and duration is not None:
        typer.echo(f"no requests to {service} in {max_time}", err=True)


def explain(
    request_id: Annotated[str, typer.Argument(help="the request's x-request-id")],
    log: Annotated[
        list[Path] | None,
        typer.Option("--log", help="read hops from this sidecar access log (JSON lines); repeatable"),
    ] = None,
    wait: Annotated[str, typer.Option(help="how long sidecars get to answer")] = "1s",
    output: Annotated[str | None, output_option(("table", "json"))] = None,
    control: Annotated[str, control_option()] = DEFAULT_CONTROL,
) -> None:
    """Which hop failed a request and why: every hop the sidecars remember (or the access logs hold)."""
    from plexus.cli import access_logs

    shown = check_output(output, ("table", "json"))
    seconds = duration_option_value("--wait", wait)
    if log:
        try:
            found = access_logs.read_hops(log, request_id)
        except access_logs.LogReadError as exc:
            fail(str(exc), EXIT_FAILED)
        hops = found.hops
        source = f"{len(log)} access log{'s' if len(log) > 1 else ''} ({found.lines_read} lines)"
        verdict = access_logs.verdict(hops)
        if not hops:
            fail(f'request id "{request_id}" not found in {source}', EXIT_FAILED)
    else:
        ctl = client(control)
        answer = calling(lambda: ctl.explain(request_id, seconds))
        hops = list(answer.hops)  # in path order, callers before callees (control.observe.order_hops)
        source = f"{answer.sidecars_answered} of {answer.sidecars_asked} sidecars answered"
        if not hops:
            fail(
                f'request id "{request_id}" not found: {source}; sidecars remember only their recent '
                "requests (try --log with their access logs)",
                EXIT_FAILED,
            )
        verdict = answer.verdict
    if shown == "json":
        document = {
            "request_id": request_id,
            "source": source,
            "hops": [fields(h) for h in hops],
            "verdict": verdict,
        }
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(f"request {request_id}: {len(hops)} hop{'s' if len(hops) != 1 else ''} ({source})")
    typer.echo(hops_table(hops))
    typer.echo(f"verdict: {verdict}")


def dashboard(
    no_browser: Annotated[bool, typer.Option("--no-browser", help="print the address only")] = False,
    control: Annotated[str, control_option()] = DEFAULT_CONTROL,
) -> None:
    """Print the control plane's dashboard address and open it in a browser."""
    ctl = client(control)
    info = calling(ctl.info)
    if not info.admin_url:
        fail(f"the control plane at {control} serves no dashboard (no admin address)", EXIT_FAILED)
    url = browsable(info.admin_url, control)
    typer.echo(url)
    if no_browser:
        return
    if not _has_display():
        typer.echo("no display: open the address above in a browser", err=True)
        return
    import webbrowser

    if not webbrowser.open(url):
        typer.echo("could not start a browser: open the address above yourself", err=True)


def browsable(admin_url: str, control: str) -> str:
    """``admin_url`` with a wildcard host (an admin bound to 0.0.0.0 or ::, which no browser can open)
    replaced by the host the CLI reached the control plane at."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(admin_url)
    if parts.hostname not in WILDCARD_HOSTS or parts.port is None:
        return admin_url
    host = control.rsplit(":", 1)[0] or "127.0.0.1"
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}"))


def _has_display() -> bool:
    """Whether a browser could show a window: always on macOS and Windows, with X11 or Wayland elsewhere."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def register(app: typer.Typer) -> None:
    """Add stat, top, tap, explain and dashboard to the CLI."""
    app.command(name="stat")(stat)
    app.command(name="top")(top)
    app.command(name="tap")(tap)
    app.command(name="explain")(explain)
    app.command(name="dashboard")(dashboard)

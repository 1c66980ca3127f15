"""``plexus demo``: a control plane (serving the registry too), two providers (one meshed, one direct) of an
HTTP, a gRPC and a Bolt service, a meshed and a direct consumer calling them, and a live table of calls per
protocol and path until Ctrl-C or ``--duration``.

Seven processes: the control plane, the two providers and two consumers, and the sidecars of the meshed
provider and the meshed consumer (they follow the control plane: ``plexus apply`` reaches them). Each app
serves or calls all three services, so adding protocols adds no process: HTTP and gRPC are called by both
consumers (``http_client`` and ``grpc_channel`` of the SDK); Bolt by the meshed consumer through its
sidecar's egress port, which balances over both providers (the SDK has no Bolt client, so a direct app has
no Bolt path).

Exit status: 0 when every call succeeded, 1 when any failed (or no call was made, or a child stopped on its
own), 2 when the mesh did not start.
"""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any, Final

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from plexus.demo.cluster import Cluster
from plexus.demo.processes import ChildError
from plexus.demo.stats import split_path

SERVICE: Final = "echo"
GRPC_SERVICE: Final = "echo-grpc"
BOLT_SERVICE: Final = "echo-bolt"
REFRESH_SECONDS: Final = 0.5


class _Stop(Exception):
    """SIGTERM arrived: leave the live loop as Ctrl-C does."""


def run_demo(duration: float = 0.0, rate: float = 20.0, console: Console | None = None) -> int:
    console = console or Console()
    workdir = Path(tempfile.mkdtemp(prefix="plexus-demo-"))
    cluster = Cluster(workdir)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C must reach us even when a shell started us with SIGINT ignored (a background job does that).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    interrupted = crashed = False
    try:
        try:
            with console.status("starting the mesh: control plane, sidecars, providers, consumers ..."):
                _start(cluster, rate)
        except ChildError as exc:
            console.print(f"[red]the demo mesh did not start:[/red] {exc}")
            return 2
        started = time.monotonic()
        try:
            with Live(_render(cluster, started, duration), console=console, refresh_per_second=4,
                      transient=True) as live:
                while duration <= 0 or time.monotonic() - started < duration:
                    time.sleep(REFRESH_SECONDS)
                    live.update(_render(cluster, started, duration))
                    dead = [c.name for c in cluster.children() if not c.alive()]
                    if dead:
                        crashed = True
                        names = ", ".join(dead)
                        console.print(f"[red]stopped unexpectedly: {names}[/red] (logs in {workdir})")
                        break
        except (KeyboardInterrupt, _Stop):
            interrupted = True
    except (KeyboardInterrupt, _Stop):
        interrupted = True
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave children behind; each stop is bounded.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with console.status("stopping: consumers, providers, sidecars, control plane ..."):
            cluster.stop_all()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    reports = [c.final_report or c.last_report for c in cluster.consumers]
    console.print(_table(reports, title="final"))
    totals = _totals(reports)
    console.print(f"calls {totals['sent']}, ok {totals['ok']}, failed {totals['errors']}, "
                  f"misdelivered {totals['misdelivered']}, lost {totals['lost']}; logs in {workdir}"
                  + (" (interrupted)" if interrupted else ""))
    for report in reports:
        for sample in (report or {}).get("error_samples", [])[:5]:
            console.print(f"  [red]error[/red] {sample}")
    failed = totals["errors"] + totals["misdelivered"] + totals["lost"]
    return 1 if failed or crashed or totals["sent"] == 0 or None in reports else 0


def _telemetry_flags(cluster: Cluster, name: str) -> list[str]:
    """The demo's sidecars write their access logs and spans (at Istio's 1% sampling) into its work dir:
    ``<name>-sidecar-access.log`` and ``<name>-sidecar-traces.jsonl``."""
    return [
        "--access-log", str(cluster.workdir / f"{name}-sidecar-access.log"),
        "--trace-export", f"file:{cluster.workdir / f'{name}-sidecar-traces.jsonl'}",
    ]


def _start(cluster: Cluster, rate: float) -> None:
    cluster.start_control()
    # Start-ups overlap: both sidecars and both direct apps start at once; consumers wait for both providers
    # to be published before they call, so they need not wait for them here.
    p1_sidecar = cluster.start_sidecar("p1-sidecar", wait=False, extra=_telemetry_flags(cluster, "p1"))
    c1_sidecar = cluster.start_sidecar("c1-sidecar", wait=False, extra=_telemetry_flags(cluster, "c1"))
    children = [
        cluster.start_provider("p2", SERVICE, "direct", wait=False, grpc_service=GRPC_SERVICE,
                               bolt_service=BOLT_SERVICE).app,
        cluster.start_consumer("c2", [SERVICE], "direct", rate=rate, wait_instances=2, wait=False,
                               grpc_services=[GRPC_SERVICE]),
        cluster.start_provider("p1", SERVICE, "mesh", sidecar=p1_sidecar, wait=False,
                               grpc_service=GRPC_SERVICE, bolt_service=BOLT_SERVICE).app,
        cluster.start_consumer("c1", [SERVICE], "mesh", rate=rate, wait_instances=2, sidecar=c1_sidecar,
                               wait=False, grpc_services=[GRPC_SERVICE], bolt_services=[BOLT_SERVICE]),
    ]
    for child in children:
        child.wait_ready()


def _render(cluster: Cluster, started: float, duration: float) -> Group:
    elapsed = time.monotonic() - started
    limit = f" of {duration:.0f}s" if duration > 0 else " (Ctrl-C to stop)"
    header = Text.assemble(("Plexus demo", "bold"), f"  services {SERVICE!r} (HTTP), {GRPC_SERVICE!r} (gRPC),"
                           f" {BOLT_SERVICE!r} (Bolt): providers p1 (mesh), p2 (direct); consumers c1 (mesh),"
                           f" c2 (direct)  {elapsed:5.1f}s{limit}")
    reports = [c.last_report for c in cluster.consumers]
    control = cluster.control_address
    admin = cluster.registry.address("admin") if cluster.registry is not None else "?"
    hint = Text(f"control plane {control}, dashboard http://{admin}/ : try `plexus stat --control {control}`,"
                f" `plexus top`, `plexus tap echo`, `plexus check`, `plexus proxy-status` or"
                f" `plexus apply -f FILE` (each with --control {control})", style="dim")
    return Group(header, hint, _table(reports, title="calls per path"))


def _table(reports: list[dict[str, Any] | None], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("protocol", "path", "calls", "ok", "errors", "success", "p50 ms", "p99 ms", "providers"):
        table.add_column(column, justify="left" if column in ("protocol", "path", "providers") else "right",
                         no_wrap=column in ("protocol", "path"))
    rows: dict[str, dict[str, Any]] = {}
    for report in reports:
        for path, stats in (report or {}).get("paths", {}).items():
            empty = {"calls": 0, "ok": 0, "errors": 0, "p50": [], "p99": [], "providers": {}}
            row = rows.setdefault(path, empty)
            row["calls"] += stats["calls"]
            row["ok"] += stats["ok"]
            row["errors"] += stats["errors"]
            for key in ("p50", "p99"):
                if stats.get(f"{key}_ms") is not None:
                    row[key].append(stats[f"{key}_ms"])
            for name, count in stats.get("providers", {}).items():
                row["providers"][name] = row["providers"].get(name, 0) + count
    for path in sorted(rows, key=_path_order):
        row = rows[path]
        success = 100.0 * row["ok"] / row["calls"] if row["calls"] else 0.0
        style = "green" if row["errors"] == 0 else "red"
        table.add_row(
            *split_path(path), str(row["calls"]), str(row["ok"]), str(row["errors"]),
            Text(f"{success:.1f}%", style=style),
            _ms(max(row["p50"], default=None)), _ms(max(row["p99"], default=None)),
            ", ".join(f"{n} {c}" for n, c in sorted(row["providers"].items())),
        )
    if not rows:
        table.add_row("", "(waiting for the first calls)", "", "", "", "", "", "", "")
    return table


def _path_order(path: str) -> tuple[int, str]:
    protocol, rest = split_path(path)
    order = ("http", "grpc", "bolt")
    return (order.index(protocol) if protocol in order else len(order), rest)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _totals(reports: list[dict[str, Any] | None]) -> dict[str, int]:
    keys = ("sent", "ok", "errors", "misdelivered", "lost")
    return {k: sum(int((r or {}).get(k, 0)) for r in reports) for k in keys}

"""gRPC unary through Plexus and Envoy, side by side: direct, one/two Plexus sidecars, one/two Envoys.

    python bench/grpc_bench.py [--modes direct,plexus1,plexus2,envoy1,envoy2] [--loads 1x1,1x50]
                         [--duration 5] [--rounds 3] [--out FILE.json] [--markdown FILE.md]

Load: h2load (nghttp2) on CPU 0, POST /bench.Echo/Call with one gRPC length-prefixed message and the gRPC
request headers, ``CxM`` = C connections x M concurrent streams each (so 1x1 is one request at a time, 1x50
fifty streams multiplexed on one connection). Upstream: nginx h2c on CPU 0 (bench/lib/h2load.py says what it
answers). Proxies on CPU 1: Envoy 1.40 ``--concurrency 1`` with bench/envoy/grpc.yaml (HTTP/2 both sides), and
Plexus sidecars whose consumer egress port serves a service published with protocol ``grpc`` (the L7 HTTP/2
proxy, transport/h2_*.py). Modes run interleaved per round, order rotated. CPU per request from /proc of each
proxy process over the h2load run, divided by the requests h2load completed. Mode ``ngh2min`` (not in
the default set) is a calibration point: a minimal uvloop + libnghttp2 proxy,
bench/profiles/h2_minimal_proxy.py.

Target (issue 3): Plexus's requests per proxy core ≥ Envoy's.

CPU speed canary: this machine's CPUs switch between two speeds for seconds at a time, whatever runs on them
(a fixed piece of Python work takes ~750 or ~1,300 µs of CPU; bench/profiles/grpc-telemetry-NOTES.md,
2026-11-26 10:10). A run's CPU per request follows its CPU's speed, so a round where Plexus ran on the slow
state and Envoy on the fast one says nothing about the proxies. A canary process pinned to the proxy CPU
times that fixed work every 0.25 s (~0.4 % of the CPU); each run reports its median (``canary_us`` in the
JSON), and the targets add the per-round ratio with both runs' CPU speed divided out, and the ratio over the
rounds where both ran at the same speed (canaries within 15 %).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http1 import _shown, _version_of, machine_info, wait_quiet
from lib import envoy, h2load, procstat, rpc_topo
from lib.canary import canary_us, cpu_canary, pair_ratios
from lib.results import Run, Summary, markdown_table, paired_ratio, summarize
from lib.topology import Endpoint, Hop, Placement, Workspace

from plexus.testing.procs import ManagedProcess, wait_for

MODES = ("direct", "plexus1", "plexus2", "envoy1", "envoy2", "ngh2min")
PROXY_CPU, LOAD_CPU = 1, 0
WARMUP_S = 1.0
GRPC_TEMPLATE = Path(__file__).resolve().parent / "envoy" / "grpc.yaml"

Builder = Callable[[Workspace, str, int, Path], AbstractContextManager[Endpoint]]
def speed_ratios(
    runs: Sequence[Run], speed: dict[tuple[int, str, str], float], layout: str, a: str, b: str
) -> tuple[float | None, float | None, int]:
    """Per-round ``b`` CPU/request ÷ ``a`` CPU/request (``a``'s requests per core over ``b``'s): the median
    with each run's CPU speed (canary) divided out, the median over rounds where both ran at the same speed,
    and how many such rounds there were."""
    by_round: dict[int, dict[str, Run]] = {}
    for r in runs:
        if r.layout == layout and r.mode in (a, b) and r.requests and r.proxy_cpu_s > 0:
            by_round.setdefault(r.round, {})[r.mode] = r
    pairs = []
    for rnd, pair in by_round.items():
        ca, cb = speed.get((rnd, layout, a)), speed.get((rnd, layout, b))
        if len(pair) == 2 and ca is not None and cb is not None:
            per_a, per_b = (pair[m].proxy_cpu_s / pair[m].requests for m in (a, b))
            pairs.append((per_a, ca, per_b, cb))
    return pair_ratios(pairs)


@contextlib.contextmanager
def _direct(ws: Workspace, mode: str, port: int, body: Path) -> Iterator[Endpoint]:
    yield Endpoint(mode=mode, url=f"127.0.0.1:{port}")


@contextlib.contextmanager
def _envoy(ws: Workspace, mode: str, port: int, body: Path, hops: int) -> Iterator[Endpoint]:
    # lib/envoy.py renders its module-level TEMPLATE; point it at the HTTP/2 config for this bench only.
    envoy.TEMPLATE = GRPC_TEMPLATE
    with envoy.chain(ws, mode, port, hops) as ep:
        ep.url = ep.url.removeprefix("http://").rstrip("/")
        yield ep


def _plexus(
    ws: Workspace, mode: str, port: int, body: Path, sidecars: int
) -> AbstractContextManager[Endpoint]:
    return rpc_topo.topology(
        ws, mode, "grpc", port, sidecars, check=lambda addr, _: h2load.ok_once(addr, body)
    )


MINIMAL_PROXY = Path(__file__).resolve().parent / "profiles" / "h2_minimal_proxy.py"


@contextlib.contextmanager
def _ngh2_minimal(ws: Workspace, mode: str, port: int, body: Path) -> Iterator[Endpoint]:
    """Calibration: a minimal uvloop + libnghttp2 (ngh2) h2c proxy, bench/profiles/h2_minimal_proxy.py."""
    root = ws.dir(mode)
    ready = root / "ready.json"
    argv = [sys.executable, str(MINIMAL_PROXY), "--upstream", f"127.0.0.1:{port}", "--ready-file", str(ready)]
    proc = ManagedProcess(procstat.pinned_argv(argv, ws.placement.proxy), log_path=root / "out.log")
    try:

        def started() -> dict[str, str] | None:
            if not proc.alive():
                raise RuntimeError(f"{mode} exited; log:\n{proc.log()}")
            return json.loads(ready.read_text()) if ready.exists() else None

        info = wait_for(started, timeout=30.0, what=f"{mode} ready file")
        assert info is not None
        address = info["listen"]
        wait_for(lambda: h2load.ok_once(address, body), timeout=10.0, what=f"a 2xx through {mode}")
        yield Endpoint(mode=mode, url=address, hops=[Hop("ngh2min", proc.pid)])
    finally:
        proc.stop()


BUILDERS: dict[str, Builder] = {
    "direct": _direct,
    "plexus1": lambda ws, m, port, body: _plexus(ws, m, port, body, 1),
    "plexus2": lambda ws, m, port, body: _plexus(ws, m, port, body, 2),
    "envoy1": lambda ws, m, port, body: _envoy(ws, m, port, body, 1),
    "envoy2": lambda ws, m, port, body: _envoy(ws, m, port, body, 2),
    "ngh2min": _ngh2_minimal,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default=",".join(MODES[:-1]), help=f"comma list of {','.join(MODES)}")
    p.add_argument("--loads", default="1x1,1x50", help="CxM: connections x concurrent streams each")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-other-load", type=float, default=0.15)
    p.add_argument("--quiet-wait", type=float, default=20.0)
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--out", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        p.error(f"unknown modes {bad}")
    if "direct" not in args.modes:  # lib/results.summarize pairs every mode with direct's run of the round
        args.modes.insert(0, "direct")
    args.loads = [tuple(int(x) for x in item.split("x")) for item in args.loads.split(",") if item]
    return args


def measure(
    ep: Endpoint,
    up_pid: int,
    rnd: int,
    conns: int,
    streams: int,
    args: argparse.Namespace,
    placement: Placement,
    body: Path,
    log: Path,
) -> Run:
    pids = {hop.name: hop.pid for hop in ep.hops}
    cpus = (placement.proxy or frozenset()) | (placement.load or frozenset()) or frozenset({0})
    busy0 = procstat.cpu_busy_seconds(cpus)
    before = {n: procstat.cpu_seconds(p) for n, p in pids.items()}
    sw0 = sum(procstat.involuntary_switches(p) for p in pids.values())
    up0 = procstat.cpu_seconds(up_pid)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = h2load.run(ep.url, conns, streams, args.duration, body, log, placement.load)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = {n: procstat.cpu_seconds(p) for n, p in pids.items()}
    sw1 = sum(procstat.involuntary_switches(p) for p in pids.values())
    up1 = procstat.cpu_seconds(up_pid)
    busy1 = procstat.cpu_busy_seconds(cpus)
    hop = {n: after[n] - before[n] for n in pids}
    lg = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    foreign = max(0.0, (busy1 - busy0) - sum(hop.values()) - (up1 - up0) - lg)
    return Run(
        layout=f"grpc {conns}x{streams}",
        round=rnd,
        connections=conns * streams,
        mode=ep.mode,
        requests=res.requests,
        duration_s=res.duration_s,
        errors=res.errors,
        p50_us=res.p50_us,
        p90_us=res.p90_us,
        p99_us=res.p99_us,
        p999_us=res.p999_us,
        mean_us=res.mean_us,
        hop_cpu_s=hop,
        upstream_cpu_s=up1 - up0,
        wrk_cpu_s=lg,
        foreign_cpu_s=foreign,
        proxy_preemptions=(sw1 - sw0) if pids else None,
    )


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


HEADERS = (
    "load CxM",
    "mode",
    "req/s",
    "proxy CPU µs/req",
    "req/s per proxy core",
    "proxy CPU util",
    "h2load CPU util",
    "upstream CPU util",
    "p50 µs",
    "p99 µs",
    "added p50 µs",
    "added p99 µs",
    "errors",
    "other load",
)


def rows(summaries: Sequence[Summary], runs: Sequence[Run]) -> list[list[str]]:
    out = []
    for s in summaries:
        group = [r for r in runs if (r.layout, r.mode) == (s.layout, s.mode)]
        lg = sorted(r.wrk_cpu_s / r.duration_s for r in group)[len(group) // 2]
        up = sorted(r.upstream_cpu_s / r.duration_s for r in group)[len(group) // 2]
        cpu = _fmt(s.cpu_us_per_req)
        if len(s.hop_cpu_us_per_req) > 1:
            cpu += " (" + " / ".join(f"{k} {v:.1f}" for k, v in s.hop_cpu_us_per_req.items()) + ")"
        out.append(
            [
                s.layout.removeprefix("grpc "),
                s.mode,
                _fmt(s.rps, ",.0f"),
                cpu,
                _fmt(s.rps_per_proxy_core, ",.0f"),
                _fmt(s.proxy_cpu_util, ".2f"),
                f"{lg:.2f}",
                f"{up:.2f}",
                _fmt(s.p50_us, ".0f"),
                _fmt(s.p99_us, ".0f"),
                _fmt(s.added_p50_us, "+.0f"),
                _fmt(s.added_p99_us, "+.0f"),
                str(s.errors),
                _fmt(s.foreign_cpu, ".2f"),
            ]
        )
    return out


def targets(
    summaries: Sequence[Summary], runs: Sequence[Run], speed: dict[tuple[int, str, str], float]
) -> list[list[str]]:
    out = []
    by = {(s.layout, s.mode): s for s in summaries}
    for layout in dict.fromkeys(s.layout for s in summaries):
        for a, b in (("plexus1", "envoy1"), ("plexus2", "envoy2")):
            p, e = by.get((layout, a)), by.get((layout, b))
            if not (p and e and p.rps_per_proxy_core and e.rps_per_proxy_core):
                continue
            ratio = p.rps_per_proxy_core / e.rps_per_proxy_core
            conns = p.connections
            paired = paired_ratio(runs, layout, conns, a, b)
            normalized, same, n_same = speed_ratios(runs, speed, layout, a, b)
            out.append(
                [
                    f"gRPC req/s per proxy core, {a} vs {b}, {layout.removeprefix('grpc ')}: ≥ Envoy's",
                    f"{p.rps_per_proxy_core:,.0f} vs {e.rps_per_proxy_core:,.0f} = {ratio:.2f}x"
                    + (f" (paired per round {paired:.2f}x)" if paired else "")
                    + (f"; CPU speed divided out {normalized:.2f}x" if normalized else "")
                    + (f"; same-speed rounds {same:.2f}x ({n_same})" if same else "; no same-speed round"),
                    "**MET**" if ratio >= 1.0 else "**NOT MET**",
                ]
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=220)
    if not h2load.available():
        console.print("[red]h2load is required (apt-get install nghttp2-client)[/red]")
        return 2
    pin = procstat.cpu_count() >= 2 and procstat.TASKSET is not None
    placement = Placement(frozenset({PROXY_CPU}), frozenset({LOAD_CPU})) if pin else Placement(None, None)
    if placement.load is not None:
        procstat.pin(os.getpid(), placement.load)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    info = machine_info(placement)
    info["h2load"] = _version_of([h2load.H2LOAD, "--version"])
    info["command"] = shlex.join([_shown(sys.executable), *sys.argv])
    info["started"] = datetime.now(UTC).isoformat(timespec="seconds")
    console.print(f"[bold]Plexus gRPC bench[/bold]  {json.dumps(info)}")
    runs: list[Run] = []
    work = Path(tempfile.mkdtemp(prefix="plexus-grpcbench-"))
    ws = Workspace(work, placement)
    body = h2load.request_file(ws)
    log = ws.dir("h2load") / "requests.log"
    cpus = (placement.proxy or frozenset()) | (placement.load or frozenset()) or frozenset({0})
    skipped: dict[str, str] = {}
    speed: dict[tuple[int, str, str], float] = {}  # (round, layout, mode) -> canary µs during the run
    try:
        with contextlib.ExitStack() as stack:
            port, up = stack.enter_context(h2load.upstream(ws))
            samples = stack.enter_context(cpu_canary(ws))
            eps: dict[str, Endpoint] = {}
            for mode in args.modes:
                console.print(f"starting {mode} …")
                try:
                    eps[mode] = ep = stack.enter_context(BUILDERS[mode](ws, mode, port, body))
                except (RuntimeError, TimeoutError) as exc:  # Plexus's HTTP/2 proxy may not route gRPC yet
                    skipped[mode] = str(exc)[:300]
                    console.print(f"  [yellow]{mode} skipped: {skipped[mode]}[/yellow]")
                    continue
                if ep.hops:
                    console.print("  " + ", ".join(f"{h.name} pid {h.pid}" for h in ep.hops) + f" → {ep.url}")
            modes = [m for m in args.modes if m in eps]
            for mode in modes:
                for c, m in args.loads:
                    h2load.run(eps[mode].url, c, m, WARMUP_S, body, None, placement.load)
            for rnd in range(args.rounds):
                for c, m in args.loads:
                    k = rnd % len(modes)
                    for mode in modes[k:] + modes[:k]:
                        best: Run | None = None
                        for attempt in range(1 + args.retries):
                            wait_quiet(cpus, args.max_other_load, args.quiet_wait, console.print)
                            t0 = time.monotonic_ns()
                            run = measure(eps[mode], up.pid, rnd, c, m, args, placement, body, log)
                            run.attempts = attempt + 1
                            us = canary_us(samples, t0, time.monotonic_ns())
                            if best is None or run.other_load < best.other_load:
                                best = run
                                if us is not None:
                                    speed[(rnd, run.layout, mode)] = us
                            if run.other_load <= args.max_other_load:
                                break
                        assert best is not None
                        best.noisy = best.other_load > args.max_other_load
                        runs.append(best)
                        r = best
                        cpu = (
                            f"{r.proxy_cpu_s / r.requests * 1e6:6.1f} µs/req"
                            if r.hop_cpu_s and r.requests
                            else ""
                        )
                        console.print(
                            f"  r{rnd} {c}x{m:<3} {mode:8} {r.rps:9,.0f} req/s  p50 {r.p50_us:7.0f} µs  "
                            f"p99 {r.p99_us:7.0f} µs  {cpu}  h2load {r.wrk_cpu_s / r.duration_s:.2f} CPU  "
                            f"upstream {r.upstream_cpu_s / r.duration_s:.2f} CPU  errors {r.errors}  "
                            f"other {r.other_load:.2f}  canary {speed.get((rnd, r.layout, mode), 0):.0f} µs"
                        )
    finally:
        if args.keep:
            console.print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    summaries = summarize(runs)
    body_rows = rows(summaries, runs)
    table = Table(title="gRPC unary: throughput, CPU, latency (medians over rounds)")
    for col in HEADERS:
        table.add_column(col)
    for row in body_rows:
        table.add_row(*row)
    console.print(table)
    tgt = targets(summaries, runs, speed)
    for row in tgt:
        console.print(" | ".join(row))
    for mode, why in skipped.items():
        console.print(f"[yellow]{mode} not measured: {why}[/yellow]")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "meta": info,
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "runs": [r.to_json() for r in runs],
                    "summary": [asdict(s) for s in summaries],
                    "targets": tgt,
                    "canary_us": [
                        {"round": rnd, "layout": layout, "mode": mode, "us": us}
                        for (rnd, layout, mode), us in sorted(speed.items())
                    ],
                    "skipped": skipped,
                },
                indent=2,
                default=str,
            )
        )
    if args.markdown:
        md = (
            markdown_table(HEADERS, body_rows)
            + "\n\n"
            + markdown_table(("target", "measured", "verdict"), tgt)
        )
        args.markdown.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

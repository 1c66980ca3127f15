"""What each part of issue 5's telemetry costs in the real sidecars: proxy CPU per request, part by part.

    PYTHONPATH=<snapshot>/src .venv/bin/python bench/telemetry_parts.py --rounds 8 --duration 3 \\
        [--parts cut,ends,trace,default,log-null,log-file,export,all] [--out FILE.json]

Every part is the plexus2 topology of bench/http1.py (wrk → consumer sidecar → provider sidecar → nginx, the
sidecars on CPU 1, the rest on CPU 0), started once and kept up; per round each part runs once (the order
reversed every other round) and is charged the two sidecars' CPU time (user + system, /proc) over wrk's run,
divided by the requests wrk counted:

| part | what the sidecars run |
|---|---|
| ``cut`` | the telemetry cut out (bench/lib/ablation.py): the skeleton's default features alone (plexus2b) |
| ``ends`` | only this tree's end of a request (the outcome journal, Istio's series), no trace lines |
| ``trace`` | only the trace context (x-request-id, traceparent written and followed), the skeleton's ends |
| ``default`` | the default features: both of the above (plexus2) |
| ``log-null`` | default + the access log, written to /dev/null (formatting and queueing, no file) |
| ``log-file`` | default + the access log, written to a file in the run's work dir |
| ``export`` | default + 1 % of the requests exported as spans (the JSON file exporter) |
| ``all`` | default + access log file + span export: issue 5's configuration (plexus2o) |

Medians over the rounds are printed with each part's difference from ``cut`` and the share of ``cut``'s
requests per core it keeps. The machine's CPU speed drifts between rounds; the parts of one round are
measured within seconds of each other, so compare parts within a run, not across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import ablation, environ, plexus_topo, procstat, upstream, wrk
from lib.topology import Endpoint, Placement, Workspace

PROXY_CPU: Final = 1
LOAD_CPU: Final = 0
CONNECTIONS: Final = 50
SAMPLE_PERCENT: Final = "1"


@dataclass(frozen=True, slots=True)
class Part:
    """A configuration of the two sidecars: what the ablation cuts, and the environment they start with
    (``{work}`` is the part's work dir; a value with ``{hop}`` is set per sidecar, ``consumer`` or
    ``provider``: each its own access log, as each pod's sidecar has)."""

    name: str
    cut: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


PARTS: Final = {
    part.name: part
    for part in (
        Part("cut", ablation.PARTS),
        Part("ends", ("trace",)),
        Part("trace", ("ends",)),
        Part("default", ()),
        Part("log-null", (), (("PLEXUS_ACCESS_LOG", os.devnull),)),
        Part("log-file", (), (("PLEXUS_ACCESS_LOG", "{work}/access-{hop}.log"),)),
        Part("export", (), (("PLEXUS_TRACE_EXPORT", "file:{work}/spans.jsonl"),)),
        Part(
            "all",
            (),
            (
                ("PLEXUS_ACCESS_LOG", "{work}/access-{hop}.log"),
                ("PLEXUS_TRACE_EXPORT", "file:{work}/spans.jsonl"),
            ),
        ),
    )
}


@contextlib.contextmanager
def _started(ws: Workspace, part: Part, upstream_port: int) -> Iterator[Endpoint]:
    """The two sidecars of ``part``: its ablation first on PYTHONPATH and its environment set while they
    start (they inherit it); refused unless both applied the ablation."""
    work = ws.dir(part.name)
    env = {name: value.format(work=work) for name, value in part.env if "{hop}" not in value}
    hop_env = {
        hop: {name: value.format(work=work, hop=hop) for name, value in part.env if "{hop}" in value}
        for hop in ("consumer", "provider")
    }
    env["PLEXUS_TRACE_SAMPLE_PERCENT"] = SAMPLE_PERCENT
    site = ablation.prepare(work / "site", part.cut) if part.cut else None
    if site is not None:
        old_path = os.environ.get("PYTHONPATH")
        env["PYTHONPATH"] = str(site) + (os.pathsep + old_path if old_path else "")
    with contextlib.ExitStack() as stack:
        with environ.set_while(env):
            endpoint = stack.enter_context(
                plexus_topo.topology(ws, part.name, upstream_port, sidecars=2, hop_env=hop_env)
            )
        if site is not None and ablation.applied(site) < 2:
            raise RuntimeError(f"{part.name}: the ablation took in {ablation.applied(site)} of 2 sidecars")
        yield endpoint


def _cpu_us_per_request(endpoint: Endpoint, duration: float, load: frozenset[int]) -> float:
    before = sum(procstat.cpu_seconds(hop.pid) for hop in endpoint.hops)
    result = wrk.run(endpoint.url, CONNECTIONS, duration, load)
    after = sum(procstat.cpu_seconds(hop.pid) for hop in endpoint.hops)
    if result.errors or not result.requests:
        raise RuntimeError(f"{endpoint.mode}: wrk saw {result.errors} errors in {result.requests} requests")
    return (after - before) / result.requests * 1e6


def measure(names: Sequence[str], rounds: int, duration: float) -> dict[str, list[float]]:
    """Per part, its CPU µs per request in each round."""
    placement = Placement(proxy=frozenset({PROXY_CPU}), load=frozenset({LOAD_CPU}))
    procstat.pin(os.getpid(), placement.load or ())
    per_round: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="plexus-parts-") as tmp, contextlib.ExitStack() as stack:
        ws = Workspace(Path(tmp), placement)
        port, _ = stack.enter_context(upstream.nginx(ws))
        endpoints = {name: stack.enter_context(_started(ws, PARTS[name], port)) for name in names}
        for endpoint in endpoints.values():  # warm-up: connections, pools, the heads the decoders keep
            wrk.run(endpoint.url, CONNECTIONS, 2, placement.load)
        for number in range(rounds):
            for name in names if number % 2 == 0 else list(reversed(names)):
                value = _cpu_us_per_request(endpoints[name], duration, placement.load or frozenset())
                per_round[name].append(value)
                print(f"round {number + 1} {name:9s} {value:6.2f} µs/req", flush=True)
    return per_round


def report(per_round: dict[str, list[float]]) -> list[str]:
    medians = {name: statistics.median(values) for name, values in per_round.items()}
    base = medians.get("cut")
    lines = ["| part | proxy CPU µs/req (median) | vs cut | cut's requests per core kept | rounds |"]
    lines.append("|---|---|---|---|---|")
    for name, value in medians.items():
        diff = f"{value - base:+.2f}" if base is not None else "—"
        kept = f"{100 * base / value:.1f} %" if base is not None else "—"
        rounds = " ".join(f"{v:.1f}" for v in per_round[name])
        lines.append(f"| {name} | {value:.2f} | {diff} | {kept} | {rounds} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {','.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of wrk per part and round")
    parser.add_argument("--out", type=Path, help="write the per-round figures here as JSON")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in names if name not in PARTS]
    if unknown:
        parser.error(f"unknown parts {', '.join(unknown)}; known: {', '.join(PARTS)}")
    if procstat.cpu_count() < 2 or procstat.TASKSET is None or not wrk.available():
        print("needs 2 CPUs, taskset, wrk and nginx", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds measure's ExitStack, which stops every process by PID

    signal.signal(signal.SIGTERM, on_term)
    per_round = measure(names, args.rounds, args.duration)
    print("\n".join(report(per_round)))
    if args.out is not None:
        args.out.write_text(json.dumps({"parts": per_round, "argv": sys.argv}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

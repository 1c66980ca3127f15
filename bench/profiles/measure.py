"""CPU per request of HTTP/1.1 proxies, side by side in one run (TESTING.md §J), for profiling work.

    .venv/bin/python bench/profiles/measure.py --rounds 5 --duration 5
    .venv/bin/python bench/profiles/measure.py --profile plexus --duration 12   # py-spy under wrk load

nginx (upstream) and wrk run on CPU 0; each proxy under test on CPU 1. Modes: ``minimal`` (the uvloop +
httptools reference, minimal_proxy.py) and ``plexus`` (the Plexus DataPlane's shared egress, driven by
tests/transport/dataplane_runner.py, Host: bench routed to nginx with the default round robin, metrics and
reason codes on). Per round every mode runs once, order rotated; CPU per request = utime+stime delta of the
proxy's /proc/PID/stat over the requests wrk completed; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv/bin/python")
TICK = os.sysconf("SC_CLK_TCK")
# Other helpers' benchmarks run at nice -10 on this machine; the same priority keeps the contest even.
NICE = ["nice", "-n", "-10"]
NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/cb; proxy_temp_path {root}/px; fastcgi_temp_path {root}/fc;
    uwsgi_temp_path {root}/uw; scgi_temp_path {root}/sc;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "hello"; }}
    }}
}}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def wait_ready(path: Path, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"no ready file {path}")


def wrk(url: str, duration: float, connections: int, host: str | None) -> tuple[int, int]:
    headers = ["-H", f"Host: {host}"] if host else []
    argv = [*NICE, "taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", *headers, url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    m = re.search(r"(\d+) requests in", out)
    if m is None:
        raise RuntimeError(out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    if errs:
        print("   wrk:", errs.group(0), file=sys.stderr)
    return int(m.group(1)), int(bad.group(1)) if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--modes", default="minimal,plexus")
    ap.add_argument("--profile", help="mode to run py-spy on instead of measuring")
    ap.add_argument("--before-src", default="/tmp/plexus_before/src", help="PYTHONPATH for mode 'before'")
    ap.add_argument("--out", default=str(ROOT / "bench/profiles/profile"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="plexus-measure-"))
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        argv: list[str], cpu: str, log: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(tmp / log, "wb") as f:
            p = subprocess.Popen(
                [*NICE, "taskset", "-c", cpu, *argv], stdout=f, stderr=subprocess.STDOUT, env=env
            )
        procs.append(p)
        return p

    try:
        port = free_port()
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(root=tmp, port=port))
        start(["/usr/sbin/nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")], "0", "nginx.out")
        upstream = f"127.0.0.1:{port}"
        time.sleep(0.5)
        modes = args.modes.split(",")
        targets: dict[str, tuple[int, str, str | None]] = {}
        if "minimal" in modes or args.profile == "minimal":
            rf = tmp / "minimal.json"
            p = start(
                [
                    PY,
                    str(ROOT / "bench/profiles/minimal_proxy.py"),
                    "--upstream",
                    upstream,
                    "--ready-file",
                    str(rf),
                ],
                "1",
                "minimal.out",
            )
            targets["minimal"] = (p.pid, "http://" + str(wait_ready(rf, p)["listen"]) + "/", None)
        for mode in ("plexus", "before"):
            if mode not in modes and args.profile != mode:
                continue
            # "before": the data plane as committed (git archive HEAD into --before-src), for A/B runs.
            env = dict(os.environ, PYTHONPATH=args.before_src) if mode == "before" else None
            rf = tmp / f"{mode}.json"
            config = json.dumps({"services": {"bench": [upstream]}})
            runner = str(ROOT / "tests/transport/dataplane_runner.py")
            p = start([PY, runner, "--config", config, "--ready-file", str(rf)], "1", f"{mode}.out", env)
            targets[mode] = (p.pid, "http://" + str(wait_ready(rf, p)["egress"]) + "/", "bench")
        for _name, (_, url, host) in targets.items():  # warm up: connections, pools, caches
            wrk(url, 1, args.connections, host)
        if args.profile:
            pid, url, host = targets[args.profile]
            spy = shutil.which("py-spy") or str(ROOT / ".venv/bin/py-spy")
            load = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    "0",
                    "wrk",
                    "-t1",
                    f"-c{args.connections}",
                    f"-d{args.duration + 4:g}s",
                    *(["-H", f"Host: {host}"] if host else []),
                    url,
                ],
                stdout=subprocess.DEVNULL,
            )
            time.sleep(1)
            for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
                subprocess.run(
                    [
                        spy,
                        "record",
                        "--native",
                        "-r",
                        "500",
                        "-d",
                        str(int(args.duration / 2)),
                        "-f",
                        fmt,
                        "-o",
                        f"{args.out}.{ext}",
                        "--pid",
                        str(pid),
                    ],
                    check=False,
                )
            load.wait()
            return
        results: dict[str, list[tuple[float, float]]] = {m: [] for m in targets}
        for r in range(args.rounds):
            order = list(targets)[r % len(targets) :] + list(targets)[: r % len(targets)]
            for name in order:
                pid, url, host = targets[name]
                before = cpu_seconds(pid)
                n, bad = wrk(url, args.duration, args.connections, host)
                used = cpu_seconds(pid) - before
                us = used / n * 1e6
                results[name].append((us, n / args.duration))
                print(
                    f"round {r} {name:8s} {n / args.duration:8.0f} req/s  {us:6.1f} us CPU/req  non2xx={bad}"
                )
        print("median:")
        for name, rs in results.items():
            print(
                f"  {name:8s} {statistics.median(x[1] for x in rs):8.0f} req/s "
                f"{statistics.median(x[0] for x in rs):6.1f} us CPU/req"
            )
        for name in results:
            if name == "minimal" or "minimal" not in results:
                continue
            ratios = [p[0] / m[0] for p, m in zip(results[name], results["minimal"], strict=True)]
            med = statistics.median(ratios)
            print(f"  {name}/minimal per round: {[round(x, 2) for x in ratios]} median {med:.2f}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

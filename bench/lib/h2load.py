"""gRPC-shaped HTTP/2 load with h2load (nghttp2-client), and the h2c upstream it reaches (nginx).

The upstream is nginx with ``listen ... http2`` (cleartext HTTP/2 with prior knowledge), answering every
request with ``return 200`` — status 200, ``content-type: application/grpc``, a small body, and the gRPC
trailers ``grpc-status: 0`` / ``grpc-message`` (``add_trailer ... always``). nginx cannot put the NUL bytes
of a gRPC length prefix in a ``return`` body, so the response body is short text rather than a framed message;
neither h2load nor the proxies read it (the proxies pass DATA frames through). It is the cheapest HTTP/2
server at hand (C, one worker), so it is not what limits a proxy on the other CPU.

h2load sends POST /bench.Echo/Call with one gRPC length-prefixed protobuf message as the body (``-d``) and the
gRPC request headers, over ``-c`` connections with ``-m`` concurrent streams each, for ``-D`` seconds, and
writes one line per request to ``--log-file`` (start µs, status, duration µs), from which we take percentiles.
"""

from __future__ import annotations

import contextlib
import shutil
import struct
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lib.procstat import pinned_argv
from lib.topology import Workspace
from lib.upstream import _HEAD, KEEPALIVE_REQUESTS, _run_nginx
from plexus.testing.procs import ManagedProcess

H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"
PATH = "/bench.Echo/Call"
HEADERS = ("content-type: application/grpc", "te: trailers")
REQUEST_MESSAGE = b"\x0a\x0cplexus bench"  # protobuf: field 1, string "plexus bench"
GRACE_S = 30.0
# Streams nginx allows per connection: above h2load's -m so the upstream never caps concurrency.
UPSTREAM_MAX_STREAMS = 1024

UPSTREAM_CONFIG = (
    _HEAD
    + """\
    http2_max_concurrent_streams {max_streams};
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            default_type application/grpc;
            add_trailer grpc-status 0 always;
            add_trailer grpc-message "" always;
            return 200 "plexus bench";
        }}
    }}
}}
"""
)


def available() -> bool:
    return Path(H2LOAD).exists()


def request_file(ws: Workspace) -> Path:
    """One gRPC length-prefixed message (flag 0, 4-byte length, protobuf bytes) for h2load's ``-d``."""
    path = ws.dir("h2load") / "request.bin"
    path.write_bytes(b"\x00" + struct.pack(">I", len(REQUEST_MESSAGE)) + REQUEST_MESSAGE)
    return path


@contextlib.contextmanager
def upstream(ws: Workspace) -> Iterator[tuple[int, ManagedProcess]]:
    root = ws.dir("h2-upstream")

    def config(port: int) -> str:
        return UPSTREAM_CONFIG.format(
            root=root, port=port, keepalive_requests=KEEPALIVE_REQUESTS, max_streams=UPSTREAM_MAX_STREAMS
        )

    with _run_nginx(root, ws.placement.load, config, "nginx h2c upstream") as started:
        yield started


@dataclass(frozen=True, slots=True)
class H2Result:
    requests: int  # succeeded (2xx)
    errors: int  # failed + errored + timeout + non-2xx
    duration_s: float
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    mean_us: float


def command(
    address: str,
    conns: int,
    streams: int,
    duration: float,
    body: Path,
    log: Path | None,
    cpus: Iterable[int] | None,
) -> list[str]:
    argv = [H2LOAD, "-t1", f"-c{conns}", f"-m{streams}", f"-D{max(1, round(duration))}", "-d", str(body)]
    for h in HEADERS:
        argv += ["-H", h]
    if log is not None:
        argv.append(f"--log-file={log}")
    return pinned_argv([*argv, f"http://{address}{PATH}"], cpus)


def _pct(values: list[int], q: float) -> float:
    return float(values[min(len(values) - 1, int(q * len(values)))]) if values else 0.0


def parse(stdout: str, log: Path | None) -> H2Result:
    done = ok = failed = errored = timeout = 0
    duration = 0.0
    for line in stdout.splitlines():
        if line.startswith("finished in "):
            text = line.split()[2].rstrip(",")
            duration = float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))
        elif line.startswith("requests: "):
            # requests: 40879 total, 40929 started, 40879 done, 40879 succeeded, 0 failed, 0 errored, 0 ...
            f = line.replace(",", "").split()
            done, failed, errored, timeout = int(f[5]), int(f[9]), int(f[11]), int(f[13])
        elif line.startswith("status codes: "):
            f = line.replace(",", "").split()
            ok = int(f[2])  # 2xx
    if not duration:
        raise RuntimeError(f"h2load printed no 'finished in' line:\n{stdout[-2000:]}")
    lat: list[int] = []
    if log is not None and log.exists():
        for row in log.read_text().splitlines():
            parts = row.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                lat.append(int(parts[2]))
        lat.sort()
    return H2Result(
        requests=ok,
        errors=max(0, done - ok) + failed + errored + timeout,
        duration_s=duration,
        p50_us=_pct(lat, 0.5),
        p90_us=_pct(lat, 0.9),
        p99_us=_pct(lat, 0.99),
        p999_us=_pct(lat, 0.999),
        mean_us=sum(lat) / len(lat) if lat else 0.0,
    )


def run(
    address: str,
    conns: int,
    streams: int,
    duration: float,
    body: Path,
    log: Path | None,
    cpus: Iterable[int] | None,
) -> H2Result:
    if log is not None:
        log.unlink(missing_ok=True)
    argv = command(address, conns, streams, duration, body, log, cpus)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + GRACE_S)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}"
        )
    return parse(done.stdout, log)


def ok_once(address: str, body: Path) -> bool:
    """One gRPC-shaped request through ``address`` answered 2xx (routes converged)."""
    argv = [H2LOAD, "-n1", "-c1", "-d", str(body)]
    for h in HEADERS:
        argv += ["-H", h]
    argv.append(f"http://{address}{PATH}")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return "1 succeeded" in done.stdout and "status codes: 1 2xx" in done.stdout

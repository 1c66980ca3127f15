"""The upstream every mode reaches: nginx answering a fixed small body with keep-alive, one process.

nginx cannot bind port 0 and tell us the port, so we take a free port and retry on the rare lost race.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lib.procstat import pinned_argv
from lib.topology import Endpoint, Hop, Workspace
from plexus.testing.procs import ManagedProcess, free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
BODY = "plexus bench\n"  # fixed, small: the proxies' per-request cost is what we measure, not bytes moved
# nginx closes a keep-alive connection after 1000 requests by default (keepalive_requests); a reconnect
# through a proxy would then be measured as part of the proxy. Effectively unlimited here.
KEEPALIVE_REQUESTS = 100_000_000
BIND_ATTEMPTS = 5

_HEAD = """\
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_timeout 300s;
    keepalive_requests {keepalive_requests};
"""

CONFIG = (
    _HEAD
    + """\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"""
)


def available() -> bool:
    return shutil.which("nginx") is not None or Path(NGINX).exists()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def _run_nginx(
    root: Path, cpus: Iterable[int] | None, config: Callable[[int], str], what: str
) -> Iterator[tuple[int, ManagedProcess]]:
    """Start nginx with ``config(port)`` on a free port pinned to ``cpus``; yield (port, process); stop it by
    PID. A port taken between picking and binding is retried on another."""
    last_log = ""
    for _ in range(BIND_ATTEMPTS):
        port = free_port()
        conf = root / "nginx.conf"
        conf.write_text(config(port))
        argv = pinned_argv([NGINX, "-p", str(root), "-c", str(conf)], cpus)
        proc = ManagedProcess(argv, log_path=root / "nginx.out")
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.alive() and not _listening(port):
                time.sleep(0.05)
            if proc.alive() and _listening(port):
                yield port, proc
                return
            last_log = proc.log()
            with contextlib.suppress(OSError):
                last_log += (root / "error.log").read_text(errors="replace")
        finally:
            proc.stop()
    raise RuntimeError(f"{what} did not start after {BIND_ATTEMPTS} attempts; last log:\n{last_log}")


@contextlib.contextmanager
def nginx(ws: Workspace) -> Iterator[tuple[int, ManagedProcess]]:
    """Start the nginx upstream on the load CPUs; yield (port, process); stop it by PID."""
    body = BODY.replace("\n", "\\n")

    def config(port: int) -> str:
        return CONFIG.format(
            root=ws.dir("nginx"), port=port, body=body, keepalive_requests=KEEPALIVE_REQUESTS
        )

    with _run_nginx(ws.dir("nginx"), ws.placement.load, config, "nginx") as started:
        yield started


PROXY_CONFIG = (
    _HEAD
    + """\
    upstream bench {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
)


@contextlib.contextmanager
def nginx_proxy(ws: Workspace, mode: str, upstream_port: int) -> Iterator[Endpoint]:
    """nginx as a one-hop reverse proxy: a calibration point, the cheapest proxy TESTING.md §J quotes.

    Its figure here against TESTING.md's (16 µs) tells how this machine compares with the one the
    reference figures came from.
    """
    root = ws.dir(mode)

    def config(port: int) -> str:
        return PROXY_CONFIG.format(
            root=root, port=port, upstream_port=upstream_port, keepalive_requests=KEEPALIVE_REQUESTS
        )

    with _run_nginx(root, ws.placement.proxy, config, "nginx proxy") as (port, proc):
        yield Endpoint(mode=mode, url=f"http://127.0.0.1:{port}/", hops=[Hop("nginx", proc.pid)])

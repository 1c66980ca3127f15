"""Instructions per proxied request (user space), counted by valgrind's callgrind: noise-free A/B.

    .venv/bin/python bench/profiles/icount.py --requests 3000 --modes minimal,plexus,before

Each proxy runs under callgrind; after a warm-up its counters are zeroed, then ``--requests`` keep-alive
GETs go through it from ``--connections`` client connections in lockstep, then the counters are dumped.
Instructions in system calls (kernel) are not counted; on this shared 2-vCPU machine the CPU-time figures
of measure.py swing ±30 % between rounds, while these counts repeat to within a fraction of a percent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import NGINX_CONF, PY, ROOT, free_port, wait_ready


def drive(address: str, requests: int, connections: int, host: str) -> None:
    hostname, _, port = address.rpartition(":")
    socks = [socket.create_connection((hostname, int(port)), timeout=30) for _ in range(connections)]
    request = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode()
    done = 0
    while done < requests:
        for s in socks:
            s.sendall(request)
        for s in socks:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, _, body = buf.partition(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            assert m is not None and head.startswith(b"HTTP/1.1 200"), head
            while len(body) < int(m.group(1)):
                body += s.recv(65536)
        done += connections
    for s in socks:
        s.close()


def total_ir(dump_dir: Path, pid: int, keep: str | None = None) -> int:
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    files = sorted(dump_dir.glob(f"cg.out.{pid}*"), key=lambda p: p.stat().st_mtime)
    text = files[-1].read_text(errors="replace")
    if keep is not None:
        shutil.copy(files[-1], keep)
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    assert m is not None
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--modes", default="minimal,plexus")
    ap.add_argument("--before-src", default="/tmp/plexus_before/src")
    ap.add_argument("--keep", help="copy each mode's callgrind dump here (for callgrind_annotate)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="plexus-icount-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port = free_port()
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(root=tmp, port=port))
        procs.append(subprocess.Popen(["/usr/sbin/nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")]))
        upstream = f"127.0.0.1:{port}"
        time.sleep(0.5)
        for mode in args.modes.split(","):
            rf = tmp / f"{mode}.json"
            env = dict(os.environ, PYTHONPATH=args.before_src) if mode == "before" else None
            if mode == "minimal":
                argv = [PY, str(ROOT / "bench/profiles/minimal_proxy.py"), "--upstream", upstream]
                key, host = "listen", "bench"
            else:
                config = json.dumps({"services": {"bench": [upstream]}})
                argv = [PY, str(ROOT / "tests/transport/dataplane_runner.py"), "--config", config]
                key, host = "egress", "bench"
            vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out.%p"]
            with open(tmp / f"{mode}.log", "wb") as log:
                p = subprocess.Popen([*vg, *argv, "--ready-file", str(rf)], env=env, stdout=log, stderr=log)
            procs.append(p)
            address = str(wait_ready(rf, p, timeout=120)[key])
            drive(address, 200, args.connections, host)  # warm up: connections, pools, caches
            subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
            drive(address, args.requests, args.connections, host)
            ir = total_ir(tmp, p.pid, f"{args.keep}/callgrind.{mode}" if args.keep else None)
            print(
                f"{mode:8s} {ir / args.requests:10.0f} instructions/request "
                f"(user space, c={args.connections})"
            )
            p.send_signal(signal.SIGTERM)
            p.wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

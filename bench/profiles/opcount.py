"""Bytecodes executed per proxied request, by function: the Python-side work, counted exactly.

    .venv/bin/python bench/profiles/opcount.py [--requests 500]

The data plane runs in this process on uvloop with an opcode tracer on its thread; a client thread sends
keep-alive GETs (Host: bench) one at a time through the shared egress to nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from icount import drive
from measure import NGINX_CONF, free_port

from plexus.discovery.model import Instance
from plexus.transport import DataPlane, DataPlaneSettings

counts: collections.Counter[str] = collections.Counter()


def tracer(frame: FrameType, event: str, arg: Any) -> Any:
    frame.f_trace_opcodes = True
    if event == "opcode":
        code = frame.f_code
        counts[f"{Path(code.co_filename).name}:{code.co_name}"] += 1
    return tracer


async def run(upstream: str, requests: int) -> None:
    plane = DataPlane(DataPlaneSettings())
    plane.update_service("bench", [Instance(service="bench", address=upstream, protocol="http")])
    egress = await plane.listen_shared_egress("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, drive, str(egress), 50, 1, "bench")  # warm up
    sys.settrace(tracer)
    await loop.run_in_executor(None, drive, str(egress), requests, 1, "bench")
    sys.settrace(None)
    await plane.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="plexus-ops-"))
    port = free_port()
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(root=tmp, port=port))
    nginx = subprocess.Popen(["/usr/sbin/nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")])
    try:
        time.sleep(0.5)
        uvloop.run(run(f"127.0.0.1:{port}", args.requests))
    finally:
        nginx.send_signal(signal.SIGTERM)
        nginx.wait(5)
    total = sum(counts.values())
    print(f"{total / args.requests:.0f} bytecodes per request")
    for name, n in counts.most_common(40):
        if n / args.requests >= 0.5:
            print(f"{n / args.requests:7.1f}  {name}")


if __name__ == "__main__":
    main()

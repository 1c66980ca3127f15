"""Count Python-level calls per proxied request in the Plexus data plane (cProfile under wrk load).

.venv/bin/python bench/profiles/callcount.py            # nginx on a free port, wrk -c50 for 3 s
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import NGINX_CONF, free_port

from plexus.discovery.model import Instance
from plexus.transport import DataPlane, DataPlaneSettings


async def run(upstream: str) -> tuple[cProfile.Profile, int]:
    plane = DataPlane(DataPlaneSettings())
    plane.update_service("bench", [Instance(service="bench", address=upstream, protocol="http")])
    egress = await plane.listen_shared_egress("127.0.0.1", 0)
    argv = ["wrk", "-t1", "-c50", "-H", "Host: bench"]
    warm = await asyncio.create_subprocess_exec(*argv, "-d1s", f"http://{egress}/", stdout=subprocess.PIPE)
    await warm.communicate()
    prof = cProfile.Profile()
    proc = await asyncio.create_subprocess_exec(*argv, "-d3s", f"http://{egress}/", stdout=subprocess.PIPE)
    prof.enable()
    out, _ = await proc.communicate()
    prof.disable()
    await plane.close()
    m = re.search(rb"(\d+) requests in", out)
    assert m is not None, out
    return prof, int(m.group(1))


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="plexus-calls-"))
    port = free_port()
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(root=tmp, port=port))
    nginx = subprocess.Popen(["/usr/sbin/nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")])
    try:
        time.sleep(0.5)
        prof, n = uvloop.run(run(f"127.0.0.1:{port}"))
    finally:
        nginx.send_signal(signal.SIGTERM)
        nginx.wait(5)
    stats = pstats.Stats(prof)
    rows = []
    total = 0
    for (file, line, name), (_cc, nc, _tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += nc
        rows.append((nc / n, f"{Path(file).name}:{line} {name}"))
    rows.sort(reverse=True)
    print(f"{n} requests, {total / n:.1f} calls per request (Python functions and C functions/methods)")
    for per, what in rows[:45]:
        if per >= 0.05:
            print(f"{per:6.2f}  {what}")


if __name__ == "__main__":
    main()

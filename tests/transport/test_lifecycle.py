"""Closing the data plane drains in-flight requests; the standalone runner serves and stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
from pathlib import Path

import pytest

from transport.conftest import Mesh
from transport.upstreams import LoopThread, read_response


def test_close_lets_in_flight_requests_finish_then_refuses(lt: LoopThread) -> None:
    mesh = Mesh(lt)
    mesh.http_upstreams("svc", 1)
    result: list[tuple[int, dict[str, str], bytes, bool]] = []
    with socket.create_connection(mesh.egress, timeout=5) as s:
        s.sendall(b"GET /slow/400 HTTP/1.1\r\nHost: svc\r\n\r\n")
        reader = threading.Thread(target=lambda: result.append(read_response(s)))
        reader.start()
        lt.run(__import__("asyncio").sleep(0.1))
        lt.run(mesh.plane.close(drain_seconds=3.0))
        reader.join(5)
    status, _, body, closed = result[0]
    assert (status, body) == (200, b"svc-0") and closed  # finished, and told the client to go away
    with pytest.raises(OSError):
        socket.create_connection(mesh.egress, timeout=1).close()
    for up in mesh.upstreams:
        lt.run(up.stop())


def test_runner_process_serves_and_stops_on_sigterm(lt: LoopThread, procs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mesh = Mesh(lt)
    try:
        (up,) = mesh.http_upstreams("svc", 1)
        config = {"services": {"svc": [f"127.0.0.1:{up.port}"]}, "settings": {"hop_name": "runner"}}
        ready = tmp_path / "ready.json"
        runner = Path(__file__).with_name("dataplane_runner.py")
        proc = procs.run(
            [sys.executable, str(runner), "--config", json.dumps(config), "--ready-file", str(ready)],
            ready_file=ready,
        )
        host, port = proc.info["egress"].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\nGET / HTTP/1.1\r\nHost: nope\r\n\r\n")
            assert read_response(s)[2] == b"svc-0"
            assert read_response(s)[1]["x-plexus-hop"] == "runner"
        proc.signal(signal.SIGTERM)
        assert proc.proc.wait(10) == 0
    finally:
        mesh.close()

"""A real third-party Dubbo client, dubbo-python (PyPI), unchanged, through two Plexus sidecars:

    dubbo-python (direct mode, host = A's egress) → sidecar A → sidecar B (Dubbo ingress) → provider app

The provider (tests/e2e/dubbo_python_app.py) decodes with ``plexus.codec.dubbo``/``hessian2`` and answers
each ``greet(s)`` with ``greet:<s>`` out of order, and ``fail(s)`` with status SERVICE_ERROR.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from plexus.testing.procs import ManagedProcess, wait_for

from .dubbo_python_app import CALLS, argument_of

# Found, not imported: importing dubbo-python starts its reader thread, which spins until it has a connection.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("dubbo") is None,
    reason="dubbo-python is not installed (pip install dubbo-python)",
)

APP = Path(__file__).with_name("dubbo_python_app.py")
SERVICE = "dubbo-python-greeter"
INTERFACE = "com.acme.Greeter"


def _start_provider() -> ManagedProcess:
    fd, ready = tempfile.mkstemp(prefix="plexus-dubbo-python-", suffix=".json")
    os.close(fd)
    os.unlink(ready)
    return ManagedProcess([sys.executable, str(APP), "provider", ready], ready_file=Path(ready))


def test_dubbo_python_client_through_two_sidecars() -> None:
    started: list[ManagedProcess] = []
    http = httpx.Client(timeout=5)
    try:
        registry = ManagedProcess.plexus(
            [
                "registry",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--warmup",
                "0",
                "--debounce-ms",
                "20",
            ]
        )
        started.append(registry)
        common = ["--registry", registry.address("listen"), "--ingress", "127.0.0.1:0"]
        common += ["--egress", "127.0.0.1:0", "--api", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        common += ["--health-interval", "0.2", "--drain-time", "0.2"]
        b = ManagedProcess.plexus(["sidecar", *common])
        started.append(b)
        a = ManagedProcess.plexus(["sidecar", *common])
        started.append(a)
        app = _start_provider()
        started.append(app)

        port = int(app.address("listen").rpartition(":")[2])
        published = http.put(
            f"http://{b.address('api')}/v1/providers/{SERVICE}", json={"port": port, "protocol": "dubbo"}
        )
        assert published.status_code == 200, published.text
        ingress = published.json()["address"]
        egress = http.put(f"http://{a.address('api')}/v1/consumers/{SERVICE}").json()["address"]

        def seen() -> bool:
            found = http.get(f"http://{a.address('api')}/v1/services/{SERVICE}")
            return found.status_code == 200 and [i["address"] for i in found.json()["instances"]] == [ingress]

        wait_for(seen, timeout=10, what=f"A sees {SERVICE}")

        run = subprocess.run(
            [sys.executable, str(APP), "client", egress, INTERFACE],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        answers: list[list[str]] = result["answers"]
        misdelivered = sum(1 for sent, got in answers if got != f"greet:{sent}")
        print(f"ledger dubbo-python: sent={CALLS} answered={len(answers)} misdelivered={misdelivered}")
        assert sorted(sent for sent, _ in answers) == sorted(argument_of(i) for i in range(CALLS))
        assert misdelivered == 0
        assert result["error"].startswith("DubboResponseException"), result["error"]
        assert "refused:x" in result["error"]
        metrics = http.get(f"http://{b.address('admin')}/stats/prometheus").text
        ingress_ok = f'plexus_requests_total{{service="{SERVICE}",direction="ingress",code_class="2xx"}}'
        assert f"{ingress_ok} {CALLS}\n" in metrics  # the fail call is not counted as a success
    finally:
        http.close()
        for proc in reversed(started):
            proc.stop()

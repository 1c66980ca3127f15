"""`plexus demo --duration N` runs the whole mesh, prints the table and exits 0 when no call failed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import wait_until


def test_demo_runs_for_its_duration_and_prints_the_table() -> None:
    env = {**os.environ, "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "plexus", "demo", "--duration", "6", "--rate", "20"],
                          capture_output=True, text=True, timeout=90, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for path in ("mesh → mesh", "mesh → direct", "direct → mesh", "direct → direct"):
        assert path in output, output
    assert "failed 0, misdelivered 0, lost 0" in output, output


def test_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "120", "TMPDIR": str(tmp_path)}  # the demo's work dir lands in tmp_path
    with open(tmp_path / "demo.out", "wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "plexus", "demo"], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(lambda: len(list(tmp_path.glob("plexus-demo-*/c?.ready.json"))) == 2, 40,
                       "both consumers of the demo")
            children = [json.loads(p.read_text())["pid"] for p in tmp_path.glob("plexus-demo-*/*.ready.json")]
            assert len(children) == 7  # registry, two sidecars (p1, c1), two providers, two consumers
            time.sleep(1.0)  # some traffic
            demo.send_signal(signal.SIGINT)
            assert demo.wait(30) == 0, (tmp_path / "demo.out").read_text()
        finally:
            if demo.poll() is None:
                demo.kill()
    alive = [pid for pid in children if _alive(pid)]
    assert alive == []
    assert "(interrupted)" in (tmp_path / "demo.out").read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_failing_mesh_makes_the_demo_exit_non_zero(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "120", "TMPDIR": str(tmp_path)}
    with open(tmp_path / "demo.out", "wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "plexus", "demo", "--duration", "30"], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(lambda: len(list(tmp_path.glob("plexus-demo-*/c?.ready.json"))) == 2, 40,
                       "both consumers of the demo")
            (sidecar_ready,) = tmp_path.glob("plexus-demo-*/c1-sidecar.ready.json")
            # The meshed consumer's sidecar crashes: its calls fail and the demo notices the dead child.
            os.kill(json.loads(sidecar_ready.read_text())["pid"], signal.SIGKILL)
            assert demo.wait(30) == 1
        finally:
            if demo.poll() is None:
                demo.kill()
    output = (tmp_path / "demo.out").read_text()
    assert "stopped unexpectedly: c1-sidecar" in output, output

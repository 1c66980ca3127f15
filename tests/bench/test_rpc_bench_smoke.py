"""The Bolt/Dubbo benchmark harness (bench/rpc.py) runs end to end: direct and through one sidecar, one
second at 100 requests in flight. No speed assertions; only that both modes moved requests without errors and
the sidecar's CPU was charged, so a harness broken by a CLI or API change is caught by the ordinary suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "bench" / "rpc.py"
MODES = ("direct", "plexus1")


@pytest.mark.timeout(90)
def test_quick_bolt_run_moves_requests_through_every_mode(tmp_path: Path) -> None:
    out = tmp_path / "rpc.json"
    done = subprocess.run(
        [sys.executable, str(HARNESS), "--protocols", "bolt", "--modes", ",".join(MODES), "--inflight", "100",
         "--duration", "1", "--rounds", "1", "--retries", "0", "--quiet-wait", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=80, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, f"harness failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    runs = json.loads(out.read_text())["runs"]
    assert {r["mode"] for r in runs} == set(MODES)
    for run in runs:
        assert run["requests"] > 0 and run["errors"] == 0, run
    assert all(r["hop_cpu_s"]["consumer"] > 0 for r in runs if r["mode"] == "plexus1")

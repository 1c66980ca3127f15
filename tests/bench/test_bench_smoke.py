"""The benchmark harness runs end to end: direct and through one Plexus sidecar, a couple of seconds each.

No speed assertions (TESTING.md: none in the suite); only that every mode moved requests without errors, so a
harness broken by a CLI or API change is caught by the ordinary suite rather than on the next bench day.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import ROOT, needs_wrk_and_nginx, run_harness

HARNESS = ROOT / "bench" / "http1.py"
MODES = ("direct", "plexus1")


@pytest.mark.timeout(90)
@needs_wrk_and_nginx
def test_quick_run_moves_requests_through_every_mode(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = run_harness(
        [str(HARNESS), "--quick", "--modes", ",".join(MODES), "--connections", "1,10", "--out", str(out)],
        timeout=60,
    )
    assert done.returncode == 0, f"harness failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert {r["mode"] for r in runs} == set(MODES)
    for run in runs:
        where = f"{run['mode']} at {run['connections']} connections"
        assert run["requests"] > 0, f"no requests completed {where}"
        assert run["errors"] == 0, f"{run['errors']} errors {where}"
    # The sidecar's CPU was charged: the accounting that the per-request figures rest on works.
    sidecar_runs = [r for r in runs if r["mode"] == "plexus1"]
    assert all(r["hop_cpu_s"]["consumer"] > 0 for r in sidecar_runs)
    assert report["memory"]["plexus1"]["consumer"]["idle"] > 0

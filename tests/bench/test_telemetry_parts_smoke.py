"""bench/telemetry_parts.py runs end to end, and its cuts are the ones asked for.

No speed assertions (TESTING.md: none in the suite): each part started (the ablation took in both sidecars,
or the harness refuses), moved requests without errors and was charged CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, needs_wrk_and_nginx, run_harness

HARNESS = ROOT / "bench" / "telemetry_parts.py"
PARTS = ("cut", "trace", "log-file")


@pytest.mark.timeout(150)
@needs_wrk_and_nginx
def test_each_part_moves_requests_and_is_charged(tmp_path: Path) -> None:
    out = tmp_path / "parts.json"
    done = run_harness(
        [str(HARNESS), "--parts", ",".join(PARTS), "--rounds", "1", "--duration", "1", "--out", str(out)],
        timeout=110,
    )
    assert done.returncode == 0, f"harness failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    parts = json.loads(out.read_text())["parts"]
    assert set(parts) == set(PARTS)
    for name, values in parts.items():
        assert len(values) == 1 and values[0] > 0, f"{name}: {values}"
    assert "| log-file |" in done.stdout  # the table, with each part's share of cut's


def test_the_ablation_cuts_only_the_parts_named(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from lib import ablation
    finally:
        sys.path.remove(str(ROOT / "bench"))
    ends = (ablation.prepare(tmp_path / "ends", ["ends"]) / "sitecustomize.py").read_text()
    trace = (ablation.prepare(tmp_path / "trace", ["trace"]) / "sitecustomize.py").read_text()
    both = (ablation.prepare(tmp_path / "both") / "sitecustomize.py").read_text()
    assert "Exchange._ended = _ended" in ends and "fresh_lines" not in ends
    assert "fresh_lines" in trace and "Exchange._ended" not in trace
    assert both == ablation.SITECUSTOMIZE and "Exchange._ended = _ended" in both and "fresh_lines" in both
    for text in (ends, trace, both):
        compile(text, "sitecustomize.py", "exec")  # what a sidecar would run at start
    with pytest.raises(ValueError, match="not spans"):
        ablation.prepare(tmp_path / "bad", ["spans"])

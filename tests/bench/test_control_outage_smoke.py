"""The control-plane outage harness (bench/control_outage.py) runs end to end on a short setting: the control
plane down for 3 s under traffic instead of 10 minutes (TESTING.md "Durations", H). Asserts what the harness
prints and writes: no failed or lost call, traffic served on the last snapshot while it was down, every
sidecar SYNCED again after its return, and the change applied after the return seen in traffic. No timing
assertions; a harness broken by a CLI or API change is caught by the ordinary suite."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "bench" / "control_outage.py"


@pytest.mark.timeout(60)
def test_a_short_outage_loses_nothing_and_the_sidecars_resync(tmp_path: Path) -> None:
    out = tmp_path / "outage.json"
    done = subprocess.run(
        [sys.executable, str(HARNESS), "--down-seconds", "3", "--rate", "40", "--warm-seconds", "1",
         "--after-seconds", "1", "--progress", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=55, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, f"harness failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    line = next(x for x in done.stdout.splitlines() if x.startswith("summary: "))
    printed = dict(re.findall(r"(\w+)=([\d.]+)", line))
    assert printed["errors"] == "0" and printed["lost"] == "0", line
    assert int(printed["sent"]) == int(printed["ok"]) > 0, line

    result = json.loads(out.read_text())
    assert result["verdict"] == {"zero_failed_calls": True, "served_on_last_snapshot": True,
                                 "resynced": True, "change_took_effect": True}  # fmt: skip
    total = result["all"]
    assert (total["errors"], total["lost"], total["duplicated"], total["unrecorded"]) == (0, 0, 0, 0), total
    assert total["sent"] == int(printed["sent"])
    down = result["during_outage"]  # served by the last snapshot: canary calls all on v2, the split on both
    assert down["ok"] > 0 and down["errors"] == 0 and set(down["canary"]) == {"app-v2"}, down
    assert set(down["split"]) == {"app-v1", "app-v2"}, down
    assert result["resync_s"] > 0 and result["change_to_effect_s"] > 0
    statuses = [p["status"] for p in result["proxy_status"]["proxies"]]  # the real `plexus proxy-status`
    assert statuses == ["SYNCED"] * 3, result["proxy_status"]
    assert set(result["after_change"]["canary"]) == {"app-v1"}, result["after_change"]

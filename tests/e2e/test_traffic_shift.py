"""TrafficShift end to end through real processes: one provider instance published as v1 and one as v2, each
beside its own sidecar; a consumer sidecar with a policy file (--routes) holding a TrafficShift by version.

- weights 20/80: the split over many calls stays within bounds;
- a shift with a ``start`` a few seconds ahead changes nothing until then, and takes effect at that instant on
  the next call (no reload, no timer).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from plexus.demo.cluster import Cluster
from plexus.demo.processes import Child

from .conftest import wait_until
from .test_unit_routing import reload_policy, start_providers, start_sidecar

SERVICE = "shifted"
SHIFT = """\
apiVersion: plexus.io/v1
kind: TrafficShift
metadata: {name: canary}
spec:
  host: shifted
  by: version
  weights: {v1: 20, v2: 80}
"""


def at(text: str, start: float) -> str:
    stamp = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return text.replace("  weights: {v1: 20, v2: 80}\n", f'  weights: {{v1: 100}}\n  start: "{stamp}"\n')


@dataclass
class Shift:
    consumer_sidecar: Child
    egress: str
    policy_file: Path
    client: httpx.Client

    def who(self, n: int) -> Counter[str]:
        answers: Counter[str] = Counter()
        for i in range(n):
            response = self.client.get(f"http://{self.egress}/", headers={"x-request-id": f"t-{i}"})
            answers[
                response.json()["provider"] if response.status_code == 200 else str(response.status_code)
            ] += 1
        return answers


@pytest.fixture(scope="module")
def shift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shift]:
    """One mesh for this module's tests (each leaves the policy as it found it)."""
    workdir = tmp_path_factory.mktemp("shift")
    cluster = Cluster(workdir)
    try:
        cluster.start_registry()
        policy_file = workdir / "policy.yaml"
        policy_file.write_text(SHIFT)
        start_providers(cluster, [("pv1", (), "v1"), ("pv2", (), "v2")], SERVICE)
        sidecar = start_sidecar(cluster, "c-sidecar", "--routes", str(policy_file))
        with httpx.Client(timeout=10) as client:
            api = f"http://{sidecar.address('api')}"
            response = client.put(f"{api}/v1/consumers/{SERVICE}")
            assert response.status_code == 200, response.text
            wait_until(
                lambda: len(client.get(f"{api}/v1/services/{SERVICE}").json().get("instances", [])) == 2,
                20,
                "the consumer sidecar to see both instances",
            )
            yield Shift(sidecar, response.json()["address"], policy_file, client)
    finally:
        cluster.stop_all()


def test_a_shift_by_version_splits_20_80(shift: Shift) -> None:
    split = shift.who(500)
    assert set(split) == {"pv1", "pv2"}, split
    # p = 0.2 over 500 calls: sd ≈ 8.9; a 4.5 sd band either side of 100
    assert 60 <= split["pv1"] <= 140, split


def test_a_shift_with_a_start_applies_from_that_instant(shift: Shift) -> None:
    start = float(int(time.time()) + 8)  # room for a reload and 60 calls on a busy machine
    reload_policy(shift.consumer_sidecar, shift.policy_file, at(SHIFT, start))
    assert time.time() < start - 1, "the reload took too long for this test's window"
    before = shift.who(60)  # not started: the plain balancer, round robin over both
    assert time.time() < start, "the calls took too long for this test's window"
    assert before["pv1"] >= 20 and before["pv2"] >= 20, before
    wait_until(lambda: time.time() >= start, 10, "the shift's start")
    assert shift.who(60) == Counter({"pv1": 60})
    reload_policy(shift.consumer_sidecar, shift.policy_file, SHIFT)

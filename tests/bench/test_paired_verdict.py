"""bench/http1.py's observability verdict (issue 5): decided by the geometric mean of the rounds' paired
ratios, with the medians' ratio printed beside it. Checked on runs made up here, where each estimator's
answer is known."""

from __future__ import annotations

import importlib
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> Iterator[dict[str, ModuleType]]:
    """bench/http1.py and bench/lib/results.py, imported as the harness imports them."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        yield {"http1": importlib.import_module("http1"), "results": importlib.import_module("lib.results")}
    finally:
        sys.path.remove(str(ROOT / "bench"))


def _run(results: ModuleType, mode: str, rnd: int, cpu_us_per_request: float) -> Any:
    requests = 100_000
    return results.Run(
        layout="split",
        round=rnd,
        connections=50,
        mode=mode,
        requests=requests,
        duration_s=3.0,
        errors=0,
        p50_us=1000.0,
        p90_us=1500.0,
        p99_us=2000.0,
        p999_us=3000.0,
        mean_us=1100.0,
        hop_cpu_s={
            "consumer": cpu_us_per_request * requests / 2e6,
            "provider": cpu_us_per_request * requests / 2e6,
        },
        upstream_cpu_s=0.5,
    )


# Per round, the reference's (plexus2b) and the measured mode's (plexus2o) CPU µs per request; in rounds 3-5
# the host slowed both runs of the round alike, and each round's ratio stays 0.88.
ROUNDS = [(40.0, 45.45), (40.0, 45.45), (40.0, 45.45), (52.0, 59.09), (52.0, 59.09), (52.0, 59.09)]


def test_the_paired_ratios_are_per_round_and_their_geometric_mean_is_taken(
    bench: dict[str, ModuleType],
) -> None:
    results = bench["results"]
    runs = [
        _run(results, mode, rnd, cpu)
        for rnd, pair in enumerate(ROUNDS)
        for mode, cpu in zip(("b", "o"), pair, strict=True)
    ]
    runs.append(_run(results, "o", 99, 10.0))  # a round without its pair is left out
    ratios = results.round_ratios(runs, "split", 50, "o", "b")
    assert len(ratios) == len(ROUNDS)
    assert ratios == pytest.approx([b / o for b, o in ROUNDS])
    assert results.paired_geomean(runs, "split", 50, "o", "b") == pytest.approx(
        statistics.geometric_mean([b / o for b, o in ROUNDS])
    )
    assert results.paired_geomean(runs, "split", 1, "o", "b") is None  # no round at that connection count


def test_the_observability_verdict_is_the_geometric_mean_of_the_paired_rounds(
    bench: dict[str, ModuleType],
) -> None:
    http1, results = bench["http1"], bench["results"]
    # plexus2b ran fast in four rounds and slow in three, plexus2o alike in all: the median takes
    # plexus2b's fast rounds alone (below 85 % kept), the geometric mean every round (above).
    b_rounds = [39.0, 39.0, 39.0, 39.0, 48.0, 48.0, 48.0]
    runs = [
        _run(results, mode, rnd, cpu)
        for rnd, b in enumerate(b_rounds)
        for mode, cpu in (("plexus2b", b), ("plexus2o", 46.5), ("plexus2", 42.0), ("direct", 0.0))
    ]
    summaries = results.summarize(runs)
    verdicts = http1.observability_verdicts(summaries, runs)
    against_b = next(v for v in verdicts if "vs plexus2b" in v.target)
    o = next(s for s in summaries if s.mode == "plexus2o")
    b = next(s for s in summaries if s.mode == "plexus2b")
    medians = o.rps_per_proxy_core / b.rps_per_proxy_core
    geomean = results.paired_geomean(runs, "split", 50, "plexus2o", "plexus2b")
    assert medians < 0.85 < geomean
    assert geomean == pytest.approx(statistics.geometric_mean(b_rounds) / 46.5)
    assert against_b.met is True
    assert against_b.measured.startswith(f"{geomean:.1%} (geometric mean")
    assert f"{medians:.1%}" in against_b.measured  # the medians' ratio, printed beside it


def test_the_verdict_fails_when_the_paired_rounds_keep_less_than_85_percent(
    bench: dict[str, ModuleType],
) -> None:
    http1, results = bench["http1"], bench["results"]
    runs = [
        _run(results, mode, rnd, cpu)
        for rnd in range(5)
        for mode, cpu in (("plexus2b", 40.0), ("plexus2o", 48.5), ("plexus2", 42.0), ("direct", 0.0))
    ]
    verdicts = http1.observability_verdicts(results.summarize(runs), runs)
    against_b = next(v for v in verdicts if "vs plexus2b" in v.target)
    assert against_b.met is False and against_b.measured.startswith("82.5%")

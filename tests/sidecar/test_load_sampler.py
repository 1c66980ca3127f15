"""The load sampler: /proc/stat deltas into a LoadSignal, only while an adaptive rule wants them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from plexus.proxy.adaptive import LoadSignal
from plexus.sidecar.load_sampler import LoadSampler, cpu_share, load_per_cpu, read_cpu_times


def test_cpu_times_are_read_from_a_proc_stat_file(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n")
    assert read_cpu_times(str(stat)) == (150, 1000)
    assert read_cpu_times(str(tmp_path / "missing")) is None
    stat.write_text("intr 1 2 3\n")
    assert read_cpu_times(str(stat)) is None
    assert cpu_share((150, 1000), (250, 1200)) == pytest.approx(0.5)
    assert cpu_share((150, 1000), (150, 1000)) is None


def test_samples_only_while_wanted() -> None:
    readings = iter([(0, 100), (30, 200), (130, 300), (130, 400)])
    signal = LoadSignal()
    sampler = LoadSampler(signal, cpu_times=lambda: next(readings), load=lambda: 0.25)
    sampler.sample()
    assert signal.cpu is None and sampler.samples == 0  # not wanted: nothing read
    signal.wanted = True
    sampler.sample()  # the first reading is a base
    assert signal.cpu is None and signal.load_per_cpu == 0.25
    sampler.sample()
    assert signal.cpu == pytest.approx(0.3)
    sampler.sample()
    assert signal.cpu == pytest.approx(1.0)
    signal.wanted = False
    sampler.sample()
    signal.wanted = True
    sampler.sample()  # a new base after a pause: no average over the idle time
    assert signal.cpu == pytest.approx(1.0)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc only")
def test_the_real_machine_is_sampled_each_interval() -> None:
    signal = LoadSignal()
    signal.wanted = True

    async def main() -> None:
        sampler = LoadSampler(signal, interval=0.05)
        sampler.start()
        deadline = asyncio.get_running_loop().time() + 10.0
        while signal.cpu is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        await sampler.aclose()

    asyncio.run(main())
    assert signal.cpu is not None and 0.0 <= signal.cpu <= 1.0
    assert signal.load_per_cpu is not None and signal.load_per_cpu == pytest.approx(load_per_cpu(), abs=5.0)

"""plexus.testing.procs.ManagedProcess waits for a child's ready file: a child that writes it and exits at
once is ready (the anthunder e2e's consumer writes its results and exits; before, a poll that came after its
exit took it for a failure and waited out the whole timeout), and a child that exits without it ends the
wait at once, naming its exit status."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from plexus.testing.procs import ManagedProcess


def test_a_child_that_writes_its_ready_file_and_exits_at_once_is_ready(tmp_path: Path) -> None:
    for n in range(5):  # (every run: the child is gone long before the first poll after its write)
        ready = tmp_path / f"ready-{n}.json"
        write = f"open({str(ready)!r}, 'w').write(json.dumps({{'n': {n}}}))"
        code = f"import json, time; time.sleep(0.2); {write}"
        process = ManagedProcess([sys.executable, "-c", code], ready_file=ready, ready_timeout=20)
        assert process.info == {"n": n}
        process.stop()


def test_a_child_that_exits_without_its_ready_file_fails_at_once(tmp_path: Path) -> None:
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"exited with 3 before it was ready; log:\n.*gave up"):
        ManagedProcess(
            [sys.executable, "-c", "print('gave up', flush=True); raise SystemExit(3)"],
            ready_file=tmp_path / "never.json",
            ready_timeout=20,
        )
    assert time.monotonic() - began < 10  # not the 20 s timeout

"""What the bench smoke tests share: the tools they need, and running a harness so that it cleans up."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERM_GRACE_S = 20.0  # a harness told to stop stops its processes by PID; this bounds how long that may take

needs_wrk_and_nginx = pytest.mark.skipif(
    shutil.which("wrk") is None or (shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists()),
    reason="wrk and nginx are required",
)


def run_harness(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``python ARGV`` from the repository root. Past ``timeout`` the harness gets SIGTERM first, which it
    turns into unwinding its ExitStack (every process it started is stopped by PID), and SIGKILL only if it
    is still there after TERM_GRACE_S; then the test fails."""
    proc = subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"{argv[0]} took over {timeout:.0f}s:\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

"""Child processes of the demo (and of the end-to-end tests): started in their own session, stopped by PID.

Each child writes a ready file (JSON with its bound addresses) once it serves; ``Child.wait_ready`` waits
for it. A consumer's stdout is a pipe read by a thread that keeps its last JSON report; every other child
logs to a file. Children live in their own session so that a Ctrl-C in the terminal reaches only the demo,
which then stops them in order (consumers, providers, sidecars, registry).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Final

READY_TIMEOUT: Final = 20.0  # a cold Python start with grpc imported takes about a second; 20 s is a hang
STOP_TIMEOUT: Final = 10.0  # SIGTERM, then SIGKILL after this long


class ChildError(RuntimeError):
    """A child exited or never became ready; the message carries the tail of its log."""


class Child:
    def __init__(self, name: str, argv: Sequence[str], workdir: Path, *, env: dict[str, str] | None = None,
                 capture_stdout: bool = False) -> None:
        self.name = name
        self.argv = list(argv)
        self.ready_file = workdir / f"{name}.ready.json"
        self.log_path = workdir / f"{name}.log"
        self.info: dict[str, Any] = {}
        self.reports: list[dict[str, Any]] = []
        self.last_report: dict[str, Any] | None = None
        self._reports_lock = threading.Lock()
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*self.argv, "--ready-file", str(self.ready_file)],
            stdout=subprocess.PIPE if capture_stdout else self._log, stderr=self._log, env=full_env,
            start_new_session=True,
        )
        self._reader: threading.Thread | None = None
        if capture_stdout:
            self._reader = threading.Thread(target=self._read_reports, name=f"demo-read-{name}", daemon=True)
            self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if self.ready_file.exists():
                with contextlib.suppress(ValueError):
                    self.info = json.loads(self.ready_file.read_text())
                    return self.info
            if not self.alive():
                raise ChildError(f"{self.name} exited with {self.proc.returncode} before it was ready; "
                                 f"log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ChildError(f"{self.name} was not ready after {timeout}s; log:\n{self.log_tail()}")
            time.sleep(0.02)

    def address(self, key: str) -> str:
        return str(self.info[key])

    def log_tail(self, limit: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-limit:]
        return ""

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: a crash, no cleanup."""
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._reader is not None:
            # The child has exited, so its stdout reaches EOF; on a loaded machine the reader may still be
            # parsing the last lines (the final report), so give it as long as the child itself had.
            self._reader.join(timeout)
        self._log.close()
        return self.proc.returncode

    def _read_reports(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                report = json.loads(raw)
            except ValueError:
                self._log.write(raw)
                continue
            if isinstance(report, dict):
                with self._reports_lock:
                    self.last_report = report
                    if report.get("final"):
                        self.reports.append(report)

    @property
    def final_report(self) -> dict[str, Any] | None:
        with self._reports_lock:
            return self.reports[-1] if self.reports else None

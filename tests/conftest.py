"""Shared fixtures: every process a test starts is stopped by PID when the test ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from plexus.testing.procs import ManagedProcess


class ProcessGroup:
    """Tracks the processes one test started; ``stop_all`` ends them in reverse order."""

    def __init__(self) -> None:
        self.started: list[ManagedProcess] = []

    def plexus(self, *args: str, env: dict[str, str] | None = None, **kw: object) -> ManagedProcess:
        proc = ManagedProcess.plexus(list(args), env=env, **kw)  # type: ignore[arg-type]
        self.started.append(proc)
        return proc

    def run(self, argv: list[str], **kw: object) -> ManagedProcess:
        proc = ManagedProcess(argv, **kw)  # type: ignore[arg-type]
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


@pytest.fixture
def procs() -> Iterator[ProcessGroup]:
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.stop_all()

"""What every mode under test hands the harness: where to send load and which processes to charge for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Placement:
    """Which CPUs the proxies run on and which the load generator and upstream run on.

    On this 2-vCPU machine the proxy under test gets CPU 1 and wrk + nginx share CPU 0 (TESTING.md §J), so a
    proxy's CPU is not stolen by the load it serves. ``None`` means "do not pin".
    """

    proxy: frozenset[int] | None
    load: frozenset[int] | None


@dataclass(frozen=True, slots=True)
class Hop:
    """One proxy process on the path; its CPU time is charged to the mode."""

    name: str  # e.g. "consumer", "provider", "envoy-a"
    pid: int


@dataclass(slots=True)
class Endpoint:
    """A running topology: wrk sends to ``url``; ``hops`` are the proxies in path order (empty for direct)."""

    mode: str
    url: str
    hops: list[Hop] = field(default_factory=list)
    idle_rss: dict[str, int] = field(default_factory=dict)  # hop name → VmRSS bytes right after start
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Workspace:
    """Where a run keeps generated configs and logs (a temp dir that is removed afterwards unless kept)."""

    root: Path
    placement: Placement

    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

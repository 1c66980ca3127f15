"""End-to-end fixtures: a mesh of real processes (registry, sidecars, SDK apps) and the request ledger."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from plexus.demo.cluster import Cluster
from plexus.demo.processes import Child


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    mesh = Cluster(tmp_path)
    try:
        mesh.start_registry()
        yield mesh
    finally:
        mesh.stop_all()  # every child by PID, consumers first


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def calls_to(consumer: Child, provider: str) -> int:
    """How many successful calls ``consumer`` has reported to ``provider`` so far."""
    report = consumer.last_report or {}
    return sum(p.get("providers", {}).get(provider, 0) for p in report.get("paths", {}).values())


@dataclass
class LedgerResult:
    sent: int
    ok: int
    errors: int
    lost: int
    misdelivered: int
    duplicated: int
    unrecorded: int  # answered as if by a provider that never received the id
    error_samples: list[str]

    def summary(self) -> str:
        return (f"sent={self.sent} ok={self.ok} errors={self.errors} lost={self.lost} "
                f"misdelivered={self.misdelivered} duplicated={self.duplicated} unrecorded={self.unrecorded}")


def read_ledger(consumer_ledgers: list[Path], provider_ledgers: dict[str, Path],
                reports: list[dict[str, Any] | None]) -> LedgerResult:
    """Join what the consumers sent and heard with what each provider received."""
    sent: set[str] = set()
    answered: dict[str, str] = {}
    failed: set[str] = set()
    for path in consumer_ledgers:
        for line in path.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            request_id, _, provider = rest.partition(" ")
            if kind == "sent":
                sent.add(request_id)
            elif kind == "ok":
                answered[request_id] = provider
            elif kind == "error":
                failed.add(request_id)
    received: dict[str, Counter[str]] = {}
    for name, path in provider_ledgers.items():
        received[name] = Counter(path.read_text().split()) if path.exists() else Counter()
    everywhere: Counter[str] = Counter()
    for counts in received.values():
        everywhere.update(counts)
    misdelivered = sum(int((r or {}).get("misdelivered", 0)) for r in reports)
    return LedgerResult(
        sent=len(sent),
        ok=len(answered),
        errors=len(failed),
        lost=len(sent - answered.keys() - failed),
        misdelivered=misdelivered,
        duplicated=sum(1 for n in everywhere.values() if n > 1),
        unrecorded=sum(1 for rid, p in answered.items() if received.get(p, Counter())[rid] == 0),
        error_samples=[s for r in reports for s in (r or {}).get("error_samples", [])],
    )

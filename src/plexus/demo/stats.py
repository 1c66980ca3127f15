"""Per-path call statistics, shared by the consumer app (which counts) and the demo (which shows them).

A path is ``"<consumer mode> → <provider mode>"`` for HTTP, e.g. ``"mesh → direct"``, and
``"<protocol> <consumer mode> → <provider mode>"`` for the others, e.g. ``"grpc direct → mesh"``; a call that
failed before any provider answered is counted on ``"... → ?"``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

ARROW: Final = "→"
LATENCY_WINDOW: Final = 2000  # recent calls per path kept for percentiles; bounded memory for long demos


def path_name(consumer_mode: str, provider_mode: str | None, protocol: str = "http") -> str:
    path = f"{consumer_mode} {ARROW} {provider_mode or '?'}"
    return path if protocol == "http" else f"{protocol} {path}"


def split_path(path: str) -> tuple[str, str]:
    """``(protocol, "<consumer> → <provider>")`` of a path name."""
    first, _, rest = path.partition(" ")
    return (first, rest) if rest.count(" ") == 2 else ("http", path)


@dataclass(slots=True)
class PathStats:
    calls: int = 0
    ok: int = 0
    errors: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    providers: dict[str, int] = field(default_factory=dict)

    def record(self, ok: bool, latency_ms: float, provider: str | None) -> None:
        self.calls += 1
        if ok:
            self.ok += 1
            self.latencies_ms.append(latency_ms)
        else:
            self.errors += 1
        if provider:
            self.providers[provider] = self.providers.get(provider, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "ok": self.ok, "errors": self.errors,
                "p50_ms": percentile(self.latencies_ms, 50), "p99_ms": percentile(self.latencies_ms, 99),
                "providers": dict(self.providers)}


def percentile(values: deque[float] | list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return round(ordered[index], 3)

"""In-process endpoint choice for direct mode: round robin, with a short memory of endpoints that refused.

Pure and thread-safe. The set comes from the subscription; a failed endpoint is skipped for ``EJECT_SECONDS``
(unless nothing else is left), which covers the time the registry needs to withdraw a crashed publisher.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Collection, Sequence
from typing import Final

EJECT_SECONDS: Final = 3.0  # longer than a registry's withdraw grace for a dropped publisher stream


class RoundRobin:
    def __init__(self, eject_seconds: float = EJECT_SECONDS) -> None:
        self._counter = itertools.count()
        self._eject_seconds = eject_seconds
        self._ejected: dict[str, float] = {}
        self._lock = threading.Lock()

    def pick(self, addresses: Sequence[str], exclude: Collection[str] = ()) -> str | None:
        """The next address not in ``exclude``, preferring ones that have not failed recently."""
        candidates = [a for a in addresses if a not in exclude]
        if not candidates:
            return None
        now = time.monotonic()
        with self._lock:
            if self._ejected:
                self._ejected = {a: until for a, until in self._ejected.items() if until > now}
            healthy = [a for a in candidates if a not in self._ejected] or candidates
        return healthy[next(self._counter) % len(healthy)]

    def eject(self, address: str) -> None:
        with self._lock:
            self._ejected[address] = time.monotonic() + self._eject_seconds

    def ejected(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [a for a, until in self._ejected.items() if until > now]

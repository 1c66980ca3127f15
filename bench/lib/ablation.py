"""Telemetry cut out of this tree's sidecars, for one measurement: what issue 5's telemetry costs.

Not a configuration a user can run: ``plexus2b`` (bench/http1.py) starts the same two sidecars as plexus2
with a ``sitecustomize`` module on their PYTHONPATH that, before the sidecar starts, replaces the end of an
HTTP/1.1 exchange with the skeleton's per-service record (``ServiceStats.record``: status class and
duration histogram, what the skeleton counted by default) and makes the tracer write no trace lines. No
Istio series, recent ring, access log, trace context or span is left on the path. Each process that applied
it leaves a marker file, so the bench can tell that it took.

``prepare(..., cut=...)`` cuts one part only, for bench/telemetry_parts.py: ``"ends"`` (the end of an
exchange is the skeleton's record; the trace lines are still written and followed) or ``"trace"`` (no trace
lines; the ends are this tree's).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Final

PARTS: Final = ("ends", "trace")  # what prepare can cut

_HEAD: Final = '''
"""bench/lib/ablation.py: HTTP/1.1 telemetry cut down to the skeleton's per-service record."""
import os
from pathlib import Path

from plexus.proxy import tracing
from plexus.transport import http_exchange
'''
_CUT_ENDS: Final = '''


def _ended(self, now, reason, flags):
    route = self.route
    if route is not None:
        route.stats.record(self.status, (now - self.started) * 1000.0)


http_exchange.Exchange._ended = _ended
'''
_CUT_TRACE: Final = '''
tracing.Tracer.fresh_lines = lambda self: b""
'''
_MARK: Final = '''
Path(__file__).with_name(f"applied-{os.getpid()}").touch()
'''
SITECUSTOMIZE: Final = _HEAD + _CUT_ENDS + _CUT_TRACE + _MARK  # both parts cut: plexus2b


def prepare(directory: Path, cut: Collection[str] = PARTS) -> Path:
    """A directory holding the ``sitecustomize`` module that cuts ``cut`` (both parts by default): put it
    first on the sidecars' PYTHONPATH."""
    unknown = set(cut) - set(PARTS)
    if unknown:
        raise ValueError(f"ablation cuts {', '.join(PARTS)}; not {', '.join(sorted(unknown))}")
    text = _HEAD + (_CUT_ENDS if "ends" in cut else "") + (_CUT_TRACE if "trace" in cut else "") + _MARK
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(text)
    return directory


def applied(directory: Path) -> int:
    """How many processes applied it (their marker files)."""
    return len(list(directory.glob("applied-*")))

"""Text output for the observability commands: aligned tables and the numbers in them, as linkerd prints them.

Pure functions (no typer, no I/O), so the commands' output is tested on values built in the test. Numbers:
success ``99.50%``, rates ``12.3`` (requests per second), latencies ``3ms`` (``0.4ms`` under a millisecond,
``1.2s`` from ten seconds up), and ``-`` where there is nothing to show (no requests in the window).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from typing import Final

NOTHING: Final = "-"
COLUMN_GAP: Final = "   "  # three spaces, as kubectl and linkerd separate columns
LONG_LATENCY_MS: Final = 10_000.0  # from here on seconds read better than a five-digit millisecond count
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell (``right``: indexes of columns aligned right, for numbers)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(COLUMN_GAP.join(cells).rstrip())
    return "\n".join(lines)


def percent(rate: float, requests: int | None = None) -> str:
    """``0.995`` -> ``99.50%``; ``-`` when there were no requests (a rate of nothing is not 100%)."""
    if requests == 0 or not math.isfinite(rate):
        return NOTHING
    return f"{rate * 100:.2f}%"


def rps(rate: float) -> str:
    """Requests per second with one decimal: ``12.3``; ``0.0`` is shown (an idle service is news)."""
    return f"{rate:.1f}" if math.isfinite(rate) else NOTHING


def millis(value: float, requests: int | None = None) -> str:
    """A latency: ``3ms``, ``250ms``, ``0.4ms`` under one millisecond, ``12.5s`` for long ones."""
    if requests == 0 or not math.isfinite(value) or value < 0:
        return NOTHING
    if value >= LONG_LATENCY_MS:
        return f"{value / 1000:.1f}s"
    if value >= 1.0 or value == 0:
        return f"{math.floor(value + 0.5)}ms"  # half up, as people round (round() goes to even)
    return f"{value:.1f}ms"


def meshed(count: int, instances: int) -> str:
    """``2/3``: instances behind a reporting sidecar of all the registry holds (``2/?``: unknown)."""
    return f"{count}/{instances}" if instances else f"{count}/?"


def clock(unix: float) -> str:
    """Local wall-clock time with milliseconds, as a log line starts: ``14:03:07.125``."""
    if unix <= 0:
        return NOTHING
    whole = time.localtime(unix)
    return time.strftime("%H:%M:%S", whole) + f".{int((unix % 1) * 1000):03d}"


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``500ms``, ``2m``, ``1h`` or a bare number of seconds; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 500ms, 2m")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r}: must be longer than zero")
    return seconds


def one_line(text: str, limit: int = 160) -> str:
    """A multi-line error folded into one line, cut at ``limit`` characters."""
    flat = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."

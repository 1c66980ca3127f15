"""Durations as Istio's YAML writes them: protobuf Duration text (``"1s"``, ``"0.5s"``) and Go's duration form
that Istio also takes (``"100ms"``, ``"2m"``, ``"1h30m"``). Pure: text in, seconds out, ValueError with a
message a user can act on.
"""

from __future__ import annotations

import re
from typing import Final

UNIT_SECONDS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
# One "<number><unit>" part; units longest first so "ms" is not read as "m" then "s".
_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
MIN_DURATION: Final = 1e-3  # Envoy's timers have millisecond resolution; Istio refuses less than 1ms
MAX_DURATION: Final = 24 * 3600.0  # a day: a longer request timeout or ejection is a typo, not a choice


def parse_duration(text: str) -> float:
    """Seconds in ``text`` ("1s", "0.5s", "100ms", "2m", "1h30m"); ValueError if it is not a duration.
    The sign is the caller's concern: "-1s" is refused here as not a duration of the accepted form."""
    raw = text.strip()
    if not raw:
        raise ValueError("empty: give a duration such as '1s' or '100ms'")
    if raw.startswith("-"):
        raise ValueError(f"{text!r} is negative")
    if re.fullmatch(r"[+]?\d+(?:\.\d*)?", raw):
        raise ValueError(f"{text!r} has no unit: write e.g. '{raw.lstrip('+')}s' (units h, m, s, ms)")
    total = 0.0
    pos = 0
    while pos < len(raw):
        part = _PART.match(raw, pos)
        if part is None:
            raise ValueError(f"{text!r} is not a duration such as '1s', '0.5s', '100ms', '2m', '1h'")
        total += float(part.group(1)) * UNIT_SECONDS[part.group(2)]
        pos = part.end()
    return total


def format_duration(seconds: float) -> str:
    """A short form of ``seconds`` that parse_duration reads back ("1h", "2m", "1.5s", "100ms")."""
    for unit in ("h", "m", "s"):
        count = seconds / UNIT_SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"

"""The C versions of the HTTP/1.1 telemetry's per-request loops (``plexus.core._speedups``), when built.

``pip install`` builds them (setup.py) where a C compiler is found; elsewhere, or with
``PLEXUS_NO_SPEEDUPS=1`` in the environment (to compare, or to rule them out), every name below is None
and the callers run their Python versions, which stay the reference: tests/core/test_speedups.py runs both
over the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

# (see _speedups.c for what each does, and which Python function it stands for)
access_lines: Callable[[list[Any], float, Callable[[int], bytes]], bytes | None] | None = None
fresh_blocks: Callable[[bytes, int, bytes, bytes], list[bytes]] | None = None
known_block: Callable[[bytes, bytes, bytes, int, int, int, bytes, bytes], bytes | None] | None = None
block_passes: Callable[[bytes], bool] | None = None
journal_setup: Callable[[type, type, type, type, type, type, int], None] | None = None
journal_end: Callable[[Any, float, str, str], bool] | None = None

# Whether the C paths are wanted at all (plexus.sidecar.access_log's O_DIRECT writer asks this too).
WANTED: bool = os.environ.get("PLEXUS_NO_SPEEDUPS", "") in ("", "0")

if WANTED:
    try:
        from plexus.core import _speedups
    except ImportError:  # not built here: the Python paths do the same
        pass
    else:
        access_lines = _speedups.access_lines
        fresh_blocks = _speedups.fresh_blocks
        known_block = _speedups.known_block
        block_passes = _speedups.block_passes
        journal_setup = _speedups.journal_setup
        journal_end = _speedups.journal_end


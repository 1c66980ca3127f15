"""The ready file: how a Plexus process tells whoever started it that it listens, and where.

Every long-running command takes ``--ready-file PATH``. Once it listens it writes a JSON object there naming
each bound address (``{"pid": 123, "listen": "127.0.0.1:40123", ...}``), atomically, so a reader never sees
half a file. Tests and supervisors bind port 0 and read the real ports here instead of guessing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_ready_file(path: str | os.PathLike[str], info: Mapping[str, Any]) -> None:
    """Write ``info`` plus this process's pid to ``path`` atomically (temp file, then rename)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **info}))
    os.replace(tmp, target)

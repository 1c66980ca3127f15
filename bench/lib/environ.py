"""Environment variables set only while something starts (the processes it starts inherit them)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def set_while(env: Mapping[str, str]) -> Iterator[None]:
    """``env`` in os.environ inside the block; each name's old value (or absence) back afterwards."""
    old = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

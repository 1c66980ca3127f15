"""The control plane's resource store: every applied resource as its YAML text, and the policy version.

One JSON file in the data dir (``format`` 1)::

    {"format": 1, "saved_at_us": 1764100000000000, "version": 1764100000000001,
     "resources": [{"kind": "VirtualService", "namespace": "default", "name": "reviews",
                    "yaml": "apiVersion: ...", "source": "routes.yaml:1", "version": 1764100000000001}]}

The store keeps text, not parsed objects: the control plane parses it again at start, so a store written by
an older Plexus is validated by the newer one. Written to ``<path>.tmp``, fsynced, then renamed over
``<path>``: a crash leaves the old or the new file, never a torn one. Without a data dir nothing is kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from plexus.core.errors import ConfigError
from plexus.stores.durable_file import write_atomically

FORMAT: Final = 1
FILE_NAME: Final = "policy-store.json"


@dataclass(frozen=True, slots=True)
class StoredResource:
    kind: str
    namespace: str
    name: str
    yaml: str  # the document as applied
    source: str  # file:line it came from
    version: int  # the policy version that last changed it


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    version: int
    resources: tuple[StoredResource, ...]


def _to_json(stored: StoredPolicy) -> bytes:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "saved_at_us": time.time_ns() // 1000,
        "version": stored.version,
        "resources": [
            {
                "kind": r.kind,
                "namespace": r.namespace,
                "name": r.name,
                "yaml": r.yaml,
                "source": r.source,
                "version": r.version,
            }
            for r in stored.resources
        ],
    }
    return orjson.dumps(doc)


def write_policy(path: Path, stored: StoredPolicy) -> None:
    write_atomically(path, _to_json(stored))


def read_policy(path: Path) -> StoredPolicy | None:
    """The stored policy at ``path``, or None when there is none. A corrupt file: a ConfigError naming it."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = orjson.loads(raw)
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
        resources = tuple(
            StoredResource(
                kind=str(r["kind"]),
                namespace=str(r["namespace"]),
                name=str(r["name"]),
                yaml=str(r["yaml"]),
                source=str(r.get("source", "")),
                version=int(r.get("version", 0)),
            )
            for r in doc.get("resources", [])
        )
        version = int(doc["version"])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(
            str(path), f"unreadable policy store ({exc}); move it away to start empty"
        ) from None
    return StoredPolicy(version, resources)


class PolicyStore:
    """The file store; without ``data_dir`` it remembers nothing across restarts."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self._path = data_dir / FILE_NAME if data_dir is not None else None
        self._lock = asyncio.Lock()  # one write at a time, in order

    @property
    def path(self) -> Path | None:
        return self._path

    async def load(self) -> StoredPolicy | None:
        if self._path is None:
            return None
        return await asyncio.to_thread(read_policy, self._path)

    async def save(self, version: int, resources: Sequence[StoredResource]) -> None:
        """Durable once this returns (with a data dir)."""
        if self._path is None:
            return
        stored = StoredPolicy(version, tuple(resources))
        async with self._lock:
            await asyncio.to_thread(write_policy, self._path, stored)

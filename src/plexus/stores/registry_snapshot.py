"""The JSON snapshot file of the memory registry store: format, atomic write, tolerant read.

Layout (``format`` 1)::

    {"format": 1, "saved_at_us": 1764100000000000,
     "versions": {"orders": 1764100000000001},
     "publishers": {"sidecar-a": [{"service": "orders", "address": "10.0.0.1:20881", ...}]}}

Written to ``<path>.tmp``, fsynced, then renamed over ``<path>``: a crash leaves the old or the new file,
never a torn one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import orjson

from plexus.core.errors import ConfigError
from plexus.discovery.model import Instance
from plexus.stores.durable_file import write_atomically
from plexus.stores.registry_store import StoredRegistry

FORMAT: Final = 1
FILE_NAME: Final = "registry-snapshot.json"


def instance_to_json(inst: Instance) -> dict[str, Any]:
    return {
        "service": inst.service,
        "address": inst.address,
        "protocol": inst.protocol,
        "version": inst.version,
        "labels": dict(inst.labels),
        "zone": inst.zone,
        "unit": inst.unit,
        "weight": inst.weight,
        "identity": inst.identity,
        "mtls": inst.mtls,
        "workload": inst.workload,
        "meshed": inst.meshed,
    }


def instance_from_json(data: dict[str, Any]) -> Instance:
    return Instance(
        service=str(data["service"]),
        address=str(data["address"]),
        protocol=str(data.get("protocol", "http")),
        version=str(data.get("version", "")),
        labels={str(k): str(v) for k, v in data.get("labels", {}).items()},
        zone=str(data.get("zone", "")),
        unit=str(data.get("unit", "")),
        weight=int(data.get("weight", 100)),
        identity=str(data.get("identity", "")),
        mtls=bool(data.get("mtls", False)),
        workload=str(data.get("workload", "")),
        meshed=bool(data.get("meshed", False)),
    )


def write_snapshot(path: Path, stored: StoredRegistry) -> None:
    doc = {
        "format": FORMAT,
        "saved_at_us": time.time_ns() // 1000,
        "versions": dict(stored.versions),
        "publishers": {pid: [instance_to_json(i) for i in insts] for pid, insts in stored.publishers.items()},
    }
    write_atomically(path, orjson.dumps(doc))


def read_snapshot(path: Path) -> StoredRegistry | None:
    """The snapshot at ``path``, or None when there is none. A corrupt file is a ConfigError naming it."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = orjson.loads(raw)
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
        versions = {str(k): int(v) for k, v in doc.get("versions", {}).items()}
        publishers = {
            str(pid): tuple(instance_from_json(i) for i in insts)
            for pid, insts in doc.get("publishers", {}).items()
        }
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(
            str(path), f"unreadable registry snapshot ({exc}); move it away to start empty"
        ) from None
    return StoredRegistry(publishers, versions)

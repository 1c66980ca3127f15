"""Importing the SDK stays light: no grpc, no asyncio, no httpx, no data plane.

Checked in a fresh interpreter, by what is loaded, not by time."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN_PREFIXES = (
    "grpc", "asyncio", "uvloop", "httpx", "httpcore", "pydantic", "google.protobuf",
    "plexus.sidecar", "plexus.proxy", "plexus.transport", "plexus.codec", "plexus.clients", "plexus.registry",
    "plexus.stores", "plexus.proto", "plexus.cli",
)


def _modules_after(code: str) -> list[str]:
    script = code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                         check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def _forbidden(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in FORBIDDEN_PREFIXES)]


def test_import_sdk_loads_no_heavy_module() -> None:
    modules = _modules_after("import plexus.sdk")
    assert "plexus.sdk" in modules
    assert _forbidden(modules) == []


def test_from_plexus_import_sdk_and_use_its_names() -> None:
    modules = _modules_after("from plexus import sdk\nassert callable(sdk.connect) and sdk.Subscription")
    assert _forbidden(modules) == []


def test_the_check_would_catch_grpc() -> None:
    # The guard itself must be able to fail: importing the registry client does load grpc.
    modules = _modules_after("import plexus.clients.registry")
    assert "grpc" in _forbidden(modules)

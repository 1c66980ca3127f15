"""`plexus sidecar` validates, then execs the lean serving process: same PID, none of the CLI stack mapped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sidecar_helpers import Group, admin, start_registry, start_sidecar

from plexus.config.sidecar_settings import RESOLVED_ENV

# Shared objects the serving process must not map: pydantic's core, PyYAML's C extension and grpcio's core
# (the sidecar speaks to the registry through plexus.clients.grpc_h2; grpcio costs ~8 MB and ~9 threads).
UNWANTED_OBJECTS = ("pydantic_core", "/yaml/_yaml", "cygrpc")
# Modules the serving process must not import (the CLI stack, the bootstrap's validation, grpcio).
UNWANTED_MODULES = ("pydantic", "pydantic_core", "yaml", "typer", "click", "rich", "grpc")


@pytest.fixture
def group() -> Iterator[Group]:
    g = Group()
    try:
        yield g
    finally:
        g.stop_all()


def _mapped_objects(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split()[5] for line in maps if len(line.split()) > 5}


def test_sidecar_execs_into_its_entry_point_keeping_the_pid(group: Group) -> None:
    registry = start_registry(group).address("listen")
    sidecar = start_sidecar(group, registry)
    pid = sidecar.pid

    assert sidecar.info["pid"] == pid  # the ready file is written by the process the test started, after exec
    with open(f"/proc/{pid}/cmdline") as f:
        cmdline = f.read().split("\0")
    assert cmdline[1:3] == ["-m", "plexus.sidecar"], cmdline
    assert os.path.realpath(cmdline[0]) == os.path.realpath(sys.executable)

    objects = _mapped_objects(pid)
    # the check reads the right process: the exec'd sidecar maps the interpreter and uvloop
    assert any("uvloop" in path for path in objects), sorted(objects)
    for unwanted in UNWANTED_OBJECTS:
        assert not [path for path in objects if unwanted in path], unwanted

    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read().split(b"\0")
    assert b"MALLOC_ARENA_MAX=1" in environ  # one malloc arena for the sidecar's threads (RSS)

    dump = admin(sidecar, "/config_dump").json()
    assert dump["bootstrap"]["registry"] == {"value": registry, "source": "flag"}
    assert dump["bootstrap"]["namespace"] == {"value": "default", "source": "default"}

    sidecar.signal(signal.SIGTERM)
    assert sidecar.proc.wait(timeout=15) == 0  # the exec'd process answers the signal and exits 0


def test_a_bad_config_still_exits_2_before_exec(group: Group) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "plexus", "sidecar", "--lb", "fastest"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--lb" in result.stderr


def test_serving_modules_import_no_cli_or_validation_stack() -> None:
    code = (
        "import sys, json, plexus.sidecar.app, plexus.sidecar.__main__, plexus.config.sidecar_settings; "
        f"print(json.dumps([m for m in {list(UNWANTED_MODULES)!r} if m in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("value", [None, "", "{not json", '{"settings": {}, "sources": {}, "file": null}'])
def test_entry_point_refuses_without_resolved_settings(value: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != RESOLVED_ENV}
    if value is not None:
        env[RESOLVED_ENV] = value
    result = subprocess.run(
        [sys.executable, "-m", "plexus.sidecar"], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 2
    assert "plexus sidecar" in result.stderr and RESOLVED_ENV in result.stderr

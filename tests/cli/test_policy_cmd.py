"""`plexus apply, get, delete, validate, proxy-status` against a real `plexus control`: output, exit codes.

Most commands run in-process through typer's CliRunner (the same code path, without an interpreter start per
call); stdin and the environment variable are checked through a real `python -m plexus`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from plexus.cli.main import app
from plexus.cli.policy_cmd import EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_USAGE, resolve_kind
from plexus.clients.control import ControlClient
from plexus.testing.procs import ManagedProcess, free_port

DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hello}
spec:
  host: hello
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""
VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hello}
spec:
  hosts: [hello]
  http:
  - route:
    - {destination: {host: hello, subset: v1}, weight: 90}
    - {destination: {host: hello, subset: v2}, weight: 10}
"""
BAD = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad}
spec:
  hosts: [hello]
  http:
  - route:
    - {destination: {host: hello}, weight: 30}
    - {destination: {host: other}, weight: 30}
    bogus: 1
"""
TO_V9 = VS.replace("subset: v2", "subset: v9")


@pytest.fixture(scope="module")
def control_plane() -> Iterator[str]:
    """One control plane for the module (its start is the slow part); each test leaves it empty."""
    proc = ManagedProcess.plexus(
        ["control", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--warmup", "0"]
    )
    try:
        yield str(proc.address("listen"))
    finally:
        proc.stop()


@pytest.fixture
def control(control_plane: str) -> Iterator[str]:
    yield control_plane
    client = ControlClient(control_plane)
    for resource in client.get().resources:
        client.delete(resource.ref.kind, resource.ref.name, resource.ref.namespace)


def cli(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(app, list(args), input=stdin)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_kind_names_as_kubectl_takes_them() -> None:
    for text in ("vs", "VS", "virtualservice", "VirtualServices", "virtualservices"):
        assert resolve_kind(text) == "VirtualService"
    assert resolve_kind("dr") == resolve_kind("destinationrules") == "DestinationRule"
    assert resolve_kind("ratelimitpolicies") == resolve_kind("rlp") == "RateLimitPolicy"
    assert resolve_kind("ur") == "UnitRouting" and resolve_kind("trafficshifts") == "TrafficShift"
    assert resolve_kind("pods") is None


def test_apply_get_delete(control: str, tmp_path: Path) -> None:
    both = write(tmp_path, "both.yaml", DR + "---\n" + VS)
    created = cli("apply", "-f", both, "--control", control)
    assert created.exit_code == 0, created.output
    assert created.stdout.splitlines() == ["destinationrule/hello created", "virtualservice/hello created"]
    unchanged = cli("apply", "-f", both, "--control", control)
    assert unchanged.stdout.splitlines() == [
        "destinationrule/hello unchanged",
        "virtualservice/hello unchanged",
    ]
    changed = cli("apply", "-f", write(tmp_path, "vs.yaml", VS.replace("90", "80").replace("10", "20")),
                  "--control", control)  # fmt: skip
    assert changed.exit_code == 0 and changed.stdout.splitlines() == ["virtualservice/hello configured"]

    table = cli("get", "vs", "--control", control)
    assert table.exit_code == 0, table.output
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "NAMESPACE", "VERSION", "SOURCE"]
    assert row.split()[:2] == ["hello", "default"] and row.split()[3] == f"{tmp_path / 'vs.yaml'}:1"
    everything = cli("get", "all", "--control", control)
    names = [line.split()[0] for line in everything.stdout.splitlines()[1:]]
    assert sorted(names) == ["destinationrule/hello", "virtualservice/hello"]
    as_yaml = cli("get", "VirtualServices", "hello", "-o", "yaml", "--control", control)
    assert "kind: VirtualService" in as_yaml.stdout and "weight: 80" in as_yaml.stdout
    as_json = json.loads(cli("get", "dr", "hello", "-o", "json", "--control", control).stdout)
    assert as_json["metadata"]["name"] == "hello" and len(as_json["spec"]["subsets"]) == 2
    listed = json.loads(cli("get", "dr", "-o", "json", "--control", control).stdout)
    assert [item["kind"] for item in listed["items"]] == ["DestinationRule"]

    missing = cli("get", "vs", "nothere", "--control", control)
    assert missing.exit_code == EXIT_INVALID and 'virtualservice "nothere" not found' in missing.output
    assert cli("get", "pods", "--control", control).exit_code == EXIT_USAGE
    assert cli("get", "vs", "-o", "wide", "--control", control).exit_code == EXIT_USAGE

    deleted = cli("delete", "VirtualService", "hello", "--control", control)
    assert deleted.exit_code == 0 and deleted.stdout.strip() == "virtualservice/hello deleted"
    again = cli("delete", "vs", "hello", "--control", control)
    assert again.exit_code == EXIT_INVALID and 'virtualservice "hello" not found' in again.output
    assert cli("get", "vs", "--control", control).stdout == ""


def test_apply_refuses_an_invalid_file_with_every_problem_and_stores_nothing(
    control: str, tmp_path: Path
) -> None:
    bad = write(tmp_path, "bad.yaml", BAD)
    result = cli("apply", "-f", bad, "--control", control)
    assert result.exit_code == EXIT_INVALID
    assert f"{bad}:8: VirtualService bad: spec.http[0].route: weights sum to 60, not 100" in result.output
    assert f"{bad}:10: VirtualService bad: spec.http[0].bogus: unknown field" in result.output
    assert cli("get", "vs", "bad", "--control", control).exit_code == EXIT_INVALID


def test_validate_alone_and_against_the_stored_set(control: str, tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", BAD)
    alone = cli("validate", "-f", bad)
    assert alone.exit_code == EXIT_INVALID
    assert [line.split(": ")[0] for line in alone.output.splitlines()] == [f"{bad}:8", f"{bad}:10"]
    good = write(tmp_path, "good.yaml", DR + "---\n" + VS)
    ok = cli("validate", "-f", good, "-f", good)
    assert ok.exit_code == 0 and ok.stdout.splitlines() == [f"{good}: valid"] * 2

    vs_only = write(tmp_path, "vs.yaml", VS)
    assert cli("validate", "-f", vs_only).exit_code == EXIT_INVALID  # alone: no DestinationRule has v1
    assert cli("apply", "-f", write(tmp_path, "dr.yaml", DR), "--control", control).exit_code == 0
    stored = cli("validate", "-f", vs_only, "--control", control)  # the stored DestinationRule defines v1
    assert stored.exit_code == 0, stored.output
    assert "checked against the control plane" in stored.stdout
    to_v9 = cli("validate", "-f", write(tmp_path, "v9.yaml", TO_V9), "--control", control)
    assert to_v9.exit_code == EXIT_INVALID and "v9" in to_v9.output
    # A problem of the file itself and one against the stored set come in the same pass.
    both_bad = TO_V9.replace("hosts: [", 'hosts: ["bad host", ')
    both = cli("validate", "-f", write(tmp_path, "both.yaml", both_bad), "--control", control)
    assert both.exit_code == EXIT_INVALID
    assert "v9" in both.output and "bad host" in both.output, both.output
    assert cli("get", "vs", "--control", control).stdout == ""  # a dry run stores nothing


def test_proxy_status_with_no_sidecars(control: str) -> None:
    table = cli("proxy-status", "--control", control)
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[0].startswith("control plane policy version ")
    assert "no sidecars connected" in table.stdout
    document = json.loads(cli("proxy-status", "-o", "json", "--control", control).stdout)
    assert document["proxies"] == [] and document["version"] > 0


def test_an_unreachable_control_plane_is_named_with_exit_3() -> None:
    address = f"127.0.0.1:{free_port()}"
    for args in (("apply", "-f", "-"), ("get", "vs"), ("delete", "vs", "x"), ("proxy-status",)):
        result = cli(*args, "--control", address, stdin=VS)
        assert result.exit_code == EXIT_UNAVAILABLE, (args, result.output)
        assert f"cannot reach the control plane at {address}" in result.output
    assert cli("get", "vs", "--control", "nonsense").exit_code == EXIT_USAGE


def test_stdin_and_the_environment_through_the_real_command(control: str) -> None:
    env = {**os.environ, "PLEXUS_CONTROL": control}
    command = [sys.executable, "-m", "plexus"]
    applied = subprocess.run(
        [*command, "apply", "-f", "-"], input=DR, env=env, capture_output=True, text=True, timeout=60
    )
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == "destinationrule/hello created\n"
    status = subprocess.run([*command, "proxy-status"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "no sidecars connected" in status.stdout

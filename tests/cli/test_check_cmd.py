"""`plexus check`: each check on what the control plane answers (``control_pb2`` messages built here, the
command's input), the ✔/✘ output with hints, ``-o json``, and the exit codes."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from plexus.cli import check_cmd
from plexus.cli.check_cmd import Check
from plexus.cli.control_access import EXIT_UNAVAILABLE
from plexus.cli.main import app
from plexus.proto import control_pb2 as pb
from plexus.testing.procs import free_port

INFO = pb.InfoResponse(
    version="0.1.0",
    admin_url="http://127.0.0.1:15401/",
    registry_embedded=True,
    policy_version=7,
    sidecars=3,
    uptime_seconds=125,
)


def proxy(
    name: str,
    state: str = "SYNCED",
    version: str = "0.1.0",
    error: str = "",
    nacked: int = 0,
    connected: float = 30.0,
) -> pb.ProxyStatus:
    return pb.ProxyStatus(
        node=pb.Node(id=name, workload=name.split("-")[0], sidecar_version=version),
        sent_version=7,
        acked_version=7 if state == "SYNCED" else 6,
        state=state,
        last_error=error,
        nacked_version=nacked,
        connected_seconds=connected,
    )


def test_a_healthy_mesh_passes_every_check() -> None:
    proxies = [
        proxy("a-1"),
        proxy("b-1"),
        proxy("gone-1", state="STALE", connected=0),
    ]  # a gone row is no news
    checks = [
        check_cmd.reachable("127.0.0.1:15400", INFO),
        check_cmd.policy(7, 2),
        check_cmd.registry_result(3, "embedded in the control plane"),
        check_cmd.connected(proxies),
        check_cmd.synced(proxies, 7),
        check_cmd.versions(INFO, proxies),
        check_cmd.nacks(proxies),
    ]
    assert all(c.ok for c in checks), checks
    assert checks[0].message == "plexus 0.1.0 at 127.0.0.1:15400, up 2m, registry embedded"
    assert checks[1].message == "policy version 7, 2 resources"
    assert checks[3].message == "2 sidecars connected"
    assert checks[4].message == "2 of 2 SYNCED at policy version 7"
    text = check_cmd.render("127.0.0.1:15400", checks)
    assert (
        text.splitlines()[2]
        == "✔ control plane reachable: plexus 0.1.0 at 127.0.0.1:15400, up 2m, registry embedded"
    )
    assert "✘" not in text and "hint:" not in text
    assert text.splitlines()[-1] == "✔ all 7 checks passed"


def test_a_nack_and_an_old_sidecar_fail_with_names_and_hints() -> None:
    error = "policy.yaml:3: UnitRouting cells: spec.scope: unit scope needs --unit\nsecond line"
    proxies = [
        proxy("a-1"),
        proxy("b-1", state="NACKED", error=error, nacked=7),
        proxy("c-1", version="0.0.9"),
    ]
    synced = check_cmd.synced(proxies, 7)
    assert not synced.ok
    assert synced.message.startswith("1 of 3 not synced: b-1 (NACKED: policy.yaml:3: UnitRouting cells:")
    assert "| second line" in synced.message  # one line
    nacks = check_cmd.nacks(proxies)
    assert not nacks.ok and nacks.message.startswith("b-1 NACKed version 7: policy.yaml:3:")
    versions = check_cmd.versions(INFO, proxies)
    assert not versions.ok and versions.message.endswith("c-1 (0.0.9)")
    text = check_cmd.render("ctl:1", [check_cmd.reachable("ctl:1", INFO), synced, versions, nacks])
    lines = text.splitlines()
    assert lines[3].startswith("✘ sidecars synced: 1 of 3 not synced: b-1")
    assert lines[4].startswith("    hint: `plexus proxy-status` shows")
    assert lines[5].startswith("✘ sidecar versions match the control plane: 1 of 3 run another version")
    assert lines[7].startswith("✘ no sidecar NACKed: b-1 NACKed version 7")
    assert lines[8].startswith("    hint: the sidecar keeps serving its last good policy")
    assert lines[-1] == "✘ 3 of 4 checks failed"


def test_nothing_connected_and_registry_down() -> None:
    nobody = check_cmd.connected([proxy("gone-1", connected=0)])
    assert not nobody.ok and nobody.message == "no sidecar is connected to the control plane"
    assert "plexus sidecar --control" in nobody.hint
    down = check_cmd.registry_result(None, "not embedded; --registry r:1", "List failed at r:1: UNAVAILABLE")
    assert not down.ok and down.message == "not embedded; --registry r:1: List failed at r:1: UNAVAILABLE"


def test_many_failures_are_counted_not_all_named() -> None:
    proxies = [proxy(f"s{i}-1", state="STALE") for i in range(8)]
    message = check_cmd.synced(proxies, 7).message
    assert message.startswith("8 of 8 not synced: s0-1 (STALE)") and message.endswith("and 3 more")


def test_json_document() -> None:
    checks = [
        Check("control plane reachable", True, "up"),
        Check("sidecars connected", False, "none", "start"),
    ]
    document = json.loads(check_cmd.as_json("ctl:1", checks))
    assert document == {
        "control": "ctl:1",
        "ok": False,
        "checks": [
            {"name": "control plane reachable", "ok": True, "message": "up", "hint": ""},
            {"name": "sidecars connected", "ok": False, "message": "none", "hint": "start"},
        ],
    }


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_unreachable_control_plane_fails_the_first_check_and_exits_3() -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    result = cli("check", "--control", nowhere)
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    lines = result.stdout.splitlines()
    assert lines[2].startswith(f"✘ control plane reachable: cannot reach the control plane at {nowhere}")
    assert (
        lines[3] == f"    hint: start it with `plexus control --listen {nowhere}`, or point --control (or "
        "PLEXUS_CONTROL) at it"
    )
    as_json = cli("check", "-o", "json", "--control", nowhere)
    assert as_json.exit_code == EXIT_UNAVAILABLE
    document = json.loads(as_json.stdout)
    assert document["ok"] is False and [c["name"] for c in document["checks"]] == ["control plane reachable"]

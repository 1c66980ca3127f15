"""The sidecar bootstrap: precedence flag > env > file > default, and errors naming the bad value's source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from plexus.config import BootstrapError, resolve_bootstrap
from plexus.config.bootstrap import FIELDS, env_name, flag_name


def test_precedence_flag_over_env_over_file_over_default() -> None:
    text = "zone: file-zone\nunit: file-unit\nworkload: file-wl\nlb: random\n"
    env = {"PLEXUS_ZONE": "env-zone", "PLEXUS_UNIT": "env-unit", "PLEXUS_UNRELATED": "x"}
    flags = {"zone": "flag-zone"}
    resolved = resolve_bootstrap(flags, env, text, "side.yaml")
    config = resolved.config
    assert (config.zone, config.unit, config.workload, config.lb) == (
        "flag-zone",
        "env-unit",
        "file-wl",
        "random",
    )
    assert config.namespace == "default" and config.registry == "127.0.0.1:15200"
    assert resolved.sources["zone"] == "flag"
    assert resolved.sources["unit"] == "env"
    assert resolved.sources["workload"] == "file"
    assert resolved.sources["namespace"] == "default"
    dump = resolved.dump()
    assert dump["unit"] == {"value": "env-unit", "source": "env"}
    assert set(dump) == set(FIELDS)


def test_every_field_has_a_flag_and_an_env_variable() -> None:
    assert flag_name("app_address") == "--app-address"
    assert env_name("egress_ports") == "PLEXUS_EGRESS_PORTS"
    for field in FIELDS:
        env = {env_name(field): "bogus value ::"}
        try:
            resolved = resolve_bootstrap({}, env)
        except BootstrapError as exc:
            assert exc.problems[0][0] == env_name(field)
        else:  # free-text fields take any string
            assert resolved.sources[field] == "env"


def test_env_values_are_converted_and_checked() -> None:
    env = {
        "PLEXUS_CONNECT_TIMEOUT": "0.25",
        "PLEXUS_EGRESS_PORTS": "20000-20010",
        "PLEXUS_HASH_HEADER": "X-User",
    }
    config = resolve_bootstrap({}, env).config
    assert config.connect_timeout == 0.25
    assert config.to_settings().egress_port_range == (20000, 20010)
    assert config.hash_header == "x-user"


def test_yaml_unknown_field_names_file_line_and_field() -> None:
    text = "zone: z1\n\n# a comment\ningres: 127.0.0.1:1\n"
    with pytest.raises(BootstrapError) as info:
        resolve_bootstrap({}, {}, text, "/etc/plexus/side.yaml")
    where, message = info.value.problems[0]
    assert where == "/etc/plexus/side.yaml:4: ingres"
    assert "unknown field" in message


def test_yaml_bad_value_names_its_line() -> None:
    text = "zone: z1\nrequest_timeout: -3\n"
    with pytest.raises(BootstrapError) as info:
        resolve_bootstrap({}, {}, text, "s.yaml")
    assert info.value.problems[0][0] == "s.yaml:2: request_timeout"


def test_yaml_file_value_overridden_by_a_flag_is_still_well_formed() -> None:
    # a valid file value under a flag: the flag wins, nothing is reported
    resolved = resolve_bootstrap({"ingress": "127.0.0.1:7000"}, {}, "ingress: 127.0.0.1:6000\n", "s.yaml")
    assert resolved.config.ingress == "127.0.0.1:7000"


def test_yaml_that_is_not_a_mapping_or_not_yaml() -> None:
    with pytest.raises(BootstrapError) as info:
        resolve_bootstrap({}, {}, "- a\n- b\n", "list.yaml")
    assert info.value.problems[0][0].startswith("list.yaml:1")
    with pytest.raises(BootstrapError) as info:
        resolve_bootstrap({}, {}, "zone: a\nunit: [b\n", "broken.yaml")
    assert info.value.problems[0][0].startswith("broken.yaml:")


def test_bad_values_name_the_field_and_all_are_reported() -> None:
    with pytest.raises(BootstrapError) as info:
        resolve_bootstrap(
            {"ingress": "localhost", "lb": "fastest"},
            {"PLEXUS_DRAIN_TIME": "-1", "PLEXUS_EGRESS_PORTS": "9-3"},
        )
    wheres = [where for where, _ in info.value.problems]
    assert wheres == ["--ingress", "PLEXUS_EGRESS_PORTS", "--lb", "PLEXUS_DRAIN_TIME"]


def test_wildcard_ingress_needs_advertise() -> None:
    with pytest.raises(BootstrapError) as info:
        resolve_bootstrap({"ingress": "0.0.0.0:15006"}, {})
    where, message = info.value.problems[0]
    assert where == "--ingress" and "--advertise" in message
    env = {"PLEXUS_ADVERTISE": "10.1.2.3"}
    views = resolve_bootstrap({"ingress": "0.0.0.0:15006"}, env).config.to_settings()
    assert (views.advertise_host, views.advertise_port) == ("10.1.2.3", None)
    flags = {"ingress": "0.0.0.0:0", "advertise": "[fd00::1]:8443"}
    views = resolve_bootstrap(flags, {}).config.to_settings()
    assert (views.advertise_host, views.advertise_port) == ("fd00::1", 8443)


def _run_sidecar(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plexus", "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_cli_refuses_a_bad_yaml_field_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text("registry: 127.0.0.1:15200\nzone: z\nlb: fastest\n")
    result = _run_sidecar(["--config", str(config), "--api", "127.0.0.1:0"])
    assert result.returncode == 2, result.stderr
    assert f"{config}:3: lb" in result.stderr


def test_cli_refuses_bad_env_and_flag_values_with_exit_2() -> None:
    result = _run_sidecar(["--api", "127.0.0.1:0"], {"PLEXUS_HEALTH_INTERVAL": "0"})
    assert result.returncode == 2
    assert "PLEXUS_HEALTH_INTERVAL" in result.stderr
    result = _run_sidecar(["--ingress", "0.0.0.0:0", "--api", "127.0.0.1:0"])
    assert result.returncode == 2
    assert "--ingress" in result.stderr and "--advertise" in result.stderr
    result = _run_sidecar(["--connect-timeout", "soon"])
    assert result.returncode == 2 and "--connect-timeout" in result.stderr

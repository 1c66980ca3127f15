"""SidecarSettings: the pydantic-free copy of the validated bootstrap that the serving process receives."""

from __future__ import annotations

import json

import pytest

from plexus.config.bootstrap import FIELDS, SidecarBootstrap, resolve_bootstrap
from plexus.config.sidecar_settings import (
    SETTINGS_FIELDS,
    ResolvedSettings,
    SettingsDecodeError,
    SidecarSettings,
)
from plexus.core.address import HostPort

VIEWS = ("ingress_address", "app_host", "advertise_host", "advertise_port", "egress_port_range")


def test_same_fields_and_defaults_as_the_bootstrap_model() -> None:
    assert SETTINGS_FIELDS == FIELDS
    assert SidecarBootstrap().to_settings() == SidecarSettings()


@pytest.mark.parametrize(
    ("values", "views"),
    [
        ({}, (HostPort("127.0.0.1", 15006), "127.0.0.1", "127.0.0.1", None, None)),
        (
            {"ingress": "0.0.0.0:15006", "advertise": "10.0.0.7"},
            (HostPort("0.0.0.0", 15006), "127.0.0.1", "10.0.0.7", None, None),
        ),
        (
            {"ingress": "[::]:15006", "advertise": "[fd00::7]:20881", "app_address": "[::1]:8080"},
            (HostPort("::", 15006), "::1", "fd00::7", 20881, None),
        ),
        (
            {"app_address": "10.1.2.3:9000", "egress_ports": "20000-20010"},
            (HostPort("127.0.0.1", 15006), "10.1.2.3", "127.0.0.1", None, (20000, 20010)),
        ),
    ],
)
def test_parsed_views_of_validated_values(values: dict[str, object], views: tuple[object, ...]) -> None:
    model = SidecarBootstrap.model_validate(values)
    settings = model.to_settings()
    assert tuple(getattr(settings, view) for view in VIEWS) == views
    assert settings.to_dict() == model.model_dump()


def test_resolved_settings_round_trip_through_json_with_their_sources() -> None:
    resolved = resolve_bootstrap(
        {"registry": "10.0.0.1:15200", "drain_time": 0},
        {"PLEXUS_ZONE": "east", "PLEXUS_LB": "random"},
        "lb: weighted\nnamespace: shop\nconnect_timeout: 3\n",
        "side.yaml",
    )
    plain = resolved.settings()
    again = ResolvedSettings.from_json(plain.to_json())
    assert again == plain
    assert again.dump() == resolved.dump()
    assert again.file == "side.yaml"
    assert again.sources["registry"] == "flag" and again.sources["zone"] == "env"
    assert again.sources["namespace"] == "file" and again.sources["api"] == "default"
    assert again.settings.lb == "random"  # env beats file
    assert isinstance(again.settings.drain_time, float) and again.settings.drain_time == 0.0
    assert SidecarSettings.from_json(plain.settings.to_json()) == plain.settings


def _resolved_json(**changes: object) -> str:
    data = json.loads(resolve_bootstrap({}, {}).settings().to_json())
    for key, value in changes.items():
        data["settings"][key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("[1, 2]", "object"),
        ("{nope", "JSON"),
        ('{"settings": {}}', "keys"),
        (_resolved_json(colour="red"), "colour"),
        (_resolved_json(connect_timeout="fast"), "connect_timeout"),
        (_resolved_json(drain_time=True), "drain_time"),
        (_resolved_json(registry=None), "registry"),
        (_resolved_json(lb="fastest"), "lb"),
        ('{"settings": {}, "sources": {"registry": "flag"}, "file": null}', "sources"),
    ],
)
def test_from_json_refuses_what_to_json_never_writes(text: str, word: str) -> None:
    with pytest.raises(SettingsDecodeError, match=word):
        ResolvedSettings.from_json(text)


def test_settings_are_frozen_and_slotted() -> None:
    settings = SidecarSettings()
    with pytest.raises(AttributeError):
        settings.zone = "elsewhere"  # type: ignore[misc]
    assert not hasattr(settings, "__dict__")

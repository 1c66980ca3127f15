"""The sidecar's settings once validated: plain frozen dataclasses, JSON in and out.

``plexus.config.bootstrap`` (pydantic, YAML) validates the four sources once, in the CLI process; what it
produces is a ``SidecarSettings``, which the serving process (``python -m plexus.sidecar``) receives as JSON
and uses for its whole life. This module imports neither pydantic nor PyYAML, so the serving process never
maps them: that is its reason to exist (the sidecar's idle memory).

``from_json`` trusts its input to come from ``to_json`` of a validated config: it checks field names and types
(a mismatch means the CLI and the sidecar are of different versions) but not value ranges.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from plexus.core.address import HostPort, parse_host_port

LbPolicy = Literal["round_robin", "least_request", "random", "weighted", "ring_hash"]
LB_POLICIES: Final = get_args(LbPolicy)
WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})

# The environment variable that carries ``ResolvedSettings.to_json()`` from ``plexus sidecar`` to the process
# it execs (``python -m plexus.sidecar``); the serving process removes it from its own environment once read.
RESOLVED_ENV: Final = "PLEXUS_SIDECAR_RESOLVED"


class SettingsDecodeError(ValueError):
    """The resolved-settings JSON is not what ``to_json`` writes (a version mismatch or a hand-made value)."""


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """Everything the sidecar needs, validated. Same fields and defaults as ``SidecarBootstrap``."""

    registry: str = "127.0.0.1:15200"
    app_address: str = "127.0.0.1"
    ingress: str = "127.0.0.1:15006"
    advertise: str | None = None
    api: str = "127.0.0.1:15301"
    admin: str = "127.0.0.1:15300"
    egress: str = "127.0.0.1:15001"
    egress_ports: str | None = None
    zone: str = ""
    unit: str = ""
    workload: str = ""
    namespace: str = "default"
    lb: LbPolicy = "round_robin"
    hash_header: str | None = None
    connect_timeout: float = 1.0
    request_timeout: float = 15.0
    drain_time: float = 1.0
    health_interval: float = 1.0
    ready_file: str | None = None
    rpc_heartbeat_interval: float = 15.0
    rpc_heartbeat_timeout: float = 5.0
    mosn_compat: bool = False
    mosn_api: str = "127.0.0.1:13330"
    bolt_egress: str = "127.0.0.1:12220"
    routes: str | None = None
    control: str | None = None  # control plane HOST:PORT (plexus control); it serves the registry too
    # Telemetry writers (plexus.sidecar.access_log, plexus.sidecar.trace_export): access log PATH or "-"
    # (stdout), None = off; percent of new traces sampled; span export "file:PATH" | "otlp:URL" | "none",
    # None = the default (see plexus.sidecar.trace_export.DEFAULT_EXPORT).
    access_log: str | None = None
    trace_sample_percent: float = 1.0
    trace_export: str | None = None

    # Parsed views of the text fields, for the composition root.
    @property
    def ingress_address(self) -> HostPort:
        return parse_host_port(self.ingress)

    @property
    def app_host(self) -> str:
        return strip_port(self.app_address)

    @property
    def advertise_host(self) -> str:
        return strip_port(self.advertise) if self.advertise else self.ingress_address.host

    @property
    def advertise_port(self) -> int | None:
        """The advertised port when --advertise names one; None means "the bound ingress port"."""
        if self.advertise is None or strip_port(self.advertise) == self.advertise:
            return None
        return parse_host_port(self.advertise).port

    @property
    def egress_port_range(self) -> tuple[int, int] | None:
        if self.egress_ports is None:
            return None
        low, _, high = self.egress_ports.partition("-")
        return int(low), int(high)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SidecarSettings:
        unknown = set(data) - set(SETTINGS_FIELDS)
        if unknown:
            raise SettingsDecodeError(f"unknown settings: {', '.join(sorted(unknown))}")
        for name, value in data.items():
            _check_type(name, value)
        if "lb" in data and data["lb"] not in LB_POLICIES:
            raise SettingsDecodeError(f"lb: {data['lb']!r} is not one of {', '.join(LB_POLICIES)}")
        # JSON writes 1.0 as 1.0 but a hand-made value may say 1: keep the float fields floats.
        values: dict[str, Any] = {k: float(v) if _TYPES[k] is _NUMBER else v for k, v in data.items()}
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> SidecarSettings:
        return cls.from_dict(_object(text))


SETTINGS_FIELDS: Final = tuple(f.name for f in dataclasses.fields(SidecarSettings))
_STR: Final = (str,)
_OPT_STR: Final = (str, type(None))
_NUMBER: Final = (int, float)
_BOOL: Final = (bool,)
_NUMBER_FIELDS: Final = (
    "connect_timeout",
    "request_timeout",
    "drain_time",
    "health_interval",
    "rpc_heartbeat_interval",
    "rpc_heartbeat_timeout",
    "trace_sample_percent",
)
_OPT_STR_FIELDS: Final = (
    "advertise",
    "egress_ports",
    "hash_header",
    "ready_file",
    "routes",
    "control",
    "access_log",
    "trace_export",
)
_TYPES: Final[dict[str, tuple[type, ...]]] = {
    name: _NUMBER
    if name in _NUMBER_FIELDS
    else _BOOL
    if name in ("mosn_compat",)
    else _OPT_STR
    if name in _OPT_STR_FIELDS
    else _STR
    for name in SETTINGS_FIELDS
}


def _check_type(name: str, value: object) -> None:
    expected = _TYPES[name]
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not _BOOL):
        raise SettingsDecodeError(f"{name}: {value!r} has the wrong type")


def _object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SettingsDecodeError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsDecodeError("not a JSON object")
    return data


def parse_trace_export(spec: str) -> tuple[str, str]:
    """``--trace-export``: ``file:PATH`` | ``otlp:http://HOST:PORT[/PATH]`` | ``none`` -> (kind, target).

    Raises ValueError saying what is wrong. An OTLP URL without a path gets OTLP/HTTP's ``/v1/traces``."""
    text = spec.strip()
    if text == "none":
        return "none", ""
    kind, sep, target = text.partition(":")
    if not sep or kind not in ("file", "otlp"):
        raise ValueError(f"{spec!r}: expected file:PATH, otlp:http://HOST:PORT or none")
    if not target or "\x00" in target:
        raise ValueError(f"{spec!r}: {kind}: needs a {'path' if kind == 'file' else 'URL'} after the colon")
    if kind == "otlp":
        scheme, sep, rest = target.partition("://")
        host = rest.split("/", 1)[0]
        if not sep or scheme not in ("http", "https") or not host or any(c.isspace() for c in target):
            raise ValueError(f"{spec!r}: the OTLP endpoint must be an http:// or https:// URL with a host")
        if "/" not in rest:
            target = target + "/v1/traces"
    return kind, target


def strip_port(text: str) -> str:
    """The host of ``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT``."""
    if text.startswith("["):
        return text[1 : text.index("]")]
    return text.rpartition(":")[0] if ":" in text else text


@dataclass(frozen=True, slots=True)
class ResolvedSettings:
    """Validated settings and, for each field, which source gave its value (flag, env, file or default)."""

    settings: SidecarSettings
    sources: Mapping[str, str]
    file: str | None = None

    def dump(self) -> dict[str, dict[str, Any]]:
        """``{field: {"value": ..., "source": "flag|env|file|default"}}`` for /config_dump."""
        values = self.settings.to_dict()
        return {name: {"value": values[name], "source": self.sources[name]} for name in SETTINGS_FIELDS}

    def to_json(self) -> str:
        return json.dumps(
            {"settings": self.settings.to_dict(), "sources": dict(self.sources), "file": self.file}
        )

    @classmethod
    def from_json(cls, text: str) -> ResolvedSettings:
        data = _object(text)
        if set(data) != {"settings", "sources", "file"}:
            raise SettingsDecodeError("expected the keys settings, sources and file")
        settings, sources, file = data["settings"], data["sources"], data["file"]
        if not isinstance(settings, dict):
            raise SettingsDecodeError("settings: not a JSON object")
        if (
            not isinstance(sources, dict)
            or set(sources) != set(SETTINGS_FIELDS)
            or not all(isinstance(v, str) for v in sources.values())
        ):
            raise SettingsDecodeError("sources: need one source name per setting")
        if file is not None and not isinstance(file, str):
            raise SettingsDecodeError("file: not a string")
        return cls(SidecarSettings.from_dict(settings), sources, file)

"""The sidecar's bootstrap configuration: one model, four sources, one precedence.

Every setting has a field here, a ``--flag`` on ``plexus sidecar``, a ``PLEXUS_*`` environment variable and a
key in the YAML file named by ``--config``. An explicit flag wins over the environment, which wins over the
file, which wins over the default. The model is pydantic because it runs once at start; nothing here is on the
hot path. Pure: the caller reads the file and passes its text, so errors can still name ``file:line``.

Errors are collected in one pass and reported together, each naming where the bad value came from: ``--flag``,
``PLEXUS_VAR``, or ``path:line: field``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

import pydantic
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from plexus.config.sidecar_settings import (
    LB_POLICIES,
    WILDCARD_HOSTS,
    LbPolicy,
    ResolvedSettings,
    SidecarSettings,
    parse_trace_export,
)
from plexus.core.address import parse_host_port
from plexus.core.errors import ConfigError, ValidationError

SOURCE_FLAG: Final = "flag"
SOURCE_ENV: Final = "env"
SOURCE_FILE: Final = "file"
SOURCE_DEFAULT: Final = "default"

__all__ = [
    "FIELDS",
    "LB_POLICIES",
    "WILDCARD_HOSTS",
    "BootstrapError",
    "LbPolicy",
    "ResolvedBootstrap",
    "SidecarBootstrap",
    "env_name",
    "flag_name",
    "parse_yaml",
    "resolve_bootstrap",
]


def _host_port(value: str) -> str:
    try:
        return str(parse_host_port(value, "address"))
    except ValidationError as exc:
        raise ValueError(exc.message) from None


def _host_optional_port(value: str) -> str:
    """``HOST`` or ``HOST:PORT`` (``[V6]`` or ``[V6]:PORT``)."""
    text = value.strip()
    if not text:
        raise ValueError("empty")
    if text.startswith("[") and text.endswith("]"):
        return text
    if text.startswith("[") or text.count(":") == 1:
        return _host_port(text)
    if text.count(":") > 1:
        raise ValueError(f"{text!r}: write an IPv6 host in brackets, [::1] or [::1]:PORT")
    if any(c.isspace() for c in text) or len(text) > 253:
        raise ValueError(f"{text!r}: bad host")
    return text


def _port_range(value: str) -> str:
    low_text, sep, high_text = value.strip().partition("-")
    if not sep or not low_text.strip().isdigit() or not high_text.strip().isdigit():
        raise ValueError(f"{value!r} is not a port range LOW-HIGH")
    low, high = int(low_text), int(high_text)
    if not 0 < low <= high <= 65535:
        raise ValueError(f"{value!r}: need 1 <= LOW <= HIGH <= 65535")
    return f"{low}-{high}"


def _header_name(value: str) -> str:
    name = value.strip().lower()
    if not name or any(c in name for c in " \t:\r\n") or not name.isascii():
        raise ValueError(f"{value!r} is not an HTTP header name")
    return name


def _trace_export(value: str) -> str:
    parse_trace_export(value)
    return value.strip()


def _access_log(value: str) -> str:
    if not value.strip() or "\x00" in value:
        raise ValueError(f"{value!r}: name a file, or - for stdout")
    return value


HostPortText = Annotated[str, AfterValidator(_host_port)]


class SidecarBootstrap(BaseModel):
    """Everything ``plexus sidecar`` needs to start. Field names are the YAML keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    registry: HostPortText = "127.0.0.1:15200"
    app_address: Annotated[str, AfterValidator(_host_optional_port)] = "127.0.0.1"
    ingress: HostPortText = "127.0.0.1:15006"
    advertise: Annotated[str, AfterValidator(_host_optional_port)] | None = None
    api: HostPortText = "127.0.0.1:15301"
    admin: HostPortText = "127.0.0.1:15300"
    egress: HostPortText = "127.0.0.1:15001"
    egress_ports: Annotated[str, AfterValidator(_port_range)] | None = None
    # Names travel in headers (x-plexus-caller) and registry records: printable ASCII without spaces.
    zone: str = Field(default="", max_length=256, pattern=r"^[!-~]*$")
    unit: str = Field(default="", max_length=256, pattern=r"^[!-~]*$")
    workload: str = Field(default="", max_length=256, pattern=r"^[!-~]*$")
    namespace: str = Field(default="default", min_length=1, max_length=253)
    lb: LbPolicy = "round_robin"
    hash_header: Annotated[str, AfterValidator(_header_name)] | None = None
    connect_timeout: float = Field(default=1.0, gt=0, le=600)
    request_timeout: float = Field(default=15.0, gt=0, le=3600)
    drain_time: float = Field(default=1.0, ge=0, le=3600)
    health_interval: float = Field(default=1.0, gt=0, le=3600)
    ready_file: str | None = None
    # Bolt/Dubbo upstream keepalive: heartbeat after this idle time (0: never), close if unanswered.
    rpc_heartbeat_interval: float = Field(default=15.0, ge=0, le=3600)
    rpc_heartbeat_timeout: float = Field(default=5.0, gt=0, le=600)
    # MOSN's app-facing API (anthunder, SOFA mesh clients) and its shared Bolt egress, at MOSN's ports.
    mosn_compat: bool = False
    mosn_api: HostPortText = "127.0.0.1:13330"
    bolt_egress: HostPortText = "127.0.0.1:12220"
    routes: str | None = None  # YAML of VirtualService/DestinationRule, read by the sidecar; reread on SIGHUP
    control: HostPortText | None = None  # the control plane (plexus control); also the registry unless given
    # Telemetry: JSON access log (PATH or - for stdout; off when None), trace sampling, span export.
    access_log: Annotated[str, AfterValidator(_access_log)] | None = None
    trace_sample_percent: float = Field(default=1.0, ge=0, le=100)
    trace_export: Annotated[str, AfterValidator(_trace_export)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _registry_from_control(cls, data: Any) -> Any:
        # `plexus control` embeds the registry: --control alone names both. An invalid --control is reported
        # once, as itself, not again as the registry.
        if isinstance(data, dict) and data.get("control") is not None and data.get("registry") is None:
            try:
                _host_port(str(data["control"]))
            except ValueError:
                return data
            return {**data, "registry": data["control"]}
        return data

    @model_validator(mode="after")
    def _check_advertise(self) -> SidecarBootstrap:
        # The parsed views (ingress_address, advertise_host, ...) live on SidecarSettings alone.
        views = self.to_settings()
        if self.advertise is None and views.ingress_address.host in WILDCARD_HOSTS:
            raise ValueError(
                f"ingress {self.ingress} listens on every interface; name the address callers should use "
                "with --advertise HOST[:PORT] (PLEXUS_ADVERTISE)"
            )
        if self.control is not None and self.routes is not None:
            raise ValueError(
                "routes: --routes and --control exclude each other: the control plane pushes the policy "
                "(load the file into it with `plexus apply -f FILE`)"
            )
        if self.advertise is not None and views.advertise_host in WILDCARD_HOSTS:
            raise ValueError(f"advertise {self.advertise!r}: publish a routable host, not a wildcard")
        return self

    def to_settings(self) -> SidecarSettings:
        """The validated values as the plain dataclass the serving process uses (no pydantic there)."""
        return SidecarSettings(**self.model_dump())


FIELDS: Final = tuple(SidecarBootstrap.model_fields)


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return "PLEXUS_" + field.upper()


@dataclass(frozen=True, slots=True)
class ResolvedBootstrap:
    """The validated config and, for each field, which source gave its value."""

    config: SidecarBootstrap
    sources: Mapping[str, str]
    file: str | None = None

    def dump(self) -> dict[str, dict[str, Any]]:
        """``{field: {"value": ..., "source": "flag|env|file|default"}}`` for /config_dump."""
        values = self.config.model_dump()
        return {name: {"value": values[name], "source": self.sources[name]} for name in FIELDS}

    def settings(self) -> ResolvedSettings:
        """The same, without pydantic: what ``plexus sidecar`` hands to the serving process as JSON."""
        return ResolvedSettings(self.config.to_settings(), dict(self.sources), self.file)


class BootstrapError(ConfigError):
    """One or more bootstrap values are invalid; ``problems`` lists each as (where, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__(problems[0][0], problems[0][1])

    def __str__(self) -> str:
        return "\n".join(f"{where}: {message}" for where, message in self.problems)


def parse_yaml(text: str, file_name: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's top-level mapping and each key's 1-based line; raises BootstrapError naming file:line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file_name}:{mark.line + 1}" if mark is not None else file_name
        raise BootstrapError([(where, f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]) from None
    if node is None or data is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
        raise BootstrapError(
            [(f"{file_name}:{node.start_mark.line + 1}", "the file must be a mapping of field: value")]
        )
    lines: dict[str, int] = {}
    problems: list[tuple[str, str]] = []
    for key_node, _value in node.value:
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in lines:
            problems.append((f"{file_name}:{line}: {key}", f"duplicate field (first at line {lines[key]})"))
        lines[key] = line
    if problems:
        raise BootstrapError(problems)
    return {str(k): v for k, v in data.items()}, lines


def resolve_bootstrap(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    file_text: str | None = None,
    file_name: str | None = None,
) -> ResolvedBootstrap:
    """Merge the four sources (flag > env > file > default) and validate once.

    ``flags`` maps field names to values the user gave explicitly (leave out what was not given); ``env``
    is the process environment (only ``PLEXUS_<FIELD>`` names are read); ``file_text`` is the YAML text.
    """
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    lines: dict[str, int] = {}
    fname = file_name or "<config>"
    if file_text is not None:
        file_values, lines = parse_yaml(file_text, fname)
        for key, value in file_values.items():
            merged[key] = value
            sources[key] = SOURCE_FILE
    for field in FIELDS:
        env_value = env.get(env_name(field))
        if env_value is not None and env_value != "":
            merged[field] = env_value
            sources[field] = SOURCE_ENV
    for field, value in flags.items():
        if field not in SidecarBootstrap.model_fields:
            raise BootstrapError([(flag_name(field), "no such setting")])
        if value is not None:
            merged[field] = value
            sources[field] = SOURCE_FLAG

    def where(field: str) -> str:
        source = sources.get(field)
        if source == SOURCE_FLAG:
            return flag_name(field)
        if source == SOURCE_ENV:
            return env_name(field)
        if source == SOURCE_FILE:
            return f"{fname}:{lines.get(field, 0)}: {field}"
        return flag_name(field)

    try:
        config = SidecarBootstrap.model_validate(merged)
    except pydantic.ValidationError as exc:
        problems: list[tuple[str, str]] = []
        for error in exc.errors():
            loc = error["loc"]
            message = str(error["msg"]).removeprefix("Value error, ")
            if not loc:  # a check across fields: name the field it is about
                field = next((f for f in ("advertise", "routes") if message.startswith(f)), "ingress")
                problems.append((where(field), message))
                continue
            field = str(loc[0])
            if error["type"] == "extra_forbidden":
                message = f"unknown field; known fields: {', '.join(FIELDS)}"
            problems.append((where(field), message))
        raise BootstrapError(problems) from None
    all_sources = {field: sources.get(field, SOURCE_DEFAULT) for field in FIELDS}
    if "registry" not in sources and "control" in sources:
        all_sources["registry"] = sources["control"]  # the registry came with --control (it embeds one)
    return ResolvedBootstrap(config, all_sources, file_name)

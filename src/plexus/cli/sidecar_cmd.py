"""`plexus sidecar`: every flag is also a ``PLEXUS_*`` variable and a key of the ``--config`` YAML file.

Precedence: an explicit flag, then the environment, then the file, then the default. Options default to None
here so that "not given" can be told apart from "given the default value"; the defaults live in
``plexus.config.bootstrap.SidecarBootstrap``.

Once the settings are valid, the command execs ``python -m plexus.sidecar`` (same PID) with the resolved
settings as JSON in ``PLEXUS_SIDECAR_RESOLVED``, so the serving process does not carry the CLI stack.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn

import typer

if TYPE_CHECKING:
    from plexus.config.sidecar_settings import ResolvedSettings

# Exit code for a configuration the sidecar refuses, as click uses for a bad flag.
EXIT_BAD_CONFIG = 2


def _opt(help_text: str, env: str, metavar: str | None = None) -> Any:
    return typer.Option(help=f"{help_text} [env: {env}]", metavar=metavar, show_default=False)


def sidecar(
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file of settings (keys are the flag names with _)")
    ] = None,
    registry: Annotated[
        str | None, _opt("registry HOST:PORT (default 127.0.0.1:15200)", "PLEXUS_REGISTRY", "HOST:PORT")
    ] = None,
    app_address: Annotated[
        str | None,
        _opt(
            "the app's own HOST[:PORT]; provider ports live on its host (default 127.0.0.1)",
            "PLEXUS_APP_ADDRESS",
            "HOST[:PORT]",
        ),
    ] = None,
    ingress: Annotated[
        str | None, _opt("listen here for callers (default 127.0.0.1:15006)", "PLEXUS_INGRESS", "HOST:PORT")
    ] = None,
    advertise: Annotated[
        str | None,
        _opt(
            "publish this address instead of --ingress (needed when ingress is 0.0.0.0)",
            "PLEXUS_ADVERTISE",
            "HOST[:PORT]",
        ),
    ] = None,
    api: Annotated[
        str | None, _opt("local API for the app (default 127.0.0.1:15301)", "PLEXUS_API", "HOST:PORT")
    ] = None,
    admin: Annotated[
        str | None, _opt("admin API (default 127.0.0.1:15300)", "PLEXUS_ADMIN", "HOST:PORT")
    ] = None,
    egress: Annotated[
        str | None,
        _opt("shared egress, routed by Host (default 127.0.0.1:15001)", "PLEXUS_EGRESS", "HOST:PORT"),
    ] = None,
    egress_ports: Annotated[
        str | None,
        _opt(
            "per-service egress ports come from LOW-HIGH (default: any free port)",
            "PLEXUS_EGRESS_PORTS",
            "LOW-HIGH",
        ),
    ] = None,
    zone: Annotated[str | None, _opt("zone published with every instance", "PLEXUS_ZONE")] = None,
    unit: Annotated[str | None, _opt("unit (cell) published with every instance", "PLEXUS_UNIT")] = None,
    workload: Annotated[
        str | None, _opt("workload name published with every instance", "PLEXUS_WORKLOAD")
    ] = None,
    namespace: Annotated[str | None, _opt('namespace (default "default")', "PLEXUS_NAMESPACE")] = None,
    lb: Annotated[
        str | None,
        _opt("default load balancer: round_robin|least_request|random|weighted|ring_hash", "PLEXUS_LB"),
    ] = None,
    hash_header: Annotated[
        str | None, _opt("header hashed by ring_hash", "PLEXUS_HASH_HEADER", "NAME")
    ] = None,
    connect_timeout: Annotated[
        float | None,
        _opt("upstream connect timeout, seconds (default 1.0)", "PLEXUS_CONNECT_TIMEOUT", "SECONDS"),
    ] = None,
    request_timeout: Annotated[
        float | None, _opt("request timeout, seconds (default 15.0)", "PLEXUS_REQUEST_TIMEOUT", "SECONDS")
    ] = None,
    drain_time: Annotated[
        float | None,
        _opt(
            "keep serving this long after withdrawing on SIGTERM (default 1.0)",
            "PLEXUS_DRAIN_TIME",
            "SECONDS",
        ),
    ] = None,
    health_interval: Annotated[
        float | None,
        _opt("app health-check interval, seconds (default 1.0)", "PLEXUS_HEALTH_INTERVAL", "SECONDS"),
    ] = None,
    ready_file: Annotated[
        str | None, _opt("write the bound addresses here as JSON once listening", "PLEXUS_READY_FILE", "PATH")
    ] = None,
    routes: Annotated[
        str | None,
        _opt(
            "YAML file of VirtualService/DestinationRule routing; reread on SIGHUP", "PLEXUS_ROUTES", "FILE"
        ),
    ] = None,
    control: Annotated[
        str | None,
        _opt(
            "control plane HOST:PORT (plexus control); follow its policy pushes; also the registry unless "
            "--registry is given; excludes --routes",
            "PLEXUS_CONTROL",
            "HOST:PORT",
        ),
    ] = None,
    rpc_heartbeat_interval: Annotated[
        float | None,
        _opt(
            "heartbeat idle Bolt/Dubbo upstream connections after this long, 0 = never (default 15.0)",
            "PLEXUS_RPC_HEARTBEAT_INTERVAL",
            "SECONDS",
        ),
    ] = None,
    rpc_heartbeat_timeout: Annotated[
        float | None,
        _opt(
            "close an upstream connection whose heartbeat is not answered in this long (default 5.0)",
            "PLEXUS_RPC_HEARTBEAT_TIMEOUT",
            "SECONDS",
        ),
    ] = None,
    mosn_compat: Annotated[
        bool | None,
        typer.Option(
            "--mosn-compat/--no-mosn-compat",
            help="serve MOSN's app API and a shared Bolt egress for SOFA apps [env: PLEXUS_MOSN_COMPAT]",
            show_default=False,
        ),
    ] = None,
    mosn_api: Annotated[
        str | None,
        _opt("MOSN app API address (default 127.0.0.1:13330)", "PLEXUS_MOSN_API", "HOST:PORT"),
    ] = None,
    bolt_egress: Annotated[
        str | None,
        _opt(
            "shared Bolt egress routed by sofa_head_target_service (default 127.0.0.1:12220)",
            "PLEXUS_BOLT_EGRESS",
            "HOST:PORT",
        ),
    ] = None,
    access_log: Annotated[
        str | None,
        _opt(
            "write an access log, one JSON line per request (Envoy's fields), to PATH or - for stdout "
            "(default: off)",
            "PLEXUS_ACCESS_LOG",
            "PATH",
        ),
    ] = None,
    trace_sample_percent: Annotated[
        float | None,
        _opt(
            "percent of new traces sampled, 0-100 (default 1, as Istio); an incoming sampled flag is kept",
            "PLEXUS_TRACE_SAMPLE_PERCENT",
            "PERCENT",
        ),
    ] = None,
    trace_export: Annotated[
        str | None,
        _opt(
            "where sampled spans go: file:PATH (OTLP-shaped JSON lines), otlp:http://HOST:PORT (OTLP/HTTP) "
            "or none (default: none; `plexus demo` writes them to its work dir)",
            "PLEXUS_TRACE_EXPORT",
            "SPEC",
        ),
    ] = None,
) -> None:
    """Run a sidecar beside one app: ingress for callers, egress for the app, publish and subscribe for it."""
    from plexus.config.bootstrap import BootstrapError, resolve_bootstrap

    flags = {
        "registry": registry,
        "app_address": app_address,
        "ingress": ingress,
        "advertise": advertise,
        "api": api,
        "admin": admin,
        "egress": egress,
        "egress_ports": egress_ports,
        "zone": zone,
        "unit": unit,
        "workload": workload,
        "namespace": namespace,
        "lb": lb,
        "hash_header": hash_header,
        "connect_timeout": connect_timeout,
        "request_timeout": request_timeout,
        "drain_time": drain_time,
        "health_interval": health_interval,
        "ready_file": ready_file,
        "routes": routes,
        "control": control,
        "rpc_heartbeat_interval": rpc_heartbeat_interval,
        "rpc_heartbeat_timeout": rpc_heartbeat_timeout,
        "mosn_compat": mosn_compat,
        "mosn_api": mosn_api,
        "bolt_egress": bolt_egress,
        "access_log": access_log,
        "trace_sample_percent": trace_sample_percent,
        "trace_export": trace_export,
    }
    config_path = config if config is not None else _env_path("PLEXUS_CONFIG")
    file_text: str | None = None
    if config_path is not None:
        try:
            file_text = config_path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            _refuse([(str(config_path), f"cannot read the config file: {exc}")])
    try:
        resolved = resolve_bootstrap(
            {k: v for k, v in flags.items() if v is not None},
            os.environ,
            file_text,
            str(config_path) if config_path is not None else None,
        )
    except BootstrapError as exc:
        _refuse(exc.problems)

    _exec_sidecar(resolved.settings())


MALLOC_ARENA_MAX: Final = "MALLOC_ARENA_MAX"


def _exec_sidecar(resolved: ResolvedSettings) -> NoReturn:
    """Become the serving process: same PID (process managers and tests keep it), none of the CLI stack.

    typer, click, rich, pydantic and PyYAML are loaded by now and would stay mapped for the sidecar's whole
    life; ``python -m plexus.sidecar`` starts clean and gets the validated settings as JSON.
    """
    from plexus.config.sidecar_settings import RESOLVED_ENV

    env = dict(os.environ)
    env[RESOLVED_ENV] = resolved.to_json()
    # glibc gives each thread that allocates its own malloc arena, which keeps what it freed: the span
    # exporter's threads cost ~0.7 MiB of RSS that way. The sidecar's threads take turns under the GIL, so
    # one arena serves them; glibc reads this only at start, hence here. A value the user set wins.
    env.setdefault(MALLOC_ARENA_MAX, "1")
    argv = [sys.executable, "-m", "plexus.sidecar"]
    sys.stdout.flush()  # exec discards anything still buffered
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _refuse(problems: list[tuple[str, str]]) -> NoReturn:
    typer.echo("plexus sidecar: invalid configuration:", err=True)
    for where, message in problems:
        typer.echo(f"  {where}: {message}", err=True)
    raise typer.Exit(EXIT_BAD_CONFIG)


def register(app: typer.Typer) -> None:
    """Add `plexus sidecar` to the CLI."""
    app.command(name="sidecar")(sidecar)

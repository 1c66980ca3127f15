"""The sidecar's composition root: wire the data plane, the registry client, the local API and the admin API,
and own their lifecycle.

Start: data-plane listeners (ingress, shared egress), local API, admin API, then the registry client; the
ready file is written last, once everything listens. Stop (SIGTERM/SIGINT): withdraw every published instance
at once, keep serving for ``drain_time`` so consumers move away, then close the listeners, drain the data
plane and close the registry client. A second signal skips what is left of the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any, Final

from plexus.clients.control_async import AsyncControlClient
from plexus.clients.ratelimit_async import AsyncQuotaClient
from plexus.clients.registry_async import AsyncRegistryClient
from plexus.config.resources import PolicySet
from plexus.config.sidecar_settings import ResolvedSettings
from plexus.core import speedups
from plexus.core.address import HostPort, parse_host_port
from plexus.core.errors import ConfigError, PlexusError
from plexus.core.ready_file import write_ready_file
from plexus.sidecar.access_log import AccessLogError, AccessLogWriter
from plexus.sidecar.admin import build_admin_api
from plexus.sidecar.load_sampler import LoadSampler
from plexus.sidecar.local_api import build_local_api
from plexus.sidecar.mesh import LocalMesh
from plexus.sidecar.mosn_api import MosnAppInfo, build_mosn_api
from plexus.sidecar.policy import PolicyAgent, default_node_id, policy_destinations
from plexus.sidecar.stats import SidecarStats
from plexus.sidecar.trace_export import SpanExport, TraceExportError
from plexus.transport.control_http import bound_port, serve_control_http
from plexus.transport.dataplane import DataPlane, DataPlaneSettings

log = logging.getLogger("plexus.sidecar")

SERVER_CLOSE_TIMEOUT: Final = 1.0  # control servers hold no long requests; don't let a stuck one block exit
CLIENT_CLOSE_TIMEOUT: Final = 2.0  # time to get the registry's answer to the final (empty) publish


class ListenError(PlexusError):
    """A listener could not be opened: ``flag`` names the setting, the message says why."""

    def __init__(self, flag: str, address: str, reason: str) -> None:
        super().__init__(f"{flag} {address}: {reason}")
        self.flag = flag


@contextlib.contextmanager
def _listening(flag: str, address: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise ListenError(flag, address, exc.strerror or str(exc)) from None


class Sidecar:
    def __init__(self, resolved: ResolvedSettings) -> None:
        self.resolved = resolved
        self.config = resolved.settings
        self.stats = SidecarStats()
        self.dp = DataPlane(
            DataPlaneSettings(
                connect_timeout=self.config.connect_timeout,
                request_timeout=self.config.request_timeout,
                lb_policy=self.config.lb,
                hash_header=self.config.hash_header,
                hop_name=self.config.workload or "sidecar",
                rpc_heartbeat_interval=self.config.rpc_heartbeat_interval,
                rpc_heartbeat_timeout=self.config.rpc_heartbeat_timeout,
                workload=self.config.workload,
                zone=self.config.zone,
                unit=self.config.unit,
                namespace=self.config.namespace,
                trace_sample_percent=self.config.trace_sample_percent,
            ),
            on_unknown_service=self._on_unknown_service,
        )
        self.client: AsyncRegistryClient | None = None
        self.access_log: AccessLogWriter | None = None  # --access-log
        self.span_export: SpanExport | None = None  # --trace-export
        self.mesh: LocalMesh | None = None
        self.control: AsyncControlClient | None = None  # --control: policy pushed by the control plane
        self.policy: PolicyAgent | None = None
        self.quota: AsyncQuotaClient | None = None  # global rate-limit tokens (--control), asked lazily
        self.load_sampler = LoadSampler(self.dp.load)  # samples only while an adaptive rule reads the load
        self.route_destinations: frozenset[str] = frozenset()  # watched for the routes file (--routes)
        self.mosn_app = MosnAppInfo()  # what a MOSN-API client said of itself (--mosn-compat)
        self.addresses: dict[str, str] = {}
        self.routes_status: dict[str, Any] = {"file": self.config.routes, "loaded": False}
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False
        self._servers: list[asyncio.Server] = []
        self._ready = False
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()

    # ----------------------------------------------------------------- routing (--routes, SIGHUP)
    async def load_routes(self) -> list[str]:
        """Read and install the --routes file; the problems (file:line: path: message) when it is invalid,
        in which case the routes installed before stay."""
        path = self.config.routes
        if path is None:
            return []
        config, problems = await _parse_routes_file(path)
        if config is not None:
            try:
                self.dp.set_policy(config)
            except ConfigError as exc:
                problems = [f"{path}: {exc}"]
            else:
                self.route_destinations = policy_destinations(config)
                if self.mesh is not None:
                    self.mesh.watch_route_destinations(self.route_destinations)
        status = self.routes_status
        if problems:
            status["failed_loads"] = status.get("failed_loads", 0) + 1
            status["last_error"] = problems
        else:
            status.update(loaded=True, loads=status.get("loads", 0) + 1, last_error=None)
        return problems

    def request_reload(self) -> None:
        """SIGHUP: reread --routes; an invalid file is logged and the last good routes keep serving."""
        if self.config.routes is None:
            log.info("SIGHUP: no --routes file to reload")
            return
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True  # the file may have changed after the running reload read it
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        while True:
            self._reload_again = False
            problems = await self.load_routes()
            if problems:
                log.error("routes not reloaded; keeping the last good ones:\n  %s", "\n  ".join(problems))
            else:
                log.info("routes reloaded from %s", self.config.routes)
            if not self._reload_again:
                return

    async def _on_unknown_service(self, service: str) -> bool:
        mesh = self.mesh
        return False if mesh is None else await mesh.on_unknown_service(service)

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> dict[str, str]:
        """Open every listener, then start the registry client. Raises ListenError naming the listener."""
        config = self.config
        self._start_telemetry_writers()
        with _listening("--ingress", config.ingress):
            ingress = await self.dp.listen_ingress(*parse_host_port(config.ingress))
        with _listening("--egress", config.egress):
            egress = await self.dp.listen_shared_egress(*parse_host_port(config.egress))
        advertised = HostPort(config.advertise_host, config.advertise_port or ingress.port)
        self.client = AsyncRegistryClient(config.registry, publisher_id=f"sidecar-{advertised}-{os.getpid()}")
        self.mesh = LocalMesh(config, self.dp, self.client, advertised, self.stats)
        self.mesh.watch_route_destinations(self.route_destinations)
        if config.control is not None:
            self.policy = PolicyAgent(
                self.dp,
                self.mesh,
                node_id=default_node_id(advertised),
                workload=config.workload,
                zone=config.zone,
                unit=config.unit,
                advertised=advertised,
            )
            self.control = AsyncControlClient(
                config.control, self.policy.node, self.policy.install, self.policy.traffic,
                observed=self.policy,  # CONTROLOBS: edges/paths/tcp in reports, taps, explain
            )
            self.mesh.on_change = self.control.node_changed
            self.quota = self.dp.quota = AsyncQuotaClient(config.control, default_node_id(advertised))
        api_host, api_port = parse_host_port(config.api)
        admin_host, admin_port = parse_host_port(config.admin)
        with _listening("--api", config.api):
            api = await serve_control_http(
                build_local_api(self.mesh, self.stats, self.ready_document), api_host, api_port
            )
        self._servers.append(api)
        admin_router = build_admin_api(
            ready=self.ready_document,
            metrics=self.metrics_text,
            clusters=self.dp.clusters_view,
            config_dump=self.config_dump,
        )
        with _listening("--admin", config.admin):
            admin = await serve_control_http(admin_router, admin_host, admin_port)
        self._servers.append(admin)
        extra: dict[str, str] = {}
        if config.mosn_compat:
            # MOSN's app API and its shared Bolt egress, for SOFA mesh clients (anthunder) left unchanged.
            with _listening("--bolt-egress", config.bolt_egress):
                bolt_egress = await self.dp.listen_rpc_egress("bolt", *parse_host_port(config.bolt_egress))
            mosn_host, mosn_port = parse_host_port(config.mosn_api)
            mosn_router = build_mosn_api(self.mesh, self.mosn_app)
            with _listening("--mosn-api", config.mosn_api):
                mosn = await serve_control_http(mosn_router, mosn_host, mosn_port)
            self._servers.append(mosn)
            extra = {"mosn_api": str(HostPort(mosn_host, bound_port(mosn))), "bolt_egress": str(bolt_egress)}
        self.client.start()  # a task on this loop: connects in the background, never raises while it is down
        if self.control is not None:
            self.control.start()  # the same: serves with no policy until the first snapshot arrives
        self.load_sampler.start()
        self.addresses = {
            "ingress": str(ingress),
            "egress": str(egress),
            "api": str(HostPort(api_host, bound_port(api))),
            "admin": str(HostPort(admin_host, bound_port(admin))),
            "advertise": str(advertised),
            **extra,
        }
        self._ready = True
        return self.addresses

    def _start_telemetry_writers(self) -> None:
        """Access log and span export; raises AccessLogError/TraceExportError naming the flag."""
        loop = asyncio.get_running_loop()
        telemetry = self.dp.stats.telemetry
        if self.config.access_log is not None:
            self.access_log = AccessLogWriter.open(self.config.access_log, telemetry)
            self.access_log.start(loop)
        self.span_export = SpanExport.open(self.config.trace_export, telemetry)
        if self.span_export is not None:
            self.span_export.start(loop)

    def request_stop(self) -> None:
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self, drain: bool = True) -> None:
        """Withdraw, drain, close — in that order. ``drain=False`` (a start that failed) skips the wait."""
        self._stopping.set()
        if not drain:
            self._hurry.set()
        if self.mesh is not None:
            await self.mesh.withdraw_all()
        drain_time = self.config.drain_time
        if drain_time > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), drain_time)
        self._ready = False
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), SERVER_CLOSE_TIMEOUT)
        if self.mesh is not None:
            await self.mesh.close()
        await self.dp.close(0.0 if self._hurry.is_set() else drain_time)
        if self.access_log is not None:
            self.access_log.close()  # after the data plane: the last requests' lines are written
        if self.span_export is not None:
            await self.span_export.aclose()
        if self.control is not None:
            await self.control.aclose(CLIENT_CLOSE_TIMEOUT)
        await self.load_sampler.aclose()
        if self.quota is not None:
            await self.quota.aclose()
        if self.policy is not None:
            self.policy.close()
        if self.client is not None:
            await self.client.aclose(True, CLIENT_CLOSE_TIMEOUT)

    # ----------------------------------------------------------------- views
    def ready_document(self) -> dict[str, Any] | None:
        if not self._ready or self.client is None:
            return None
        return {
            "ready": True,
            "registry_connected": self.client.connected,
            **({"control_connected": self.control.connected} if self.control is not None else {}),
            "draining": self._stopping.is_set(),
            **self.addresses,
        }

    def metrics_text(self) -> str:
        own = ""
        if self.mesh is not None and self.client is not None:
            own = self.stats.render(
                registry_connected=self.client.connected,
                published=len(self.mesh.published()),
                registered=len(self.mesh.providers),
                healthy=self.mesh.health_view(),
                consumers=len(self.mesh.consumers),
            )
        text = self.dp.metrics_text()
        if text and not text.endswith("\n"):
            text += "\n"
        return text + own + self._control_metrics()

    def _control_metrics(self) -> str:
        """The policy push as this sidecar sees it (``plexus_sidecar_policy_*``); empty without --control."""
        control = self.control
        if control is None:
            return ""
        return "\n".join([
            "# HELP plexus_sidecar_control_connected Whether the control-plane stream is up.",
            "# TYPE plexus_sidecar_control_connected gauge",
            f"plexus_sidecar_control_connected {int(control.connected)}",
            "# HELP plexus_sidecar_policy_version The policy snapshot version this sidecar serves (0: none).",
            "# TYPE plexus_sidecar_policy_version gauge",
            f"plexus_sidecar_policy_version {control.applied_version}",
            "# HELP plexus_sidecar_policy_snapshots_total Snapshots pushed to this sidecar, by result.",
            "# TYPE plexus_sidecar_policy_snapshots_total counter",
            f'plexus_sidecar_policy_snapshots_total{{result="received"}} {control.snapshots_received}',
            f'plexus_sidecar_policy_snapshots_total{{result="nacked"}} {control.snapshots_nacked}',
        ]) + "\n"

    def config_dump(self) -> dict[str, Any]:
        return {
            "bootstrap": self.resolved.dump(),
            "config_file": self.resolved.file,
            "listeners": self.addresses,
            "local": self.mesh.view() if self.mesh is not None else {},
            "mosn_application": self.mosn_app.fields,
            "data_plane": self.dp.config_view(),
            "routes": self.routes_status,
            "control": self.control_view(),
        }

    def control_view(self) -> dict[str, Any] | None:
        """--control: the control plane's address, connected or not, the policy version, the last NACK."""
        if self.control is None:
            return None
        view = self.control.view()
        view["policy"] = self.policy.view() if self.policy is not None else None
        return view


# The routes file is parsed in a short-lived child: PyYAML then never maps into the serving process (see
# plexus.sidecar.__main__), and a reload's parsing does not stall the data plane's loop.
_ROUTES_CHILD: Final = """
import json, sys
from plexus.config.resources import parse_resources
from plexus.config.route_config import RouteConfigError
path = sys.argv[1]
try:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out = {"config": parse_resources(text, path).to_dict()}
except (OSError, UnicodeDecodeError) as exc:
    out = {"problems": [f"{path}: cannot read the routes file: {exc}"]}
except RouteConfigError as exc:
    out = {"problems": [str(p) for p in exc.problems]}
sys.stdout.write(json.dumps(out))
"""
ROUTES_PARSE_TIMEOUT: Final = 30.0  # seconds; parsing takes well under one, the rest is interpreter start


async def _parse_routes_file(path: str) -> tuple[PolicySet | None, list[str]]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ROUTES_CHILD,
        path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), ROUTES_PARSE_TIMEOUT)
    except TimeoutError:
        child.kill()
        await child.wait()
        return None, [f"{path}: parsing took over {ROUTES_PARSE_TIMEOUT:.0f}s"]
    try:
        result = json.loads(out)
    except ValueError:
        return None, [f"{path}: the routes parser failed: {err.decode(errors='replace').strip()[-500:]}"]
    if "problems" in result:
        return None, [str(p) for p in result["problems"]]
    return PolicySet.from_dict(result["config"]), []


async def serve(resolved: ResolvedSettings) -> int:
    """Run a sidecar until SIGTERM/SIGINT; returns the exit code."""
    try:
        sidecar = Sidecar(resolved)
    except ValueError as exc:  # the data plane refused a setting the bootstrap model let through
        print(f"plexus sidecar: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if resolved.settings.control is not None and resolved.settings.routes is not None:
        print(
            "plexus sidecar: --routes and --control exclude each other: the control plane pushes the policy "
            "(load the file into it with `plexus apply -f FILE`)",
            file=sys.stderr,
        )
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sidecar.request_stop)
    problems = await sidecar.load_routes()
    if problems:
        print("plexus sidecar: invalid routes:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    loop.add_signal_handler(signal.SIGHUP, sidecar.request_reload)
    try:
        addresses = await sidecar.start()
    except ListenError as exc:
        print(f"plexus sidecar: cannot listen: {exc}", file=sys.stderr)
        await sidecar.stop(drain=False)
        return 1
    except (AccessLogError, TraceExportError) as exc:
        print(f"plexus sidecar: invalid configuration: {exc}", file=sys.stderr)
        await sidecar.stop(drain=False)
        return 2
    _tune_gc()
    if resolved.settings.ready_file:
        write_ready_file(resolved.settings.ready_file, addresses)
    log.info(
        "sidecar ready: %s (HTTP/1.1 telemetry loops in %s)",
        addresses,
        "C" if speedups.access_lines is not None else "Python: plexus.core._speedups is not built or is off",
    )
    await sidecar.wait_stopped()
    log.info("sidecar stopping: withdrawing, draining %.1fs", resolved.settings.drain_time)
    await sidecar.stop()
    return 0


# Collect generation 0 after this many net container allocations (CPython's default: 700). The data path
# allocates about ten containers per request that die young by refcount and rarely form cycles; at 700 the
# collector ran every ~70 requests and was 2-6 % of a loaded sidecar's CPU (bench/profiles/rpc-NOTES.md).
GC_GEN0_THRESHOLD: Final = 50_000


def _tune_gc() -> None:
    """Once started: freeze what start-up built (imports, config, clients live as long as the process),
    so collections no longer scan it, and collect generation 0 less often."""
    gc.collect()  # garbage made while starting is freed now, not frozen for the process's life
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def run_sidecar(resolved: ResolvedSettings) -> int:
    """Run on uvloop (plain asyncio where uvloop is missing); the entry point of ``plexus sidecar``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep a way to run without it
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(resolved))

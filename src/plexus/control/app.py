"""Compose the control plane process: policy store, core, one gRPC server (Control, the embedded Registry and
the services other parts register), admin HTTP; run until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc

from plexus.control.admin import build_router
from plexus.control.core import ControlCore, StartupError
from plexus.control.history import History, HistorySampler
from plexus.control.ratelimit_service import add_ratelimit_service
from plexus.control.server import ControlServicer
from plexus.core.address import HostPort, parse_host_port
from plexus.core.errors import ConfigError
from plexus.core.ready_file import write_ready_file
from plexus.proto import control_pb2_grpc, registry_pb2_grpc
from plexus.push.registry_state import RegistryState, Restored
from plexus.registry.app import check_addresses, check_seconds, prepare_data_dir
from plexus.registry.server import SERVER_OPTIONS, RegistryCore, RegistryServicer
from plexus.registry.server import SystemClock as RegistryClock
from plexus.stores.memory_registry import MemoryRegistryStore
from plexus.stores.policy_store import PolicyStore
from plexus.transport.control_http import serve_control_http

log = logging.getLogger("plexus.control")

STOP_GRACE = 1.0  # seconds open streams get to finish on SIGTERM; sidecars reconnect anyway
# A push to 20,000 streams allocates a few objects per stream; with the default gen-0 threshold (700) the
# collector runs hundreds of times per push and each gen-1/gen-2 pass walks every live stream's objects, which
# measured as a third of a push's CPU. Long-lived objects are frozen once serving, and collections run rarely.
GC_THRESHOLDS = (50_000, 50, 100)
REGISTRY_DEBOUNCE = 0.05  # seconds; plexus registry's default
# Sidecars report their cumulative counters this often (`plexus stat`, `top`, the dashboard): a 30 s window
# then holds 30 points per sidecar, and a report is a few KB.
REPORT_INTERVAL_MS = 1000


@dataclass(frozen=True, slots=True)
class ControlConfig:
    listen: str = "127.0.0.1:15400"
    admin: str = "127.0.0.1:15401"
    config_dir: Path | None = None
    data_dir: Path | None = None
    debounce: float = 0.1
    max_debounce: float = 10.0
    registry: bool = True
    lease_grace: float = 3.0
    warmup: float = 5.0
    ready_file: Path | None = None
    report_interval_ms: int = REPORT_INTERVAL_MS

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first bad value."""
        check_addresses(("--listen", self.listen), ("--admin", self.admin))
        check_seconds(
            ("--debounce-ms", self.debounce, 1000),
            ("--max-debounce-ms", self.max_debounce, 1000),
            ("--lease-grace", self.lease_grace, 1),
            ("--warmup", self.warmup, 1),
        )
        if self.max_debounce < self.debounce:
            raise ConfigError(
                "--max-debounce-ms",
                f"{self.max_debounce * 1000:g} is below --debounce-ms {self.debounce * 1000:g}",
            )
        if self.config_dir is not None and not self.config_dir.is_dir():
            raise ConfigError("--config-dir", f"{self.config_dir} is not a directory")
        prepare_data_dir(self.data_dir)

    def dump(self) -> dict[str, object]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def _fmt(host: str, port: int) -> str:
    return str(HostPort(host, port))


async def apply_config_dir(core: ControlCore, config_dir: Path) -> None:
    """Apply every *.yaml/*.yml of the directory in name order; raise StartupError with every problem."""
    files = sorted(p for p in config_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    problems: list[str] = []
    for path in files:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot read: {exc}")
            continue
        response = await core.apply(str(path), text)
        problems.extend(response.problems)
    if problems:
        raise StartupError(problems)
    if files:
        log.info("applied %d files of %s, version %d", len(files), config_dir, core.version)


async def _start_registry(config: ControlConfig) -> RegistryCore:
    store = MemoryRegistryStore(config.data_dir)
    stored = await store.load()
    restored = Restored(stored.publishers, stored.versions) if stored is not None else None
    clock = RegistryClock()
    state = RegistryState(
        clock=clock,
        lease_grace=config.lease_grace,
        debounce=REGISTRY_DEBOUNCE,
        warmup=config.warmup,
        restored=restored,
    )
    core = RegistryCore(state, store, clock, lease_grace=config.lease_grace, debounce=REGISTRY_DEBOUNCE)
    await core.start()
    return core


def observe_registry(core: ControlCore, registry: RegistryCore | None) -> None:
    """Stat's INSTANCES column and Info's registry_embedded come from the embedded registry (none: 0)."""
    core.observer.registry_embedded = registry is not None
    if registry is not None:
        state = registry.state

        def instances(service: str) -> int:
            found = state.service_set(service)
            return 0 if found is None else len(found.instances)

        core.observer.instances = instances


def add_services(server: grpc.aio.Server, core: ControlCore, registry: RegistryCore | None) -> None:
    """Every gRPC service of the control plane's one port."""
    control_pb2_grpc.add_ControlServicer_to_server(ControlServicer(core), server)  # type: ignore[no-untyped-call]
    if registry is not None:
        registry_pb2_grpc.add_RegistryServicer_to_server(  # type: ignore[no-untyped-call]
            RegistryServicer(registry), server
        )
    # ---- services other parts add (one line each) ----
    add_ratelimit_service(server, lambda: core.policy.rate_limits)  # RATELIMIT: global token service
    # ---- end of services other parts add ----


async def run_control(config: ControlConfig) -> None:
    """Serve until SIGTERM or SIGINT. Raises ConfigError for a bad flag or an address that cannot be bound,
    StartupError when the stored or --config-dir resources are invalid."""
    config.validate()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    core = ControlCore(
        PolicyStore(config.data_dir),
        debounce=config.debounce,
        max_debounce=config.max_debounce,
        report_interval_ms=config.report_interval_ms,
    )
    await core.load()
    if config.config_dir is not None:
        await apply_config_dir(core, config.config_dir)
    await core.start()
    registry = await _start_registry(config) if config.registry else None
    observe_registry(core, registry)

    async def close_cores() -> None:
        await core.close()
        if registry is not None:
            await registry.close()

    server = grpc.aio.server(options=SERVER_OPTIONS)
    add_services(server, core, registry)
    listen = parse_host_port(config.listen, "--listen")
    try:
        port = server.add_insecure_port(str(listen))
    except RuntimeError as exc:
        await close_cores()
        raise ConfigError("--listen", f"cannot bind {config.listen}: {exc}") from None
    if port == 0:
        await close_cores()
        raise ConfigError("--listen", f"cannot bind {config.listen} (in use or not a local address)")
    await server.start()
    serving = True
    admin_addr = parse_host_port(config.admin, "--admin")
    history = History()  # DASHBOARD: golden metrics over the last hour, sampled from the observer
    sampler = HistorySampler(history, core.observer)
    try:
        admin = await serve_control_http(
            build_router(core, config.dump(), lambda: serving, stats=core.observer, history=history),
            admin_addr.host,
            admin_addr.port,
        )
    except OSError as exc:
        await server.stop(0)
        await close_cores()
        raise ConfigError("--admin", f"cannot bind {config.admin}: {exc.strerror}") from None
    admin_port = int(admin.sockets[0].getsockname()[1])
    bound = {"listen": _fmt(listen.host, port), "admin": _fmt(admin_addr.host, admin_port)}
    core.observer.admin_url = f"http://{bound['admin']}/"
    log.info(
        "control plane serving gRPC on %s (registry %s), admin on %s, version %d",
        bound["listen"],
        "embedded" if registry is not None else "off",
        bound["admin"],
        core.version,
    )
    if config.ready_file is not None:
        write_ready_file(config.ready_file, bound)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sampler.start()
    try:
        await stop.wait()
    finally:
        serving = False
        await sampler.close()
        admin.close()
        await server.stop(STOP_GRACE)
        await close_cores()
        await admin.wait_closed()

"""Compose the registry process: store, state machine, gRPC server, admin HTTP; run until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc

from plexus.core.address import HostPort, parse_host_port
from plexus.core.errors import ConfigError
from plexus.core.ready_file import write_ready_file
from plexus.proto import registry_pb2_grpc as pb_grpc
from plexus.push.registry_state import RegistryState, Restored
from plexus.registry.admin import build_router
from plexus.registry.server import SERVER_OPTIONS, RegistryCore, RegistryServicer, SystemClock
from plexus.stores.memory_registry import MemoryRegistryStore
from plexus.transport.control_http import serve_control_http

log = logging.getLogger("plexus.registry")

STOP_GRACE = 1.0  # seconds open streams get to finish on SIGTERM; subscribers reconnect anyway


def check_addresses(*flags: tuple[str, str]) -> None:
    """Each (flag, HOST:PORT) must parse; a ConfigError names the first that does not."""
    for flag, value in flags:
        try:
            parse_host_port(value, flag)
        except Exception as exc:
            raise ConfigError(flag, str(exc).split(": ", 1)[-1]) from None


def check_seconds(*flags: tuple[str, float, int]) -> None:
    """Each (flag, seconds, scale of the flag's unit) must be within 0..1 hour, told in the flag's unit."""
    for flag, number, scale in flags:
        if not 0 <= number <= 3600:
            raise ConfigError(flag, f"{number * scale:g} is not in 0..{3600 * scale}")


def prepare_data_dir(data_dir: Path | None) -> None:
    """Create --data-dir when missing; a ConfigError when it cannot be a directory."""
    if data_dir is None:
        return
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("--data-dir", f"{data_dir}: {exc.strerror}") from None
    if not data_dir.is_dir():
        raise ConfigError("--data-dir", f"{data_dir} is not a directory")


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    listen: str = "127.0.0.1:15200"
    admin: str = "127.0.0.1:15201"
    data_dir: Path | None = None
    lease_grace: float = 3.0
    debounce: float = 0.05
    warmup: float = 5.0
    ready_file: Path | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first bad value."""
        check_addresses(("--listen", self.listen), ("--admin", self.admin))
        check_seconds(
            ("--lease-grace", self.lease_grace, 1),
            ("--debounce-ms", self.debounce, 1000),
            ("--warmup", self.warmup, 1),
        )
        prepare_data_dir(self.data_dir)

    def dump(self) -> dict[str, object]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def _fmt(host: str, port: int) -> str:
    return str(HostPort(host, port))


async def run_registry(config: RegistryConfig) -> None:
    """Serve until SIGTERM or SIGINT. Raises ConfigError for a bad flag or an address that cannot be bound."""
    config.validate()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    store = MemoryRegistryStore(config.data_dir)
    stored = await store.load()
    restored = Restored(stored.publishers, stored.versions) if stored is not None else None
    clock = SystemClock()
    state = RegistryState(
        clock=clock,
        lease_grace=config.lease_grace,
        debounce=config.debounce,
        warmup=config.warmup,
        restored=restored,
    )
    if restored is not None:
        log.info("restored %d publishers from %s", len(restored.publishers), store.path)
    core = RegistryCore(state, store, clock, lease_grace=config.lease_grace, debounce=config.debounce)
    await core.start()

    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_RegistryServicer_to_server(RegistryServicer(core), server)  # type: ignore[no-untyped-call]
    listen = parse_host_port(config.listen, "--listen")
    try:
        port = server.add_insecure_port(str(listen))
    except RuntimeError as exc:
        await core.close()
        raise ConfigError("--listen", f"cannot bind {config.listen}: {exc}") from None
    if port == 0:
        await core.close()
        raise ConfigError("--listen", f"cannot bind {config.listen} (in use or not a local address)")
    await server.start()
    serving = True
    admin_addr = parse_host_port(config.admin, "--admin")
    try:
        admin = await serve_control_http(
            build_router(core, config.dump(), lambda: serving), admin_addr.host, admin_addr.port
        )
    except OSError as exc:
        await server.stop(0)
        await core.close()
        raise ConfigError("--admin", f"cannot bind {config.admin}: {exc.strerror}") from None
    admin_port = int(admin.sockets[0].getsockname()[1])
    bound = {"listen": _fmt(listen.host, port), "admin": _fmt(admin_addr.host, admin_port)}
    log.info("registry serving gRPC on %s, admin on %s", bound["listen"], bound["admin"])
    if config.ready_file is not None:
        write_ready_file(config.ready_file, bound)
    try:
        await stop.wait()
    finally:
        serving = False
        admin.close()
        await server.stop(STOP_GRACE)
        await core.close()
        await admin.wait_closed()

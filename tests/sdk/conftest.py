"""Fixtures of the SDK tests: a real registry process, HTTP apps on port 0, an address nobody listens on."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from plexus.sdk import Client
from plexus.testing.procs import ManagedProcess

from .http_apps import App


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    """A registry on port 0, one per test module (tests use their own service names); no warm-up and a short
    lease grace, so tests see withdrawals at once."""
    proc = ManagedProcess.plexus(["registry", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                                  "--warmup", "0", "--lease-grace", "1"])
    try:
        yield proc.address("listen")
    finally:
        proc.stop()


@pytest.fixture
def dead_address() -> Iterator[str]:
    """An address that refuses connections: bound but never listening, and held for the whole test so that no
    other process (tests run beside other suites) can take the port meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def make_app() -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def make(name: str, status: int = 200, headers: dict[str, str] | None = None) -> App:
        app = App(name, status, headers)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """SDK clients a test made; closed (without grace) when it ends."""
    made: list[Client] = []
    yield made
    for client in made:
        client.close(grace=0)

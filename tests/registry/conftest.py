"""Helpers for registry tests: start a real `plexus registry`, record what a real RegistryClient is pushed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from plexus.clients.registry import RegistryClient
from plexus.discovery.model import ServiceSet
from plexus.testing.procs import ManagedProcess, wait_for


class Recorder:
    """A watch callback that keeps every set it was given, in order."""

    def __init__(self) -> None:
        self.sets: list[ServiceSet] = []
        self._lock = threading.Lock()

    def __call__(self, sset: ServiceSet) -> None:
        with self._lock:
            self.sets.append(sset)

    def history(self) -> list[ServiceSet]:
        with self._lock:
            return list(self.sets)

    def last(self) -> ServiceSet | None:
        with self._lock:
            return self.sets[-1] if self.sets else None

    def addresses(self) -> list[str] | None:
        last = self.last()
        return None if last is None else sorted(i.address for i in last.instances)

    def wait_addresses(self, expected: list[str], timeout: float = 10.0) -> ServiceSet:
        wait_for(
            lambda: self.addresses() == sorted(expected), timeout, what=f"set {expected}; got {self.sets}"
        )
        last = self.last()
        assert last is not None
        return last


def registry_args(*extra: str, listen: str = "127.0.0.1:0") -> list[str]:
    return ["registry", "--listen", listen, "--admin", "127.0.0.1:0", *extra]


@pytest.fixture
def start_registry(procs: Any) -> Callable[..., ManagedProcess]:
    """``start_registry("--warmup", "0", listen=...)``: a ready registry, stopped by the procs fixture."""

    def start(*extra: str, listen: str = "127.0.0.1:0") -> ManagedProcess:
        proc: ManagedProcess = procs.plexus(*registry_args(*extra, listen=listen))
        return proc

    return start


@pytest.fixture
def clients() -> Iterator[Callable[..., RegistryClient]]:
    """Started RegistryClients, closed (without withdrawing) when the test ends."""
    made: list[RegistryClient] = []

    def make(address: str, **kw: Any) -> RegistryClient:
        kw.setdefault("reconnect_max", 0.5)
        client = RegistryClient(address, **kw)
        client.start()
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(withdraw=False, timeout=1.0)

"""Run the same behaviour tests against both registry clients.

``AsyncClientOnThread`` puts ``AsyncRegistryClient`` behind ``RegistryClient``'s blocking interface: the
client lives on a uvloop in its own thread (as the grpcio client lives on its own threads), so a test written
against the blocking interface drives either one. Callbacks run on that loop's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

import uvloop

from plexus.clients.registry import RegistryClient
from plexus.clients.registry_async import AsyncRegistryClient
from plexus.discovery.model import Instance, ServiceSet

T = TypeVar("T")
CALL_TIMEOUT = 10.0  # a call onto the loop thread that takes longer is a hang, not a slow machine


class BlockingClient(Protocol):
    publisher_id: str

    def start(self) -> None: ...
    def close(self, withdraw: bool = True, timeout: float = 2.0) -> None: ...
    @property
    def connected(self) -> bool: ...
    def set_published(self, instances: Sequence[Instance]) -> None: ...
    def publish_errors(self) -> list[tuple[int, str, str]]: ...
    def watch(self, service: str, callback: Callable[[ServiceSet], None]) -> None: ...
    def unwatch(self, service: str, callback: Callable[[ServiceSet], None]) -> None: ...
    def current(self, service: str) -> ServiceSet | None: ...
    def wait_for(self, service: str, timeout: float) -> ServiceSet | None: ...


class AsyncClientOnThread:
    def __init__(self, address: str, **kw: Any) -> None:
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="async-client-loop", daemon=True)
        self._thread.start()
        self.client: AsyncRegistryClient = self._run(self._make(address, kw))
        self.publisher_id = self.client.publisher_id

    @staticmethod
    async def _make(address: str, kw: dict[str, Any]) -> AsyncRegistryClient:
        return AsyncRegistryClient(address, **kw)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _call(self, fn: Callable[[], T]) -> T:
        async def on_loop() -> T:
            return fn()

        return self._run(on_loop())

    def start(self) -> None:
        self._call(self.client.start)

    def close(self, withdraw: bool = True, timeout: float = 2.0) -> None:
        if self._loop.is_closed():
            return  # closed already (RegistryClient.close may be called twice, too)
        try:
            self._run(self.client.aclose(withdraw, timeout), timeout + CALL_TIMEOUT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CALL_TIMEOUT)
            if not self._thread.is_alive():
                self._loop.close()

    @property
    def connected(self) -> bool:
        return self._call(lambda: self.client.connected)

    def set_published(self, instances: Sequence[Instance]) -> None:
        self._call(lambda: self.client.set_published(instances))

    def publish_errors(self) -> list[tuple[int, str, str]]:
        return self._call(self.client.publish_errors)

    def watch(self, service: str, callback: Callable[[ServiceSet], None]) -> None:
        self._call(lambda: self.client.watch(service, callback))

    def unwatch(self, service: str, callback: Callable[[ServiceSet], None]) -> None:
        self._call(lambda: self.client.unwatch(service, callback))

    def current(self, service: str) -> ServiceSet | None:
        return self._call(lambda: self.client.current(service))

    def wait_for(self, service: str, timeout: float) -> ServiceSet | None:
        return self._run(self.client.wait_for(service, timeout), timeout + CALL_TIMEOUT)


ClientFactory = Callable[..., BlockingClient]
KINDS = ("grpcio", "h2")


def factory(kind: str) -> ClientFactory:
    if kind == "grpcio":
        return RegistryClient
    return AsyncClientOnThread

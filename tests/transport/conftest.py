"""Fixtures for data-plane tests: a uvloop in a thread, upstream peers, and a DataPlane on that loop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from plexus.core.address import HostPort
from plexus.discovery.model import Instance
from plexus.transport import DataPlane, DataPlaneSettings
from transport.upstreams import HttpUpstream, LoopThread


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.stop()


class Mesh:
    """A DataPlane with shared egress and ingress listening, plus helpers to add upstreams."""

    def __init__(self, lt: LoopThread, **settings: Any) -> None:
        self.lt = lt
        self.plane = DataPlane(DataPlaneSettings(**settings))
        self.egress: HostPort = lt.run(self.plane.listen_shared_egress("127.0.0.1", 0))
        self.ingress: HostPort = lt.run(self.plane.listen_ingress("127.0.0.1", 0))
        self.upstreams: list[HttpUpstream] = []

    def http_upstreams(self, service: str, count: int, **weights: int) -> list[HttpUpstream]:
        ups = [HttpUpstream(f"{service}-{i}") for i in range(count)]
        for up in ups:
            self.lt.run(up.start())
        self.upstreams += ups
        self.set_instances(service, [f"127.0.0.1:{u.port}" for u in ups], weights)
        return ups

    def set_instances(
        self,
        service: str,
        addresses: list[str],
        weights: dict[str, int] | None = None,
        protocol: str = "http",
    ) -> None:
        instances = [
            Instance(service=service, address=a, protocol=protocol, weight=(weights or {}).get(f"w{i}", 100))
            for i, a in enumerate(addresses)
        ]
        self.lt.call(self.plane.update_service, service, instances)

    def close(self) -> None:
        self.lt.run(self.plane.close())
        for up in self.upstreams:
            self.lt.run(up.stop())


@pytest.fixture
def mesh(lt: LoopThread) -> Iterator[Mesh]:
    m = Mesh(lt, connect_timeout=0.5, request_timeout=5.0)
    try:
        yield m
    finally:
        m.close()

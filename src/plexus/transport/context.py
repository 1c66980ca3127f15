"""What every listener and connection of one data plane shares: loop, settings, counters, pool, limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from plexus.codec.http1 import Http1Limits
from plexus.proxy import DataPlaneStats

if TYPE_CHECKING:
    from plexus.transport.dataplane import DataPlaneSettings
    from plexus.transport.http_downstream import HttpDownstream
    from plexus.transport.upstream import UpstreamPool


@dataclass(slots=True)
class DataPlaneContext:
    loop: asyncio.AbstractEventLoop
    settings: DataPlaneSettings
    stats: DataPlaneStats
    limits: Http1Limits
    pool: UpstreamPool
    connections: set[HttpDownstream] = field(default_factory=set)
    tcp_connections: set[asyncio.Protocol] = field(default_factory=set)

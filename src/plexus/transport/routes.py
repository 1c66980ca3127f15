"""Compiled routes: what an HTTP listener needs to forward one request, built once, reused per request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from plexus.codec.http1 import RequestHead
from plexus.core import reasons
from plexus.proxy import Cluster, Endpoint, ServiceStats
from plexus.proxy.stream import HeaderLookup


class Route:
    """Where one service's requests go and what to add to them."""

    __slots__ = ("cluster", "connect_fail_reason", "extra", "local", "retry", "service", "stats")

    def __init__(
        self,
        service: str,
        stats: ServiceStats,
        *,
        cluster: Cluster | None = None,
        local: Endpoint | None = None,
    ) -> None:
        self.service = service
        self.stats = stats
        self.cluster = cluster
        self.local = local  # ingress: the one local app endpoint
        # Egress tells the provider sidecar which service this is; ingress adds nothing.
        self.extra = cluster.service_header_line if cluster is not None else b""
        self.retry = cluster is not None  # egress retries once on another endpoint; ingress has only one
        self.connect_fail_reason = (
            reasons.UPSTREAM_CONNECT_FAILED if cluster is not None else reasons.LOCAL_APP_UNAVAILABLE
        )

    def pick(self, head: RequestHead, exclude: Endpoint | None) -> Endpoint | None:
        if self.local is not None:
            return self.local
        cluster = self.cluster
        assert cluster is not None
        key = None
        name = cluster.hash_header
        if name is not None:
            for n, v in head.headers:
                if n.lower() == name:
                    key = v
                    break
        return cluster.balancer.pick(exclude, key)

    def pick_stream(self, lookup: HeaderLookup, exclude: Endpoint | None) -> Endpoint | str | None:
        """The endpoint for one request of any protocol, routed on its stream headers (see proxy.stream).

        None: no healthy endpoint. A ``str``: a reason code from ``plexus.core.reasons`` for a local reply
        (e.g. no route of the service's route table matched)."""
        if self.local is not None:
            return self.local
        cluster = self.cluster
        assert cluster is not None
        key = None
        name = cluster.hash_header
        if name is not None:
            value = lookup(name.decode("latin-1"))
            key = value.encode("latin-1") if value is not None else None
        return cluster.balancer.pick(exclude, key)


class Router(Protocol):
    """Resolve a request to a route, or to a reason code for a local reply."""

    def resolve(self, head: RequestHead) -> Route | str: ...

    def unknown_hook(self, head: RequestHead) -> Coroutine[Any, Any, Route | str] | None:
        """For a request ``resolve`` could not route: a way to wait for a route, or None."""
        ...


UnknownServiceHook = Callable[[str], Awaitable[bool]]

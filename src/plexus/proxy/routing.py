"""Routing decisions: which service a request is for, on egress (Host) and ingress (local services)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from plexus.core.address import HostPort

# Local services an HTTP request without a service name may fall to (gRPC rides HTTP/2).
HTTP_PROTOCOLS: Final = frozenset({"http", "grpc"})


def service_from_host(host: bytes | None) -> str | None:
    """The service named by a Host header: the host minus any port (``orders:8080`` → ``orders``)."""
    if not host:
        return None
    text = host.decode("latin-1").strip()
    if text.startswith("["):
        return None  # an IPv6 literal names no service
    name, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        name = text  # no port, or a colon inside the service name (com.acme.Orders:1.0)
    return name or None


@dataclass(frozen=True, slots=True)
class LocalService:
    service: str
    protocol: str
    app: HostPort


class IngressRoutes:
    """The local app services an ingress listener serves."""

    def __init__(self) -> None:
        self.services: dict[str, LocalService] = {}
        self._only_http: LocalService | None = None

    def set(self, service: str, protocol: str, app: HostPort) -> None:
        self.services[service] = LocalService(service, protocol, app)
        self._recompute()

    def remove(self, service: str) -> None:
        self.services.pop(service, None)
        self._recompute()

    def _recompute(self) -> None:
        http = [s for s in self.services.values() if s.protocol in HTTP_PROTOCOLS]
        self._only_http = http[0] if len(http) == 1 else None

    def resolve(self, service_header: bytes | None, host: bytes | None) -> LocalService | None:
        """``x-plexus-service``, else the Host naming a local service, else the only HTTP/gRPC one."""
        services = self.services
        if service_header is not None:
            return services.get(service_header.decode("latin-1"))
        name = service_from_host(host)
        if name is not None:
            found = services.get(name)
            if found is not None:
                return found
        return self._only_http

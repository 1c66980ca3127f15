"""plexus.clients: I/O clients of Plexus's own gRPC services (sync grpc on threads, loop-agnostic)."""

from plexus.clients.registry import RegistryClient, list_services

__all__ = ["RegistryClient", "list_services"]

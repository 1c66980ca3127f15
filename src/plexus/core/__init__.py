"""Shared vocabulary of every layer: errors, reason codes, addresses. No I/O here."""

from plexus.core.address import HostPort, parse_host_port
from plexus.core.errors import ConfigError, PlexusError, ProtocolError, ValidationError

__all__ = ["ConfigError", "HostPort", "PlexusError", "ProtocolError", "ValidationError", "parse_host_port"]

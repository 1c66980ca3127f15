"""Typed errors shared by every layer: each says what went wrong, where, and (when it can) what to do."""

from __future__ import annotations


class PlexusError(Exception):
    """Base of every error Plexus raises on purpose."""


class ConfigError(PlexusError):
    """A configuration value is invalid. ``where`` names the field path (and file:line when known)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class ProtocolError(PlexusError):
    """Bytes from a peer break the protocol.

    ``status_hint`` is the HTTP status a server should answer with (400, 413, 431, 501), as h11 does;
    ``reason`` is the stable reason code used in counters and logs (see ``plexus.core.reasons``).
    """

    def __init__(self, reason: str, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.status_hint = status_hint


class ValidationError(PlexusError):
    """A published or requested object is malformed: ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

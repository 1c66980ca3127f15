"""HOST:PORT parsing, the one place that knows about brackets for IPv6."""

from __future__ import annotations

from typing import NamedTuple

from plexus.core.errors import ValidationError


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str, field: str = "address", allow_zero: bool = True) -> HostPort:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``; raise ValidationError naming ``field`` when it is not one."""
    value = text.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not value[end + 1 :].startswith(":"):
            raise ValidationError(field, f"{text!r} is not [HOST]:PORT")
        host, port_text = value[1:end], value[end + 2 :]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValidationError(field, f"{text!r} is not HOST:PORT")
        if ":" in host:
            raise ValidationError(field, f"{text!r}: write an IPv6 host in brackets, [::1]:PORT")
    if not port_text.isdigit() or not port_text.isascii():
        raise ValidationError(field, f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535 or (port == 0 and not allow_zero):
        raise ValidationError(field, f"{text!r}: port {port} is out of range")
    if not host or any(c.isspace() for c in host) or len(host) > 253:
        raise ValidationError(field, f"{text!r}: bad host")
    return HostPort(host, port)

"""Decide from a connection's first bytes whether it speaks HTTP/1.x, something else, or cannot tell yet."""

from __future__ import annotations

from enum import Enum
from typing import Final

# Methods that open an HTTP/1.x request ("PRI * HTTP/2.0" is HTTP/2's preface, not ours).
_METHODS: Final = (
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
)
_LONGEST: Final = max(len(m) for m in _METHODS)


class Sniffed(Enum):
    HTTP = "http"
    OTHER = "other"
    UNDECIDED = "undecided"  # a prefix of a method: wait for more bytes (or the sniff timeout)


def sniff_http(prefix: bytes) -> Sniffed:
    """HTTP when ``prefix`` starts with a method and a space; OTHER when it cannot; else UNDECIDED."""
    head = prefix[:_LONGEST]
    for method in _METHODS:
        if head.startswith(method):
            return Sniffed.HTTP
        if method.startswith(head):
            return Sniffed.UNDECIDED
    return Sniffed.OTHER

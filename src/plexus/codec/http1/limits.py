"""Limits on what an HTTP/1.1 peer may send before the codec refuses it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MAX_HEADER_BYTES: Final = 60 * 1024  # Envoy's default (60 KiB); h11 uses 16 KiB
MAX_HEADERS: Final = 100  # Envoy's default header count
MAX_REQUEST_LINE: Final = 8 * 1024  # nginx's large_client_header_buffers line size; longer targets get 414


@dataclass(frozen=True, slots=True)
class Http1Limits:
    max_header_bytes: int = MAX_HEADER_BYTES  # request line + header lines (and trailers), names and values
    max_headers: int = MAX_HEADERS  # header lines, trailers included
    max_request_line: int = MAX_REQUEST_LINE  # bytes of the request target
    max_body_bytes: int | None = None  # None: stream any size

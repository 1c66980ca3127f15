"""Serialising HTTP/1.1 heads, chunks and local replies: byte joins, done once per message."""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

from plexus.codec.http1.heads import RequestHead

CHUNKED_HEADER: Final = b"transfer-encoding: chunked\r\n"
CONNECTION_CLOSE: Final = b"connection: close\r\n"
CONNECTION_KEEP_ALIVE: Final = b"connection: keep-alive\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"
CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
STATUS_LINES: Final = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def status_line(status: int, reason: bytes = b"") -> bytes:
    line = STATUS_LINES.get(status)
    if line is not None and (not reason or status < 600):
        return line
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def header_block(headers: list[tuple[bytes, bytes]], parts: list[bytes]) -> None:
    """Append ``name: value\\r\\n`` lines to ``parts`` (joined once by the caller)."""
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")


def encode_request_head(head: RequestHead, extra: bytes = b"") -> bytes:
    """The head to send upstream: HTTP/1.1, the end-to-end headers, framing, the trace lines
    (``head.trace_lines``), then ``extra`` header lines."""
    headers = head._headers
    if headers is None and not head.chunked and head.upgrade is None:  # the decoder's lines, as they came
        return b"".join(
            (head.method, b" ", head.target, b" HTTP/1.1\r\n", head.raw, head.trace_lines, extra, b"\r\n")
        )
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    if headers is None:
        parts.append(head.raw)
    else:
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
    if head.chunked:
        parts.append(CHUNKED_HEADER)
    if head.upgrade is not None:
        parts += (b"connection: upgrade\r\nupgrade: ", head.upgrade, b"\r\n")
    parts += (head.trace_lines, extra, b"\r\n")
    return b"".join(parts)


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def local_reply(
    status: int,
    *,
    error: str | None = None,
    hop: str | None = None,
    close: bool = False,
    body: bytes | None = None,
    head_only: bool = False,
) -> bytes:
    """A whole response written by the proxy itself (errors and refusals)."""
    if body is None:
        body = b"%d %s%s\n" % (
            status,
            HTTPStatus(status).phrase.encode() if status in STATUS_LINES else b"",
            b": " + error.encode() if error else b"",
        )
    parts = [
        status_line(status),
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(body),
    ]
    if error is not None:
        parts += (b"x-plexus-error: ", error.encode(), b"\r\n")
    if hop is not None:
        parts += (b"x-plexus-hop: ", hop.encode(), b"\r\n")
    if close:
        parts.append(CONNECTION_CLOSE)
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)

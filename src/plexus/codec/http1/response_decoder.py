"""HTTP/1.1 response decoder over httptools, for the proxy's upstream side.

Theory of operation: the caller says, before each request, whether it was a HEAD (``expect_head_response``),
because llhttp through httptools cannot be told to skip a HEAD response's body. For a HEAD the decoder
stops at the end of the final head, checks that no body byte followed it (an upstream that sends one has
lost framing: error), and starts a fresh parser for the next response. 1xx heads are delivered as heads
(status < 200) without an end; a 101 ends in ``on_response_upgrade`` with the bytes after the head. A body
that runs until close ends when the caller reports EOF (``eof()``). The reason phrase is not read (no
llhttp on_status callback: one call less per response); status lines are rewritten with the standard phrase.
"""

from __future__ import annotations

from typing import Final, Protocol

import httptools

from plexus.codec.http1.heads import ResponseHead
from plexus.codec.http1.limits import Http1Limits
from plexus.core import reasons
from plexus.core.errors import ProtocolError

_DROP_NAMES: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade"}
)
_HEADER_OVERHEAD: Final = 4
_PLAIN: Final = frozenset(
    {
        b"Server",
        b"Date",
        b"Content-Type",
        b"Cache-Control",
        b"ETag",
        b"Last-Modified",
        b"Vary",
        b"Set-Cookie",
        b"Expires",
        b"Location",
        b"Content-Encoding",
        b"server",
        b"date",
        b"content-type",
        b"cache-control",
        b"etag",
        b"vary",
    }
)


class ResponseSink(Protocol):
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...
    def on_response_upgrade(self, head: ResponseHead, tail: bytes) -> None: ...
    def on_response_error(self, error: ProtocolError) -> None: ...


class _Stop(Exception):
    """Stops llhttp: a refusal (kept on the decoder) or the end of a HEAD response's head."""


def _upstream_error(message: str) -> ProtocolError:
    return ProtocolError(reasons.UPSTREAM_PROTOCOL_ERROR, message, 502)


class ResponseDecoder:
    __slots__ = (
        "_chunked",
        "_content_length",
        "_count",
        "_error",
        "_error_reason",
        "_head",
        "_head_buf",
        "_header_bytes",
        "_headers",
        "_heads_seen",
        "_in_body",
        "_limits",
        "_parser",
        "_reason",
        "_upgrade",
        "dead",
        "is_head",
        "sink",
    )

    def __init__(self, sink: ResponseSink, limits: Http1Limits | None = None) -> None:
        self.sink = sink
        self._limits = limits or Http1Limits()
        self._parser = httptools.HttpResponseParser(self)
        self._error: ProtocolError | None = None
        self.dead = False
        self.is_head = False
        self._head_buf = b""
        self._heads_seen = 0
        self._head: ResponseHead | None = None
        self._in_body = False
        self._begin_message()

    def _begin_message(self) -> None:
        """Fresh per-message state, set after each message (see RequestDecoder._begin_message)."""
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._count = 0
        self._header_bytes = 0
        self._content_length: bytes | None = None
        self._chunked = False
        self._error_reason: bytes | None = None
        self._upgrade = False

    def expect_head_response(self, is_head: bool) -> None:
        """Called before each request is sent: True when it is a HEAD."""
        self.is_head = is_head
        self._head_buf = b""
        self._heads_seen = 0

    def set_sink(self, sink: ResponseSink, is_head: bool) -> None:
        """Report the next response to ``sink``; ``is_head``: it answers a HEAD request."""
        self.sink = sink
        self.is_head = is_head
        if is_head:
            self._head_buf = b""
            self._heads_seen = 0

    @property
    def in_close_delimited_body(self) -> bool:
        return self._in_body and self._head is not None and self._head.close_delimited

    def feed(self, data: bytes) -> None:
        if self.dead:
            return
        if self.is_head:
            self._head_buf += data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.dead = True
            head = self._head
            if head is None or head.status != 101:
                self.sink.on_response_error(_upstream_error("upgrade without a 101 response"))
                return
            offset = exc.args[0] if exc.args else len(data)
            self.sink.on_response_upgrade(head, data[offset:])
        except httptools.HttpParserError:
            if self._error is None and self.is_head and self._head is not None and self._head.status >= 200:
                self._finish_head_response()
                return
            self.dead = True
            error, self._error = self._error, None
            self.sink.on_response_error(error or _upstream_error("malformed response from upstream"))

    def _finish_head_response(self) -> None:
        head = self._head
        assert head is not None
        end = -4
        for _ in range(self._heads_seen):
            end = self._head_buf.find(b"\r\n\r\n", end + 4)
        if end < 0 or len(self._head_buf) > end + 4:
            self.dead = True
            self.sink.on_response_error(_upstream_error("a response to HEAD carried a body"))
            return
        self._parser = httptools.HttpResponseParser(self)
        self._begin_message()
        self.is_head = False
        self._head = None
        self.sink.on_response_head(head)
        self.sink.on_response_end()

    def eof(self) -> bool:
        """The upstream closed: True when that ended a close-delimited body (the response is complete)."""
        if self.dead or not self.in_close_delimited_body:
            return False
        self.dead = True
        self._in_body = False
        self.sink.on_response_end()
        return True

    def _refuse(self, message: str) -> _Stop:
        self._error = _upstream_error(message)
        return _Stop(message)

    # -- llhttp callbacks ---------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        count = self._count + 1
        size = self._header_bytes + len(name) + len(value) + _HEADER_OVERHEAD
        self._count = count
        self._header_bytes = size
        if count > self._limits.max_headers or size > self._limits.max_header_bytes:
            raise self._refuse("response headers over the limits")
        if self._in_body:
            return  # trailers: not forwarded
        if name in _PLAIN:
            self._headers.append((name, value))  # the common headers, as commonly spelled: nothing to check
            return
        lname = name.lower()
        if lname in _DROP_NAMES:
            if lname == b"transfer-encoding":
                if value.lower() != b"chunked" or self._chunked:
                    raise self._refuse(f"Transfer-Encoding {value[:40]!r} is not chunked")
                self._chunked = True
            elif lname == b"upgrade":
                self._upgrade = True
                self._headers.append((name, value))  # a 101 carries it to the client
            return
        if lname == b"content-length":
            self._content_length = value
        elif lname == b"x-plexus-error":
            self._error_reason = value
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status: int = parser.get_status_code()
        version = parser.get_http_version()
        content_length = int(self._content_length) if self._content_length is not None else None
        head = ResponseHead(
            status,
            self._reason,
            version,
            self._headers,
            content_length,
            self._chunked,
            parser.should_keep_alive(),
            self._error_reason,
        )
        self._head = head
        self._heads_seen += 1
        if status == 101:
            return  # httptools raises HttpParserUpgrade right after
        if self.is_head and status >= 200:
            raise _Stop("end of a HEAD response")
        self._in_body = status >= 200
        self.sink.on_response_head(head)

    def on_body(self, body: bytes) -> None:
        self.sink.on_response_body(body)

    def on_message_complete(self) -> None:
        head = self._head
        self._begin_message()
        if head is None or head.status < 200:
            return  # a 1xx head has no end of its own
        self._in_body = False
        self._head = None
        self.sink.on_response_end()

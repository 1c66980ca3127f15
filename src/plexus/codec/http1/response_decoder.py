"""HTTP/1.1 response decoder over httptools, for the proxy's upstream side.

Theory of operation: llhttp frames each response (head end, Content-Length or chunked body, end), but no
header is handed to Python one by one: the parser has no on_header callback. The bytes of a head are kept
as they arrive; when llhttp reports the head complete, the head is cut out of them whole and scanned once
by a regular expression for the few fields a proxy acts on (framing, hop-by-hop lines, x-plexus-error).
The end-to-end lines travel on as one ``bytes`` (``ResponseHead.raw``).

The caller says, before each request, whether it was a HEAD (``set_sink(sink, is_head)``), because llhttp
through httptools cannot be told to skip a HEAD response's body. For a HEAD the decoder stops at the end of
the final head, checks that no body byte followed it (an upstream that sends one has lost framing: error),
and starts a fresh parser for the next response. 1xx heads are delivered as heads (status < 200) without an
end; a 101 ends in ``on_response_upgrade`` with the bytes after the head. A body that runs until close ends
when the caller reports EOF (``eof()``). The reason phrase is not read: status lines are rewritten with the
standard phrase. Bytes of a second response in the read that ended the first one are an error (the proxy
never pipelines upstream, so nobody asked for them).
"""

from __future__ import annotations

import re
from typing import Final, Protocol

import httptools

from plexus.codec.http1.heads import ResponseHead
from plexus.codec.http1.limits import Http1Limits
from plexus.core import reasons
from plexus.core.errors import ProtocolError

# The header names a proxy must look at, found in one pass over the lower-cased head. A name matches only
# at a line start and only when the colon follows at once: llhttp has already refused whitespace before the
# colon, bare CR/LF and control bytes. "\\n" as the anchor (not "\\r\\n"): a one-byte literal prefix lets
# the regex engine skip ahead with memchr, several times faster on a typical head.
_SPECIAL: Final = re.compile(
    rb"\n(c(?:onnection|ontent-length)|keep-alive|proxy-connection|t(?:ransfer-encoding|e|railer)|upgrade"
    rb"|x-plexus-error):"
)
_TYPICAL: Final = [b"content-length", b"connection"]
_HOP_NAMES: Final = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer"})


class ResponseSink(Protocol):
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...
    def on_response_upgrade(self, head: ResponseHead, tail: bytes) -> None: ...
    def on_response_error(self, error: ProtocolError) -> None: ...


class _Stop(Exception):
    """Stops llhttp: a refusal (kept on the decoder) or the end of a HEAD response's head."""


def _value(raw: bytes, name: bytes, low: bytes | None = None) -> bytes:
    """The value of the first ``name`` line of a head (``low``: the head lower-cased, when ``raw`` is not)."""
    start = (raw if low is None else low).find(b"\n" + name + b":") + len(name) + 2
    end = raw.find(b"\r", start)
    return raw[start : end if end >= 0 else len(raw)].strip(b" \t")


def _strip_lines(raw: bytes, low: bytes, names: list[bytes]) -> bytes:
    """``raw`` without every line named in ``names`` (each line is CRLF + name + ":" + value).

    Searched from the end: servers tend to write Connection last, so the common case is one rfind."""
    for name in names:
        needle = b"\n" + name + b":"
        i = low.rfind(needle)
        while i > 0:
            end = low.find(b"\r", i)
            if end < 0:
                raw, low = raw[: i - 1], low[: i - 1]
            else:
                raw, low = raw[: i - 1] + raw[end:], low[: i - 1] + low[end:]
            i = low.rfind(needle, 0, i)
    return raw


def _upstream_error(message: str) -> ProtocolError:
    return ProtocolError(reasons.UPSTREAM_PROTOCOL_ERROR, message, 502)


class ResponseDecoder:
    __slots__ = (
        "_buf",
        "_error",
        "_head",
        "_head_end",
        "_in_body",
        "_limits",
        "_max_head",
        "_max_header_bytes",
        "_max_headers",
        "_parser",
        "_pos",
        "body_out",
        "dead",
        "is_head",
        "sink",
    )

    def __init__(self, sink: ResponseSink, limits: Http1Limits | None = None) -> None:
        self.sink = sink
        self._limits = limits = limits or Http1Limits()
        # A status line is far shorter than a request line, but the same allowance keeps one rule for both.
        self._max_head = limits.max_header_bytes + limits.max_request_line
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._parser = httptools.HttpResponseParser(self)
        self._error: ProtocolError | None = None
        self.dead = False
        self.is_head = False
        # Bytes from the start of the head being read (b"" while in a body or between heads).
        self._buf: bytes | bytearray = b""
        self._pos = 0  # where in _buf the next head starts (after a 1xx head)
        self._head_end = 0
        self._head: ResponseHead | None = None
        self._in_body = False
        # When set, body bytes are appended here instead of reported through sink.on_response_body (one
        # call less per read): for a sink that forwards them unchanged. The sink sets and clears it.
        self.body_out: list[bytes] | None = None

    def expect_head_response(self, is_head: bool) -> None:
        """Called before each request is sent: True when it is a HEAD."""
        self.is_head = is_head

    def set_sink(self, sink: ResponseSink, is_head: bool) -> None:
        """Report the next response to ``sink``; ``is_head``: it answers a HEAD request."""
        self.sink = sink
        self.is_head = is_head

    @property
    def in_close_delimited_body(self) -> bool:
        return self._in_body and self._head is not None and self._head.close_delimited

    def feed(self, data: bytes) -> None:
        if self.dead:
            return
        if not self._in_body:
            buf = self._buf
            if not buf:
                self._buf = data  # the usual case: a whole head in one read, kept as is
            else:
                if isinstance(buf, bytes):
                    self._buf = buf = bytearray(buf)
                buf += data  # in place: a head dripped in many reads stays linear
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
            return
        except httptools.HttpParserError:
            if self._error is None and self.is_head and self._head is not None and self._head.status >= 200:
                self._finish_head_response()
                return
            self.dead = True
            error, self._error = self._error, None
            self.sink.on_response_error(error or _upstream_error("malformed response from upstream"))
            return
        if not self._in_body and len(self._buf) - self._pos > self._max_head and not self.dead:
            # llhttp keeps a partial head inside itself without telling us; bound what we keep of it.
            self.dead = True
            self.sink.on_response_error(_upstream_error("response head over the limits"))

    def _finish_head_response(self) -> None:
        head = self._head
        assert head is not None
        if len(self._buf) > self._head_end + 4:
            self.dead = True
            self.sink.on_response_error(_upstream_error("a response to HEAD carried a body"))
            return
        self._parser = httptools.HttpResponseParser(self)
        self._buf = b""
        self._pos = 0
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

    # -- llhttp callbacks (no on_header, on_status, on_message_begin: each would be a call per message) --

    def on_headers_complete(self) -> None:
        buf = self._buf
        start = self._pos
        # llhttp parsed a status line here, so an "H" at the start means "HTTP/" (one index, no method call).
        if start >= len(buf) or buf[start] != 72:  # ord("H")
            start = buf.find(b"HTTP/", start)  # llhttp skips empty lines before a status line
            if start < 0:
                raise self._refuse("a second response in the read that ended the first")
        line_end = buf.find(b"\r\n", start)
        end = buf.find(b"\r\n\r\n", line_end)
        if end < 0:
            raise self._refuse("response head without CRLF line ends")
        raw = buf[line_end:end] if isinstance(buf, bytes) else bytes(buf[line_end:end])
        has_length = chunked = False
        error_reason: bytes | None = None
        if raw:
            size = len(raw)
            # A header line is at least 4 bytes ("\r\nX:"): a short head cannot hold too many to count.
            if size > self._max_header_bytes or (
                size > 4 * self._max_headers and raw.count(b"\n") > self._max_headers
            ):
                raise self._refuse("response headers over the limits")
            low = raw.lower()
            names = _SPECIAL.findall(low)
            if names == _TYPICAL:  # Content-Length, then Connection last: nginx, most app servers
                has_length = True
                cut = low.rfind(b"\r\nconnection:")
                # The Connection line is usually the head's last: then dropping it is one slice.
                last = low.find(b"\r", cut + 2) < 0
                raw = raw[:cut] if last else _strip_lines(raw, low, [b"connection"])
            elif names:
                has_length, chunked, error_reason, raw = self._special_lines(names, raw, low)
        parser = self._parser
        status: int = parser.get_status_code()
        head = ResponseHead(status, raw, has_length, chunked, parser.should_keep_alive(), error_reason)
        self._head = head
        if status == 101:
            return  # httptools raises HttpParserUpgrade right after
        if status < 200:
            self._pos = end + 4  # the final head follows this one
            self.sink.on_response_head(head)
            return
        if self.is_head:
            self._head_end = end
            raise _Stop("end of a HEAD response")
        self._buf = b""
        self._pos = 0
        self._in_body = True
        self.sink.on_response_head(head)

    def _special_lines(
        self, names: list[bytes], raw: bytes, low: bytes
    ) -> tuple[bool, bool, bytes | None, bytes]:
        """Framing, x-plexus-error and hop-by-hop lines of a head: (has_length, chunked, error, raw)."""
        has_length = chunked = False
        error_reason: bytes | None = None
        strip: list[bytes] = []
        for name in names:
            if name == b"content-length":
                has_length = True
            elif name == b"transfer-encoding":
                if _value(low, name).lower() != b"chunked" or chunked:
                    value = _value(raw, name, low)[:40]
                    raise self._refuse(f"Transfer-Encoding {value!r} is not chunked")
                chunked = True
                strip.append(name)
            elif name == b"x-plexus-error":
                error_reason = _value(raw, name, low)
            elif name in _HOP_NAMES:
                strip.append(name)
        if strip:
            raw = _strip_lines(raw, low, strip)
        return has_length, chunked, error_reason, raw

    def on_body(self, body: bytes) -> None:
        out = self.body_out
        if out is not None:
            out.append(body)
        else:
            self.sink.on_response_body(body)

    def on_message_complete(self) -> None:
        head = self._head
        if head is None or head.status < 200:
            return  # a 1xx head has no end of its own
        self._in_body = False
        self._head = None
        self.sink.on_response_end()

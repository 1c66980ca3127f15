"""HTTP/1.1 response decoder over httptools, for the proxy's upstream side.

Theory of operation: llhttp frames each response (head end, Content-Length or chunked body, end), but no
header is handed to Python one by one: the parser has no on_header callback. The bytes of a head are kept
as they arrive; when llhttp reports the head complete, the head is cut out of them whole and scanned once
by a regular expression for the few fields a proxy acts on (framing, hop-by-hop lines, x-plexus-error).
The end-to-end lines travel on as one ``bytes`` (``ResponseHead.raw``).

Servers answer with byte-identical heads again and again (a Date line changes once a second), so the
analysis is memoized by the head's bytes from the status line through its CRLFCRLF. That key holds the
version, the status and every header line: all that the analysis reads, and all that llhttp's status and
keep-alive verdict depend on (llhttp clears its flags at each message's start). A hit hands out the same
``ResponseHead`` object again (nothing mutates one). Each decoder first compares the bytes at the head's
start with the head it saw last (one slice, no search); else the head's end is searched once and a table
shared by the decoders with the same limits (the analysis checks them) is consulted; only a miss there
analyses. Refused heads are never cached.

A whole response in one read, whose head is the decoder's last head and whose body is exactly its
Content-Length, skips llhttp altogether (``feed``, ``_skip_parser``): the same events in the same order,
with the decoder's state around them what llhttp's callbacks would leave. That needs llhttp at the start of
a message (nothing of a head kept since the last message ended), a head that llhttp frames by Content-Length
alone and after which it reads on (final, keep-alive, not chunked, not 204 or 304, whose length llhttp
ignores; llhttp refuses a second Content-Length), and a read that is not the answer to a HEAD. The last
head is the head of the last message llhttp or the skip ended, so a skip never follows a message that closed
llhttp (a Connection: close). Whether a head may skip is worked out the second time it is seen, so a stream
of heads that never repeat (a changing Content-Length) pays nothing for it. Anything else goes through
llhttp as before.

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

# Analysed heads by head bytes (status line through CRLFCRLF), one table per (max_header_bytes, max_headers):
# a head accepted under looser limits must not be handed to a decoder with tighter ones. Bounded: a table is
# cleared when full (a varying header such as a request id in every head would otherwise grow it forever);
# 256 distinct heads cover the few shapes a service answers with, times the Date values of a second or two.
_HEADS_MAX: Final = 256
# Longer heads are not kept in a table (only as a decoder's memo): 256 of them stay under ~2 MiB with their
# analysed copies, where heads at the limit (60 KiB) could pin 17 MiB. Typical heads are 100-600 bytes.
_HEAD_KEPT_MAX: Final = 4096
# Each entry: the head, and the length of a whole response with it when one may skip llhttp (-1: none may;
# _UNKNOWN: not worked out yet).
_HEADS: Final[dict[tuple[int, int], dict[bytes, tuple[ResponseHead, int]]]] = {}
_UNKNOWN: Final = -2
# Never handed out: the first memo of a decoder, whose key (None) equals no slice of bytes.
_NO_HEAD: Final = ResponseHead(0, b"", False, False, False, None)


class ResponseSink(Protocol):
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...
    def on_response_upgrade(self, head: ResponseHead, tail: bytes) -> None: ...
    def on_response_error(self, error: ProtocolError) -> None: ...


class _Released:
    """The sink of a released decoder (ResponseDecoder.release): nothing reaches it, a dead decoder reads
    nothing."""

    def on_response_head(self, head: ResponseHead) -> None:
        pass

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_end(self) -> None:
        pass

    def on_response_upgrade(self, head: ResponseHead, tail: bytes) -> None:
        pass

    def on_response_error(self, error: ProtocolError) -> None:
        pass


_RELEASED: Final = _Released()
_IDLE_PARSER: Final = httptools.HttpResponseParser(_RELEASED)  # a released decoder's: never fed


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


def _whole_length(head: ResponseHead, key: bytes) -> int:
    """The length of a whole response with this head (``key``: its bytes) when one may skip llhttp, else -1.

    Only for a head llhttp frames by Content-Length alone, and after which it reads on: final, keep-alive,
    not chunked, not 204 or 304 (whose Content-Length llhttp ignores)."""
    if not head.keep_alive or not head.has_length or head.chunked or head.status < 200:
        return -1
    if head.status == 204 or head.status == 304:
        return -1
    # llhttp has refused a second Content-Length, and anything but digits and blanks in the value.
    value = key.lower().partition(b"\ncontent-length:")[2].partition(b"\r")[0].strip(b" \t")
    return len(key) + int(value) if value.isdigit() else -1


def _upstream_error(message: str) -> ProtocolError:
    return ProtocolError(reasons.UPSTREAM_PROTOCOL_ERROR, message, 502)


class ResponseDecoder:
    __slots__ = (
        "_buf",
        "_cache",
        "_error",
        "_head",
        "_head_end",
        "_in_body",
        "_limits",
        "_max_head",
        "_max_header_bytes",
        "_max_headers",
        "_memo_head",
        "_memo_key",
        "_memo_len",
        "_memo_whole",
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
        cache_key = (limits.max_header_bytes, limits.max_headers)
        cache = _HEADS.get(cache_key)
        if cache is None:
            if len(_HEADS) >= 16:  # (only tests build decoders with many different limits)
                _HEADS.clear()
            cache = _HEADS[cache_key] = {}
        self._cache = cache
        # The last head this decoder analysed or found: its key (head bytes), its length, the head, and the
        # length of a whole response with it that may skip llhttp (-1: none may; _UNKNOWN: not known yet).
        self._memo_key: bytes | None = None
        self._memo_len = 0
        self._memo_head = _NO_HEAD
        self._memo_whole = -1
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
                # llhttp stands at a message's start. A whole response with the memo's head skips it.
                if (
                    len(data) == self._memo_whole
                    and data[: self._memo_len] == self._memo_key
                    and not self.is_head
                ):
                    self._skip_parser(data)
                    return
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
            self._parser_failed()
            return
        if not self._in_body and len(self._buf) - self._pos > self._max_head and not self.dead:
            # llhttp keeps a partial head inside itself without telling us; bound what we keep of it.
            self.dead = True
            self.sink.on_response_error(_upstream_error("response head over the limits"))

    def _skip_parser(self, data: bytes) -> None:
        """The events llhttp would report for ``data``: the memo's head, then its whole body, then the end.

        The decoder's state around each event is what llhttp's callbacks leave, and an exception from the
        sink ends the decoder as one raised inside llhttp does (httptools turns it into a parser error)."""
        head = self._memo_head
        n = self._memo_len
        try:
            self._head = head  # (as on_headers_complete leaves it)
            self._in_body = True
            self.sink.on_response_head(head)
            if len(data) > n:  # (llhttp calls on_body only for a body byte)
                out = self.body_out
                if out is not None:
                    out.append(data[n:])
                else:
                    self.sink.on_response_body(data[n:])
            self._in_body = False  # (as on_message_complete leaves it)
            self._head = None
            self.sink.on_response_end()
        except BaseException:  # what httptools catches in a callback (and reports as a parser error)
            self._parser_failed()

    def _parser_failed(self) -> None:
        """llhttp stopped on an error: ours (a refusal, the end of a HEAD response's head) or its own."""
        if self._error is None and self.is_head and self._head is not None and self._head.status >= 200:
            self._finish_head_response()
            return
        self.dead = True
        error, self._error = self._error, None
        self.sink.on_response_error(error or _upstream_error("malformed response from upstream"))

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

    def release(self) -> None:
        """The connection is gone: read nothing more, and let go of the sink and the parser (whose callbacks
        are this decoder's methods). The connection's objects and the exchange it last served refer to one
        another through these; without them they are freed by reference counting when the connection
        closes, not left for the cycle collector, which a sidecar runs rarely."""
        self.dead = True
        self._parser = _IDLE_PARSER
        self.sink = _RELEASED
        self.body_out = None

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
        if buf[start : start + self._memo_len] == self._memo_key:
            head = self._memo_head  # the same head as this decoder's last one: no search, no analysis
            if self._memo_whole == _UNKNOWN:  # seen twice in a row: may the next one skip llhttp?
                self._memo_whole = _whole_length(head, self._memo_key)
        else:
            # llhttp parsed a status line here, so an "H" at the start means "HTTP/" (no method call).
            if start >= len(buf) or buf[start] != 72:  # ord("H")
                start = buf.find(b"HTTP/", start)  # llhttp skips empty lines before a status line
                if start < 0:
                    raise self._refuse("a second response in the read that ended the first")
            end = buf.find(b"\r\n\r\n", start) + 4  # (a status line holds no CRLF: the headers' end)
            if end < 4:
                raise self._refuse("response head without CRLF line ends")
            key = buf[start:end]
            if not isinstance(key, bytes):
                key = bytes(key)  # (a head dripped in over several reads)
            cache = self._cache
            entry = cache.get(key)
            if entry is None:
                head = self._analyse(key)
                whole = _UNKNOWN  # worked out when the head comes again: most heads of a busy API never do
                if end - start <= _HEAD_KEPT_MAX:
                    if len(cache) >= _HEADS_MAX:
                        cache.clear()
                    cache[key] = (head, whole)
            else:
                head, whole = entry
                if whole == _UNKNOWN:
                    whole = _whole_length(head, key)
                    cache[key] = (head, whole)
            self._memo_key = key
            self._memo_len = end - start
            self._memo_head = head
            self._memo_whole = whole
        self._head = head
        status = head.status
        if status >= 200:
            if self.is_head:
                self._head_end = start + self._memo_len - 4
                raise _Stop("end of a HEAD response")
            self._buf = b""
            self._pos = 0
            self._in_body = True
            self.sink.on_response_head(head)
            return
        if status == 101:
            return  # httptools raises HttpParserUpgrade right after
        self._pos = start + self._memo_len  # the final head follows this one
        self.sink.on_response_head(head)

    def _analyse(self, key: bytes) -> ResponseHead:
        """The head of ``key`` (status line through CRLFCRLF): limits, framing, hop-by-hop lines cut."""
        raw = key[key.find(b"\r\n") : -4]  # the header lines as received
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
            if names == _TYPICAL:  # Content-Length, then Connection: nginx, most app servers
                has_length = True
                # The Connection line is usually the head's last: then dropping it is one slice. (partition,
                # not rfind: a METH_O call, where find's argument parsing costs more than the search.)
                before, _, last = low.rpartition(b"\r\n")
                if last[:11] == b"connection:":
                    raw = raw[: len(before)]
                else:
                    raw = _strip_lines(raw, low, [b"connection"])
            elif names:
                has_length, chunked, error_reason, raw = self._special_lines(names, raw, low)
        parser = self._parser
        # Both read from llhttp, and both decided by the key alone: the version and status are in its status
        # line, and the keep-alive verdict by its Connection, Content-Length and Transfer-Encoding lines.
        return ResponseHead(
            parser.get_status_code(), raw, has_length, chunked, parser.should_keep_alive(), error_reason
        )

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

"""HTTP/1.1 request decoder: httptools (llhttp) parses, this class adds the checks llhttp lacks.

Theory of operation: ``feed(data)`` hands bytes to llhttp, whose callbacks land here; complete facts go to a
sink (``on_request_head``, ``on_request_body``, ``on_request_end``, ``on_upgrade``, ``on_request_error``).
After an error the decoder is dead and ignores further bytes: the caller answers ``error.status_hint`` and
closes, because once framing is in doubt nothing later on the connection can be trusted.

llhttp already refuses (verified in tests/codec/test_catalogue.py): Content-Length with Transfer-Encoding,
duplicate Content-Length, non-digit lengths (+5, 0x5, 5_0, non-ASCII), obs-fold, bare CR/LF, NUL and control
bytes, bad chunk sizes and terminators, unknown methods. Added here: a Transfer-Encoding other than exactly
``chunked`` (501; llhttp takes ``gzip, chunked``), HTTP versions other than 1.0/1.1 (505; llhttp takes 2.0
and 0.9), a missing or repeated Host, CONNECT (501), header count/bytes (431) and target length (414)
limits, body limits (413), and Transfer-Encoding on HTTP/1.0. Trailers are parsed, counted, and dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Final, Protocol

import httptools

from plexus.codec.http1 import errors
from plexus.codec.http1.heads import TRACE_HEADERS, RequestHead, trace_of_block
from plexus.codec.http1.limits import Http1Limits
from plexus.core import speedups
from plexus.core.errors import ProtocolError

# What the decoder does with a header, by lower-cased name; anything absent is forwarded as is.
_FORWARD: Final = -1  # not 0: `get(name) or ...` must not mistake it for a miss
_CONTENT_LENGTH: Final = 1
_TRANSFER_ENCODING: Final = 2
_HOST: Final = 3
_CONNECTION: Final = 4
_EXPECT: Final = 5
_UPGRADE: Final = 6
_SERVICE: Final = 7
_DROP: Final = 8  # hop-by-hop (RFC 9110 §7.6.1) or proxy-owned
_USER_AGENT: Final = 9  # forwarded, and kept on the head for telemetry
_CALLER: Final = 10  # x-plexus-caller: forwarded, and kept on the head (the inbound peer's workload)
_TRACE: Final = 11  # trace context (heads.TRACE_HEADERS): held apart on the head, forwarded by the proxy
_ACTIONS: Final = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"host": _HOST,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    b"x-plexus-service": _SERVICE,
    b"keep-alive": _DROP,
    b"proxy-connection": _DROP,
    b"te": _DROP,
    b"trailer": _DROP,
    b"user-agent": _USER_AGENT,
    b"x-plexus-caller": _CALLER,
    **dict.fromkeys(TRACE_HEADERS, _TRACE),
}
# Common spellings looked up as sent, before paying for lower(); _FORWARD entries are spelled out too.
_ACTIONS.update({k.title(): v for k, v in list(_ACTIONS.items())})
_ACTIONS.update(
    {
        b"Accept": _FORWARD,
        b"Content-Type": _FORWARD,
        b"Accept-Encoding": _FORWARD,
        b"Authorization": _FORWARD,
        b"Cookie": _FORWARD,
    }
)
_HEADER_OVERHEAD: Final = 4  # ": " and CRLF, so the byte count matches the wire
_STANDARD_CONNECTION_TOKENS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})


# -- the fast path (see RequestDecoder) ----------------------------------------------------------------------
# The header lines the fast path looks at, found in one pass over the lower-cased head (not re.IGNORECASE,
# which costs the memchr skip below): the name (group 1) and where the value is, as llhttp hands it over
# (group 2: leading whitespace skipped, trailing kept). A name matches only at a line start and only when
# the colon follows at once: llhttp has already refused whitespace before the colon, bare CR/LF, obs-fold
# and control bytes in this head. "\\n" first: a one-byte literal prefix lets the regex engine skip ahead
# with memchr.
_FAST_LINES: Final = re.compile(
    rb"\n(host|user-agent|x-plexus-caller|x-plexus-service|traceparent|x-request-id|x-b3-traceid|x-b3-spanid"
    rb"|x-b3-parentspanid|x-b3-sampled|content-length|connection|transfer-encoding|expect|upgrade|keep-alive"
    rb"|proxy-connection|te|trailer):[ \t]*([^\r]*)"
)
# What the fast path does with each of those names; _SLOW: leave the head to the general path (framing,
# Expect, Upgrade, hop-by-hop names: rarer, and the general path's checks are the reference).
_SLOW: Final = 0
_FAST_ACTIONS: Final = {
    b"host": _HOST,
    b"user-agent": _USER_AGENT,
    b"x-plexus-caller": _CALLER,
    b"x-plexus-service": _SERVICE,
    **dict.fromkeys(TRACE_HEADERS, _TRACE),
    b"content-length": _CONTENT_LENGTH,
    b"connection": _CONNECTION,
    **dict.fromkeys(
        (b"transfer-encoding", b"expect", b"upgrade", b"keep-alive", b"proxy-connection", b"te", b"trailer"),
        _SLOW,
    ),
}
_SIMPLE_CONNECTION: Final = frozenset({b"keep-alive", b"close"})  # Connection values the fast path drops
# Heads seen before, by their bytes (request line to the blank line), as RequestHead's arguments: a client
# sends the same head again and again. A head with trace context is kept only without its trace block (the
# ids differ per request), and only when those are its only trace lines. One table per set of limits (what a
# head passed depends on them); cleared when full.
_HEADS_KEPT: Final = 512
_heads_by_limits: dict[Http1Limits, dict[bytes, tuple[Any, ...]]] = {}


# The trace lines a proxy writes (plexus.proxy.tracing: x-request-id, then traceparent, lower-case, one space,
# no other whitespace), "\r\nx-request-id: ID\r\ntraceparent: TP" followed by "\r\n", each value one or
# more bytes of [!-~]: cut out of a head before it is looked up among the heads seen before, so a provider
# sidecar finds its callers' heads there too, whatever their ids. Found without a regex (``_known``): the two
# names by position, the values' bytes by their classes through one translate table, compared with the shape
# the block must have. The classes split visible ASCII the way a tracer's checks see a block (lower-case hex
# digits "x", "-" itself, the quote and the backslash '"', any other visible byte "!"; CR, LF and space kept,
# anything else "?"), so a block of the same classes as one the tracer approved is approved too (see
# RequestDecoder's ``block_check``); _FOLD_CLASSES folds them into what the decoder itself needs.
_BLOCK_START: Final = b"\r\nx-request-id: "
_BLOCK_MIDDLE: Final = b"\r\ntraceparent: "
_BLOCK_CLASSES: Final = bytes(
    ord("x")
    if c in b"0123456789abcdef"
    else c
    if c in b"-\r\n "
    else ord('"')
    if c in b'"\\'
    else ord("!")
    if 0x21 <= c <= 0x7E
    else ord("?")
    for c in range(256)
)
_FOLD_CLASSES: Final = bytes(ord("!") if c in b'x-"!' else c for c in range(256))
_TRACE_AT: Final = 13  # RequestHead's arguments: where ``trace`` is
_join: Final = b"".join
_native_block: Final = speedups.known_block  # (see _known)
# What RequestDecoder._known compares a head with (see _remember_block).
_BlockSeen = tuple[bytes, bytes, int, int, int, bytes, tuple[Any, ...], bool]


def _block_shape(id_len: int, parent_len: int) -> bytes:
    """What a block's bytes (``RequestHead.trace_block``) through _BLOCK_CLASSES then _FOLD_CLASSES must be,
    for values of these lengths."""
    return b"!" * 13 + b" " + b"!" * id_len + b"\r\n" + b"!" * 12 + b" " + b"!" * parent_len + b"\r\n"


class _FastPathLeft(Exception):
    """Raised inside an llhttp callback: this head is for the general path (RequestDecoder._to_general)."""


class BodySink(Protocol):
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...


class RequestSink(Protocol):
    def on_request_head(self, head: RequestHead) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...
    def on_upgrade(self, tail: bytes) -> None: ...
    def on_request_error(self, error: ProtocolError) -> None: ...


class _Released:
    """The sink of a released decoder (RequestDecoder.release): nothing reaches it, a dead decoder reads
    nothing."""

    def on_request_head(self, head: RequestHead) -> None:
        pass

    def on_request_body(self, data: bytes) -> None:
        pass

    def on_request_end(self) -> None:
        pass

    def on_upgrade(self, tail: bytes) -> None:
        pass

    def on_request_error(self, error: ProtocolError) -> None:
        pass


_RELEASED: Final = _Released()


class _Refused(Exception):
    """Raised inside an llhttp callback to stop parsing; the ProtocolError is kept on the decoder."""


class RequestDecoder:
    """Two paths over one stream of requests.

    The fast path (a connection's first): an llhttp parser with no per-header callback. The bytes of a head
    are kept as they arrive; when llhttp reports it complete, the head is cut out whole and looked up among
    the heads seen before, or scanned once (``_analyse``) for the few lines a proxy acts on; the other lines
    travel on as one ``bytes`` (``RequestHead.raw``). Where the next message starts is known exactly (no
    body, or Content-Length), so pipelined requests stay on it.

    The general path: the llhttp parser with a callback per header (``on_url``, ``on_header``), every check
    of this module. A head the fast path does not take (a framing, Upgrade, Expect or hop-by-hop header, a
    limit reached, a missing Host...) and any bytes llhttp refuses are handed to the general path from the
    start of that head, before the sink heard of it: the general path then answers for them exactly as if
    it had read the connection from the start, and keeps the connection from then on.
    """

    __slots__ = (
        "_block_check",
        "_block_len",
        "_block_seen",
        "_body_bytes",
        "_buf",
        "_buf_len",
        "_caller",
        "_conn_tokens",
        "_content_length",
        "_count",
        "_data",
        "_early",
        "_ended",
        "_error",
        "_expect",
        "_fast",
        "_fast_parser",
        "_header_bytes",
        "_headers",
        "_heads",
        "_host",
        "_host_count",
        "_in_head",
        "_in_trailers",
        "_key",
        "_key_block",
        "_last_keep_alive",
        "_limits",
        "_line_data",
        "_max_header_bytes",
        "_max_headers",
        "_missed",
        "_msg_end",
        "_parser",
        "_pending",
        "_pending_head",
        "_pos",
        "_service",
        "_sink",
        "_special",
        "_te",
        "_trace",
        "_traced_max",
        "_upgrade",
        "_url",
        "_user_agent",
        "body_sink",
        "dead",
    )

    def __init__(
        self,
        sink: RequestSink,
        limits: Http1Limits | None = None,
        fast_path: bool = True,
        block_check: Callable[[bytes], bool] | None = None,
    ) -> None:
        """``block_check``: a head's trace block becomes its ``trace_block`` only when this accepts a block
        of the same byte classes (_BLOCK_CLASSES; asked once per new shape, e.g. Tracer.approves_block);
        None: every block does."""
        self._sink = sink
        self._block_check = block_check
        # Body and end-of-message events go here; a proxy points it at the request's exchange (one call less).
        self.body_sink: BodySink = sink
        self._limits = limits = limits or Http1Limits()
        self._max_header_bytes = limits.max_header_bytes  # read once per header: kept flat
        self._max_headers = limits.max_headers
        self._parser: httptools.HttpRequestParser | None = None  # the general path's, made when needed
        self._fast = True
        self._fast_parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(
            SimpleNamespace(
                on_headers_complete=self._fast_head,
                on_body=self._fast_body,
                on_message_complete=self._fast_end,
            )
        )
        self._heads = _heads_by_limits.setdefault(limits, {})
        # A head up to this size is within the header limits (bytes, and lines of at least 4 bytes).
        self._traced_max = min(limits.max_header_bytes, 4 * limits.max_headers)
        self._missed = b""  # the last head _known did not find
        self._key: bytes | None = None  # (and what its analysis is kept under)
        # (where that key's block starts, its traceparent line, where it stops; its shape)
        self._key_block = (0, 0, 0, b"")
        # The last head found (or kept) without its trace block, for the next one, which from the same peer
        # most likely differs only in the block's values: its length (-1: none yet), then what _known
        # compares (see there) and the head's arguments.
        self._block_len = -1
        self._block_seen: _BlockSeen = (b"", b"", 0, 0, 0, b"", (), False)
        self._early: RequestHead | None = None  # a known head with a body, found by feed for _fast_head
        self._buf = b""  # the fast path: the bytes being read, from the current head's start when split
        self._buf_len = 0
        self._pos = 0  # where in _buf the head being read starts
        self._msg_end = 0  # while in a body: where in _buf it ends (past the end while it goes on)
        self._pending = b""  # the start of a head that the next read goes on with
        self._last_keep_alive = True  # the last message let the connection live
        self._error: ProtocolError | None = None
        self.dead = False
        self._in_head = True  # between messages counts as head: bytes there are a request line to come
        self._pending_head = 0
        self._special = True  # _begin_message sets the fields special headers change
        self._data = b""  # the bytes being fed
        self._ended = False  # a message ended inside the bytes being fed
        self._line_data: bytes | None = None  # bytes whose first CRLF ends this message's request line
        self._begin_message()
        if not fast_path:  # (tests compare the two paths)
            self._to_general(b"")

    def _begin_message(self) -> None:
        """Fresh per-message state. Run after each message ends rather than from llhttp's on_message_begin,
        which httptools then need not call (one Python call less per request)."""
        self._in_head = True
        self._url = b""
        self._line_data = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._count = 0
        self._host: bytes | None = None
        self._host_count = 0
        self._in_trailers = False
        self._body_bytes = 0
        self._user_agent: bytes | None = None  # most clients send one: reset here, not behind _special
        if self._special:  # only a header other than Host sets these: most requests leave them as they are
            self._special = False
            self._content_length: bytes | None = None
            self._te: bytes | None = None
            self._expect = False
            self._upgrade: bytes | None = None
            self._service: bytes | None = None
            self._conn_tokens: list[bytes] | None = None
            self._caller: bytes | None = None
            self._trace: dict[bytes, bytes] | None = None

    # -- input --------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.dead:
            return
        if not self._fast:
            self._feed_general(data)
            return
        if self._in_head:
            pending = self._pending
            if pending:
                self._pending = b""
                buf = pending + data
            elif self._last_keep_alive:  # llhttp stands at a message's start
                request = self._known(data)
                if request is not None:
                    if not request.content_length and request.keep_alive:
                        # One whole head seen before, and no body: llhttp is not needed. The events llhttp
                        # would report, in its order and with the decoder in the same states around them
                        # (here, not in a method: one call less per request).
                        self._in_head = False
                        try:
                            self._sink.on_request_head(request)
                            self._in_head = True
                            self.body_sink.on_request_end()
                        except Exception as exc:  # (what llhttp would turn into a parser error: it ends)
                            self._in_head = True
                            self._fail(errors.bad_request(f"malformed request: {exc!r}"))
                        return
                    self._early = request  # (data is exactly that head: _fast_head takes it from here)
                buf = data
            else:
                buf = data
            self._pos = 0
        else:
            self._msg_end -= self._buf_len  # the body goes on in these bytes
            buf = data
        self._buf = buf
        self._buf_len = len(buf)
        parser = self._fast_parser
        assert parser is not None
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # (a head that can upgrade is the general path's: not reached)
            self._fail(errors.bad_request("unexpected protocol upgrade"))
            return
        except httptools.HttpParserError as exc:
            # The head of a message the sink has not heard of is the general path's now; but after a message
            # that closes the connection, llhttp refuses any byte (which a fresh parser would not know).
            if self._in_head and self._last_keep_alive:
                self._to_general(buf[self._pos :])
            else:
                self._fail(self._error or self._map_parser_error(exc))
            return
        if self._in_head:
            pos = self._pos
            if pos < self._buf_len:  # a head begun: kept (bounded as the general path bounds it)
                self._pending = pending = buf[pos:]
                if len(pending) > self._limits.max_header_bytes + self._limits.max_request_line:
                    self._pending = b""
                    self._to_general(pending)
            self._buf = b""

    def _feed_general(self, data: bytes) -> None:
        self._data = data
        self._ended = False
        parser = self._parser
        assert parser is not None
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self.dead = True  # the rest of the connection is not HTTP
            self._sink.on_upgrade(data[offset:])
            return
        except httptools.HttpParserError as exc:
            self._fail(self._error or self._map_parser_error(exc))
            return
        if self._in_head:
            # httptools keeps a partial head inside itself without telling us; bound it here. When a message
            # ended inside this data, how much of it the next head took is unknown: count from the next read.
            self._pending_head = 0 if self._ended else self._pending_head + len(data)
            if self._pending_head > self._limits.max_header_bytes + self._limits.max_request_line:
                self._fail(errors.too_large(f"request head over {self._limits.max_header_bytes} bytes"))

    def _to_general(self, data: bytes) -> None:
        """From here on the general path reads the connection, starting with ``data``: the bytes from the
        start of a head that the sink has not heard of."""
        self._fast = False
        self._fast_parser = None
        self._early = None
        self._buf = self._pending = b""
        self._parser = httptools.HttpRequestParser(self)
        self._special = True
        self._begin_message()
        self._pending_head = 0
        self._error = None
        if data:
            self._feed_general(data)

    # -- the fast path's llhttp callbacks -------------------------------------------------------------

    def _fast_head(self) -> None:
        buf = self._buf
        pos = self._pos
        end = buf.find(b"\r\n\r\n", pos)
        # llhttp skips empty lines before a request line: a head that does not start with a method's first
        # letter is left to the general path, as is one whose start is not in these bytes (never expected).
        if end < 0 or not 65 <= buf[pos] <= 90:  # "A" to "Z"
            raise _FastPathLeft
        head = buf[pos : end + 4] if buf.__class__ is bytes else bytes(buf[pos : end + 4])
        request = self._early
        self._early = None
        if request is None or head is not buf:  # (feed found it when the head is the whole read)
            request = self._known(head) if head is not self._missed else None
            if request is None:
                request = self._analyse(head, self._key)
        length = request.content_length
        self._msg_end = end + 4 + length if length else end + 4
        self._last_keep_alive = request.keep_alive
        self._in_head = False
        self._sink.on_request_head(request)

    def _known(self, head: bytes) -> RequestHead | None:
        """The request of ``head`` when it is one whole head seen before, as it is or without its trace
        block (then with the block's values as its trace context, and the block as ``trace_block``); else
        None, with the key to keep its analysis under in ``_key`` (and the block's place in ``_key_block``)
        and ``head`` in ``_missed`` (so it is not looked up again)."""
        if len(head) == self._block_len:
            # The same head as the last one with a block, but for the values? Then (values of the same
            # lengths: a proxy's request ids and traceparents are of fixed length) the head is that one's
            # bytes up to the first value, the value, the second name, the value, that one's bytes after the
            # block (one compare), and the block's bytes are of the right classes: what the search below would
            # find, and then the same key. (Cheaper than the search and the key's lookup, which hashes a new
            # bytes.)
            before, after, id_at, middle, stop, shape, known, approved = self._block_seen
            # Its block checked (in C when built: no slice made before the checks pass); an approved one is
            # handed over as trace_block alone (the same classes as that one's block: the same answer from
            # block_check), and RequestHead.trace_context() makes its headers when asked.
            if _native_block is not None:
                block = _native_block(head, before, after, id_at, middle, stop, _BLOCK_CLASSES, shape)
            else:
                block = head[id_at - 14 : stop + 2]
                values = (head[id_at:middle], _BLOCK_MIDDLE, head[middle + 15 : stop])
                if _join((before, *values, after)) != head or block.translate(_BLOCK_CLASSES) != shape:
                    block = None
            if block is not None:
                request = RequestHead(*known)
                if approved:
                    request.trace_block = block
                else:
                    request.trace = trace_of_block(block)
                return request
        heads = self._heads
        fields = heads.get(head)
        if fields is not None:
            return RequestHead(*fields)
        self._missed = head
        self._key = None
        if len(head) > self._traced_max:  # (a head up to this size meets every limit: the key's were checked)
            return None
        # The block: the first x-request-id line in this spelling, the traceparent line right after it. (A
        # later one is never needed: a head with two x-request-id lines is never kept, see _analyse.)
        begin = head.find(_BLOCK_START)
        if begin < 0:
            return None
        middle = head.find(b"\r\n", begin + 16)
        if middle < 0 or not head.startswith(_BLOCK_MIDDLE, middle):
            return None
        stop = head.find(b"\r\n", middle + 15)
        if stop < 0 or middle == begin + 16 or stop == middle + 15:
            return None
        block = head[begin + 2 : stop + 2]
        shape = block.translate(_BLOCK_CLASSES)
        if shape.translate(_FOLD_CLASSES) != _block_shape(middle - begin - 16, stop - middle - 15):
            return None
        if head[begin - 1] == 10:  # "\n": the block would follow a blank line, so it is not in a head
            return None
        key = self._key = head[:begin] + head[stop:]
        self._key_block = (begin, middle, stop, shape)
        fields = heads.get(key)
        if fields is None:
            return None
        request = RequestHead(*fields)
        if self._remember_block(head, begin, middle, stop, shape, fields):
            request.trace_block = block
        else:
            request.trace = trace_of_block(block)
        return request

    def _remember_block(
        self, head: bytes, begin: int, middle: int, stop: int, shape: bytes, fields: tuple[Any, ...]
    ) -> bool:
        """``head``, whose block is at ``begin``..``stop`` and of the classes ``shape``, is the one ``_known``
        compares the next with. Returns whether ``block_check`` approves the block (asked here, once for
        the heads of these classes)."""
        check = self._block_check
        approved = check is None or check(head[begin + 2 : stop + 2])
        self._block_len = len(head)
        before, after = head[: begin + 16], head[stop:]
        self._block_seen = (before, after, begin + 16, middle, stop, shape, fields, approved)
        return approved

    def _fast_body(self, body: bytes) -> None:
        self.body_sink.on_request_body(body)  # (within max_body_bytes: its Content-Length was checked)

    def _fast_end(self) -> None:
        self._in_head = True
        self._pos = self._msg_end  # the next message starts right after this one
        self.body_sink.on_request_end()

    def _analyse(self, head: bytes, key: bytes | None) -> RequestHead:
        """The request of ``head`` (request line to blank line, accepted by llhttp), its arguments kept for
        the next time it comes: under ``head`` when it has no trace context, under ``key`` (the head without
        its trace block, at ``_key_block``) when the block's are its only trace lines (then the request has
        the block as ``trace_block``). Raises _FastPathLeft for a head that is the general path's."""
        parser = self._fast_parser
        assert parser is not None
        method: bytes = parser.get_method()
        line, _, _ = head.partition(b"\r\n")
        tail = line[-8:]
        version = "1.1" if tail == b"HTTP/1.1" else "1.0" if tail == b"HTTP/1.0" else ""
        target = line[len(method) + 1 : -9]  # (llhttp also takes extra spaces around it: not here)
        limits = self._limits
        start = len(line) + 2  # the first header line
        size = len(head) - 2 - start
        if (
            not version
            or method == b"CONNECT"
            or not target
            or target[0] == 32
            or target[-1] == 32
            or len(target) > limits.max_request_line
            or size > limits.max_header_bytes
            or (size > 4 * limits.max_headers and head.count(b"\n") - 2 > limits.max_headers)
        ):
            raise _FastPathLeft  # (a header line is at least 4 bytes: a short head holds few enough)
        host = user_agent = caller = service = None
        trace: dict[bytes, bytes] | None = None
        content_length: int | None = None
        hosts = traces = 0
        cut_from = start  # the lines forwarded: from here to each cut line, and after the last
        kept: list[bytes] = []
        for match in _FAST_LINES.finditer(head.lower(), start - 1):
            name = match.group(1)
            begin, stop = match.span(2)
            value = head[begin:stop]
            action = _FAST_ACTIONS[name]
            if action == _HOST:
                hosts += 1
                host = value
                continue
            if action == _USER_AGENT:
                user_agent = value
                continue
            if action == _CALLER:
                caller = value
                continue
            if action == _CONTENT_LENGTH:
                content_length = int(value)  # (llhttp took it: digits, one Content-Length)
                continue
            if action == _TRACE:
                if trace is None:
                    trace = {}
                traces += 1
                trace[name] = value  # (a repeated one: the last wins, as on the general path)
            elif action == _SERVICE:
                service = value
            elif action != _CONNECTION or value.rstrip(b" \t").lower() not in _SIMPLE_CONNECTION:
                raise _FastPathLeft
            line_start = match.start() + 1
            if line_start > cut_from:
                kept.append(head[cut_from:line_start])
            cut_from = stop + 2  # past the line's CRLF
        if hosts != 1 and (hosts > 1 or version == "1.1"):
            raise _FastPathLeft
        max_body = limits.max_body_bytes
        if max_body is not None and content_length is not None and content_length > max_body:
            raise _FastPathLeft
        end = len(head) - 2
        if kept:
            if cut_from < end:
                kept.append(head[cut_from:end])
            raw = b"".join(kept)
        else:
            raw = head[cut_from:end]
        fields = (
            method,
            target,
            version,
            None,
            host,
            content_length,
            False,
            parser.should_keep_alive(),
            False,
            None,
            service,
            user_agent,
            caller,
            trace,
            b"",
            raw,
        )
        if trace is not None and (key is None or traces != 2 or len(trace) != 2):
            return RequestHead(*fields)  # (other trace lines: seen again only with other ids)
        heads = self._heads
        if len(heads) >= _HEADS_KEPT:
            heads.clear()
        if trace is None:
            heads[head] = fields
            return RequestHead(*fields)
        assert key is not None
        # Without the block the fields are the same but for ``trace``: its lines are never forwarded.
        heads[key] = keyed = (*fields[:_TRACE_AT], None, *fields[_TRACE_AT + 1 :])
        begin, middle, stop, shape = self._key_block
        if self._remember_block(head, begin, middle, stop, shape, keyed):
            request = RequestHead(*keyed)  # type: ignore[arg-type]  # (trace_block alone, as _known hands it)
            request.trace_block = head[begin + 2 : stop + 2]
            return request
        return RequestHead(*fields)

    def release(self) -> None:
        """The connection is gone: read nothing more, and let go of the sinks and the parsers (whose
        callbacks are this decoder's methods). A connection's objects refer to one another through these;
        without them they are freed by reference counting when the connection closes, not left for the
        cycle collector, which a sidecar runs rarely (plexus.sidecar.app.GC_GEN0_THRESHOLD)."""
        self.dead = True
        self._fast_parser = self._parser = None
        self._sink = self.body_sink = _RELEASED

    def _fail(self, error: ProtocolError) -> None:
        self.dead = True
        self._sink.on_request_error(error)

    @staticmethod
    def _map_parser_error(exc: Exception) -> ProtocolError:
        if isinstance(exc, httptools.HttpParserInvalidMethodError):
            return ProtocolError(errors.NOT_IMPLEMENTED, f"unknown method: {exc}", 501)
        message = str(exc)
        if "Content-Length" in message or "Transfer-Encoding" in message:
            return errors.bad_request(f"ambiguous framing: {message}", errors.AMBIGUOUS_FRAMING)
        if "HTTP version" in message:
            return ProtocolError(errors.BAD_VERSION, message, 505)
        return errors.bad_request(f"malformed request: {message}")

    def _refuse(self, error: ProtocolError) -> _Refused:
        self._error = error
        return _Refused(error.reason)

    # -- llhttp callbacks ---------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        if not self._url and not self._ended:
            # The target starts in the bytes being fed and no earlier message ends in them: the first CRLF
            # in them is the end of this request line (or, when the line goes on into the next read, there
            # is none, or an empty line llhttp skipped: both fall back to get_http_version()).
            self._line_data = self._data
        self._url += url
        if len(self._url) > self._limits.max_request_line:
            raise self._refuse(
                ProtocolError(
                    errors.URI_TOO_LONG, f"request target over {self._limits.max_request_line} bytes", 414
                )
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._header_bytes + len(name) + len(value) + _HEADER_OVERHEAD
        count = self._count + 1
        self._header_bytes = size
        self._count = count
        if size > self._max_header_bytes or count > self._max_headers:
            if size > self._max_header_bytes:
                raise self._refuse(errors.too_large(f"headers over {self._max_header_bytes} bytes"))
            raise self._refuse(errors.too_large(f"more than {self._max_headers} headers"))
        if self._in_trailers:
            return  # trailers are never forwarded: a trailer must not smuggle a header past the checks
        headers = self._headers
        action = _ACTIONS.get(name) or _ACTIONS.get(name.lower(), _FORWARD)
        if action == _FORWARD:
            headers.append((name, value))
            return
        if action == _HOST:
            self._host_count += 1
            self._host = value
            headers.append((name, value))
            return
        if action == _USER_AGENT:
            self._user_agent = value
            headers.append((name, value))
            return
        self._special = True
        if action == _TRACE:  # first: a meshed request carries two of these (traceparent, x-request-id)
            trace = self._trace
            if trace is None:
                trace = self._trace = {}
            trace[name.lower()] = value  # (a repeated one: the last wins; the tracer replaces it)
        elif action == _CONTENT_LENGTH:
            if self._content_length is not None:
                raise self._refuse(errors.bad_request("two Content-Length headers", errors.AMBIGUOUS_FRAMING))
            self._content_length = value
            headers.append((name, value))
        elif action == _TRANSFER_ENCODING:
            if self._te is not None:
                raise self._refuse(
                    errors.bad_request("two Transfer-Encoding headers", errors.AMBIGUOUS_FRAMING)
                )
            if value.lower() != b"chunked":
                raise self._refuse(
                    ProtocolError(
                        errors.BAD_TRANSFER_ENCODING, f"Transfer-Encoding {value[:40]!r} is not chunked", 501
                    )
                )
            self._te = value
        elif action == _CONNECTION:
            tokens = [t.strip().lower() for t in value.split(b",")]
            if self._conn_tokens is None:
                self._conn_tokens = tokens
            else:
                self._conn_tokens.extend(tokens)
        elif action == _EXPECT:
            if value.lower() == b"100-continue":
                self._expect = True
        elif action == _UPGRADE:
            self._upgrade = value
        elif action == _SERVICE:
            self._service = value
        elif action == _CALLER:
            self._caller = value
            headers.append((name, value))
        # _DROP: hop-by-hop, not forwarded

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._pending_head = 0
        parser = self._parser
        assert parser is not None  # (the general path's callbacks run only once it has a parser)
        data = self._line_data
        version = ""
        if data is not None:
            # The request line ends at the first CRLF of these bytes (see on_url), and llhttp accepted it,
            # so its last 8 bytes are the version: cheaper than get_http_version(), which formats a string.
            i = data.find(b"\r\n")
            tail = data[i - 8 : i] if i >= 8 else b""
            version = "1.1" if tail == b"HTTP/1.1" else "1.0" if tail == b"HTTP/1.0" else ""
        if not version:
            version = parser.get_http_version()  # split heads, pipelined requests, leading empty lines
        if version != "1.1" and version != "1.0":
            raise self._refuse(ProtocolError(errors.BAD_VERSION, f"HTTP/{version} is not served", 505))
        method: bytes = parser.get_method()
        if method == b"CONNECT":
            raise self._refuse(ProtocolError(errors.NOT_IMPLEMENTED, "CONNECT is not proxied", 501))
        if self._host_count != 1 and (self._host_count > 1 or version == "1.1"):
            raise self._refuse(errors.bad_request("HTTP/1.1 needs exactly one Host header"))
        chunked = self._te is not None
        if chunked and version == "1.0":
            raise self._refuse(errors.bad_request("Transfer-Encoding in an HTTP/1.0 request"))
        content_length = None
        if self._content_length is not None:
            content_length = int(self._content_length)
            max_body = self._limits.max_body_bytes
            if max_body is not None and content_length > max_body:
                raise self._refuse(
                    ProtocolError(
                        errors.BODY_TOO_LARGE, f"Content-Length {content_length} over {max_body}", 413
                    )
                )
        upgrade = self._upgrade
        if upgrade is not None:
            if not parser.should_upgrade():
                upgrade = None
            elif chunked or content_length:
                raise self._refuse(errors.bad_request("an Upgrade request with a body"))
        if self._conn_tokens is not None:
            self._strip_connection_listed()
        head = RequestHead(
            method,
            self._url,
            version,
            self._headers,
            self._host,
            content_length,
            chunked,
            parser.should_keep_alive(),
            self._expect and (chunked or bool(content_length)),
            upgrade,
            self._service,
            self._user_agent,
            self._caller,
            self._trace,
        )
        self._in_trailers = True  # any header after this point is a trailer
        self._sink.on_request_head(head)

    def _strip_connection_listed(self) -> None:
        """Headers named in Connection are hop-by-hop (RFC 9110 §7.6.1): drop them."""
        assert self._conn_tokens is not None
        extra = {t for t in self._conn_tokens if t and t not in _STANDARD_CONNECTION_TOKENS}
        if extra:
            self._headers = [(n, v) for n, v in self._headers if n.lower() not in extra]

    def on_body(self, body: bytes) -> None:
        max_body = self._limits.max_body_bytes
        if max_body is not None:
            self._body_bytes += len(body)
            if self._body_bytes > max_body:
                raise self._refuse(
                    ProtocolError(errors.BODY_TOO_LARGE, f"request body over {max_body} bytes", 413)
                )
        self.body_sink.on_request_body(body)

    def on_message_complete(self) -> None:
        self._ended = True  # a message after this one in the same data starts inside it
        self._begin_message()
        self.body_sink.on_request_end()

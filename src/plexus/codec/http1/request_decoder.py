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

from typing import Final, Protocol

import httptools

from plexus.codec.http1 import errors
from plexus.codec.http1.heads import TRACE_HEADERS, RequestHead
from plexus.codec.http1.limits import Http1Limits
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


class BodySink(Protocol):
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...


class RequestSink(Protocol):
    def on_request_head(self, head: RequestHead) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...
    def on_upgrade(self, tail: bytes) -> None: ...
    def on_request_error(self, error: ProtocolError) -> None: ...


class _Refused(Exception):
    """Raised inside an llhttp callback to stop parsing; the ProtocolError is kept on the decoder."""


class RequestDecoder:
    __slots__ = (
        "_body_bytes",
        "_caller",
        "_conn_tokens",
        "_content_length",
        "_count",
        "_data",
        "_ended",
        "_error",
        "_expect",
        "_header_bytes",
        "_headers",
        "_host",
        "_host_count",
        "_in_head",
        "_in_trailers",
        "_limits",
        "_line_data",
        "_max_header_bytes",
        "_max_headers",
        "_parser",
        "_pending_head",
        "_service",
        "_sink",
        "_special",
        "_te",
        "_trace",
        "_upgrade",
        "_url",
        "_user_agent",
        "body_sink",
        "dead",
    )

    def __init__(self, sink: RequestSink, limits: Http1Limits | None = None) -> None:
        self._sink = sink
        # Body and end-of-message events go here; a proxy points it at the request's exchange (one call less).
        self.body_sink: BodySink = sink
        self._limits = limits = limits or Http1Limits()
        self._max_header_bytes = limits.max_header_bytes  # read once per header: kept flat
        self._max_headers = limits.max_headers
        self._parser = httptools.HttpRequestParser(self)
        self._error: ProtocolError | None = None
        self.dead = False
        self._in_head = True  # between messages counts as head: bytes there are a request line to come
        self._pending_head = 0
        self._special = True  # _begin_message sets the fields special headers change
        self._data = b""  # the bytes being fed
        self._ended = False  # a message ended inside the bytes being fed
        self._line_data: bytes | None = None  # bytes whose first CRLF ends this message's request line
        self._begin_message()

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
        self._data = data
        self._ended = False
        try:
            self._parser.feed_data(data)
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

"""TESTING.md §A: malformed and smuggling requests, each with the status the proxy must answer.

Shared by the codec tests (bytes fed to the decoder, whole and split) and the transport tests (bytes sent to
a real listener in front of a recording upstream). ``Case.status`` is the answer; every case ends the
connection and no case may deliver a complete request.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int


H = b"Host: svc\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"


def _post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /p HTTP/1.1\r\n" + H + headers + b"\r\n" + body


CASES: list[Case] = [
    Case("cl_and_te", _post(b"Content-Length: 5\r\n" + CHUNKED, b"0\r\n\r\n"), 400),
    Case("te_and_cl", _post(CHUNKED + b"Content-Length: 5\r\n", b"0\r\n\r\n"), 400),
    Case("te_xchunked", _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 501),
    Case("te_name_space", _post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), 400),
    Case("te_gzip_chunked", _post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), 501),
    Case("te_chunked_gzip", _post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), 400),
    Case("te_identity", _post(b"Transfer-Encoding: identity\r\n", b""), 501),
    Case("two_te", _post(CHUNKED + CHUNKED, b"0\r\n\r\n"), 400),
    Case("two_cl_differ", _post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), 400),
    Case("two_cl_same", _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), 400),
    Case("cl_list", _post(b"Content-Length: 5, 5\r\n", b"hello"), 400),
    Case("cl_plus", _post(b"Content-Length: +5\r\n", b"hello"), 400),
    Case("cl_hex", _post(b"Content-Length: 0x5\r\n", b"hello"), 400),
    Case("cl_underscore", _post(b"Content-Length: 5_0\r\n", b"hello"), 400),
    Case("cl_non_ascii_digit", _post("Content-Length: \u0665\r\n".encode(), b"hello"), 400),
    Case("cl_negative", _post(b"Content-Length: -1\r\n", b"hello"), 400),
    Case("cl_overflow", _post(b"Content-Length: 99999999999999999999999\r\n"), 400),
    Case("obs_fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400),
    Case("obs_fold_te", _post(b"X-A: a\r\n Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    Case("bare_lf_request_line", b"GET / HTTP/1.1\n" + H + b"\r\n", 400),
    Case("bare_lf_header", b"GET / HTTP/1.1\r\nHost: svc\nX-A: b\r\n\r\n", 400),
    Case("bare_cr_header", b"GET / HTTP/1.1\r\nHost: svc\rX-A: b\r\n\r\n", 400),
    Case("bare_cr_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\rc\r\n\r\n", 400),
    Case("nul_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x00c\r\n\r\n", 400),
    Case("nul_in_name", b"GET / HTTP/1.1\r\n" + H + b"X\x00A: b\r\n\r\n", 400),
    Case("ctl_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x01c\r\n\r\n", 400),
    Case("chunk_size_0x", _post(CHUNKED, b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk_size_overflow", _post(CHUNKED, b"FFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk_size_space", _post(CHUNKED, b"5 \r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk_bad_terminator", _post(CHUNKED, b"5\r\nhelloXX0\r\n\r\n"), 400),
    Case("chunk_lf_only", _post(CHUNKED, b"5\nhello\n0\n\n"), 400),
    Case("trailer_smuggles_cl", _post(CHUNKED, b"5\r\nhello\r\n0\r\nContent-Length: 7\r\n\r\n"), 400),
    Case(
        "trailer_smuggles_te", _post(CHUNKED, b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400
    ),
    Case("request_line_over_limit", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    Case(
        "headers_over_count",
        b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n",
        431,
    ),
    Case(
        "headers_over_bytes", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"v" * (61 * 1024) + b"\r\n\r\n", 431
    ),
    Case(
        "many_headers_over_bytes",
        b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(62)) + b"\r\n",
        431,
    ),
    Case("http_2_0_version", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    Case("http_0_9", b"GET /\r\n\r\n", 505),
    Case("http_1_2_version", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    Case("no_host", b"GET / HTTP/1.1\r\n\r\n", 400),
    Case("two_hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    Case("te_in_http_1_0", b"POST / HTTP/1.0\r\n" + CHUNKED + b"\r\n0\r\n\r\n", 400),
    Case("unknown_method", b"FOO / HTTP/1.1\r\n" + H + b"\r\n", 501),
    Case("connect_method", b"CONNECT svc:80 HTTP/1.1\r\n" + H + b"\r\n", 501),
    Case("space_in_target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    Case("header_no_colon", b"GET / HTTP/1.1\r\n" + H + b"X-A b\r\n\r\n", 400),
    Case("empty_header_name", b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n", 400),
    Case(
        "upgrade_with_body",
        b"POST / HTTP/1.1\r\n" + H + b"Connection: upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        400,
    ),
]

# Accepted by both Plexus and h11: the differential test's agreement set.
VALID: list[bytes] = [
    b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"GET /a?b=c HTTP/1.1\r\nHost: svc:8080\r\nAccept: */*\r\nX-Tab: a\tb\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n0\r\nX-T: v\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding:  chunked\r\n\r\n0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: svc\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nX-Obs: caf\xe9\r\n\r\n",
]

# Accepted by Plexus, refused by h11, on purpose: RFC 9112 §2.2 says a server SHOULD ignore at least one
# empty line before a request line; h11 refuses it at the start of a connection. Nothing is smuggled by it.
LENIENT: list[bytes] = [b"\r\nGET / HTTP/1.1\r\nHost: svc\r\n\r\n"]

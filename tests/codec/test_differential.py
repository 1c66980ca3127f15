"""Differential check against h11 (the reference implementation): the same bytes, the same verdict.

Where Plexus is deliberately stricter than h11 the case is listed in STRICTER with the reason; any other
disagreement fails. Plexus accepting what h11 refuses is never allowed (that is how smuggling starts).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.catalogue import CASES, LENIENT, VALID
from codec.harness import h11_parse, plexus_parse

# Refused by Plexus, accepted by h11, on purpose.
STRICTER = {
    "te_gzip_chunked": "only exactly 'chunked' is proxied; other codings are 501 (RFC 9112 §6.1)",
    "te_identity": "'identity' is not a transfer coding any more; refuse rather than guess the framing",
    "two_hosts": "RFC 9112 §3.2: a request with more than one Host is answered 400",
    "te_in_http_1_0": "RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing",
    "headers_over_count": "a header count limit (100, Envoy's) that h11 lacks",
    "unknown_method": "llhttp knows the registered methods only; an unknown token is 501",
    "http_2_0_version": "h11 reads HTTP/2.0 as a 1.x request; we answer 505",
    "connect_method": "CONNECT is not proxied (501); h11 parses it",
    "upgrade_with_body": "an Upgrade request must not carry a body into the switched stream",
    "chunk_size_space": "h11 tolerates whitespace after a chunk size; llhttp does not",
    "cl_list": "h11 merges 'Content-Length: 5, 5'; we refuse any list",
    "two_cl_same": "h11 merges identical duplicates; we refuse any duplicate",
    "empty_header_name": "h11 parses it lazily",
    "cl_and_te": "RFC 9112 §6.3 lets TE win; a proxy refuses both (the classic CL.TE smuggling pair)",
    "te_and_cl": "as cl_and_te, other order",
    "obs_fold": "h11 unfolds obs-fold; RFC 9112 §5.2 lets a server refuse it, and a proxy should",
    "bare_lf_request_line": "h11 accepts bare LF line ends; a bare LF is where front and back ends disagree",
    "bare_lf_header": "as bare_lf_request_line",
    "ctl_in_value": "control bytes in a value are refused by llhttp; h11 lets them through",
    "trailer_smuggles_cl": "llhttp refuses framing headers in trailers; h11 drops them",
    "trailer_smuggles_te": "as trailer_smuggles_cl",
    "headers_over_bytes": "h11's size limit applies only to incomplete heads; ours to every head",
    "many_headers_over_bytes": "as headers_over_bytes",
    "request_line_over_limit": "a request-target limit (8 KiB, 414) that h11 lacks",
    "http_1_2_version": "h11 takes any HTTP/1.x; llhttp only 1.0 and 1.1",
}


def test_catalogue_verdicts_match_h11() -> None:
    disagreements = {}
    for case in CASES:
        ours, theirs = plexus_parse([case.data]), h11_parse(case.data)
        ours_ok = ours.accepted and bool(ours.requests)
        theirs_ok = theirs.accepted and bool(theirs.requests)
        if ours_ok != theirs_ok:
            disagreements[case.name] = (ours.status, theirs.status)
        assert not (ours_ok and not theirs_ok), f"{case.name}: Plexus accepts what h11 refuses"
    unexplained = set(disagreements) - set(STRICTER)
    assert not unexplained, f"disagreements with h11: { {k: disagreements[k] for k in unexplained} }"


def test_valid_requests_agree_with_h11() -> None:
    for data in VALID:
        ours, theirs = plexus_parse([data]), h11_parse(data)
        assert ours.accepted and theirs.accepted, (data, ours, theirs)
        assert [r[2] for r in ours.requests] == [r[2] for r in theirs.requests]
        assert [(r[0], r[1]) for r in ours.requests] == [(r[0], r[1]) for r in theirs.requests]


_pieces = st.sampled_from(
    [
        b"GET",
        b"POST",
        b" ",
        b"/",
        b"/a",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"\r\n",
        b"\n",
        b"\r",
        b"Host: svc",
        b"Content-Length: 5",
        b"Content-Length: 3",
        b"Transfer-Encoding: chunked",
        b"hello",
        b"5",
        b"0",
        b": ",
        b":",
        b"\t",
        b"\x00",
        b"X-A: b",
        b";x",
        b"Expect: 100-continue",
        b"Connection: close",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_pieces, min_size=1, max_size=24))
def test_never_more_permissive_than_h11(parts: list[bytes]) -> None:
    """Random assemblies of HTTP fragments: every request Plexus completes, h11 completes identically."""
    data = b"".join(parts)
    if data.startswith((b"\r\n", b"\n")):
        return  # LENIENT: a leading empty line, accepted by design (see catalogue.LENIENT)
    ours, theirs = plexus_parse([data]), h11_parse(data)
    if not ours.requests:
        return
    # Compare the requests both completed before either stopped.
    n = min(len(ours.requests), len(theirs.requests))
    assert ours.requests[:n] == theirs.requests[:n], (data, ours, theirs)
    if theirs.status is not None and len(ours.requests) > len(theirs.requests):
        raise AssertionError(f"Plexus completed a request h11 refused: {data!r} {ours} {theirs}")


def test_documented_leniency() -> None:
    for data in LENIENT:
        assert plexus_parse([data]).accepted
        assert not h11_parse(data).accepted  # if h11 starts accepting it, drop it from LENIENT

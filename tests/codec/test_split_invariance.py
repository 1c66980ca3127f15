"""Hypothesis: the decoder's verdict and output do not depend on how the bytes are split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from codec.catalogue import CASES, VALID
from codec.harness import plexus_parse

_inputs = st.sampled_from([c.data for c in CASES if len(c.data) < 4096] + VALID)


@st.composite
def _split(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    base = draw(st.lists(_inputs, min_size=1, max_size=4))
    data = b"".join(base)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=12))))
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    return data, pieces


@settings(max_examples=300, deadline=None)
@given(_split())
def test_split_invariance(sample: tuple[bytes, list[bytes]]) -> None:
    data, pieces = sample
    assert plexus_parse(pieces) == plexus_parse([data])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_arbitrary_bytes_never_crash_and_split_invariant(data: bytes, cut: int) -> None:
    prefix = b"POST / HTTP/1.1\r\nHost: a\r\n"
    whole = plexus_parse([prefix + data])
    cut = min(cut, len(data))
    assert plexus_parse([prefix + data[:cut], data[cut:]]) == whole

"""plexus.core._speedups (C) against the Python functions it stands for: the same results from the same
inputs, and the Python path taken for every input the C one leaves (it returns None there).

The suites of the callers (tests/proxy/test_access_line.py, tests/codec/test_request_fast_path.py,
tests/proxy/test_tracing*.py) run with the C versions where they were built; here each one is also run
with them switched off, over the same inputs.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy.test_access_line import _OUTCOMES, _TELEMETRIES, _batches, _reference_batch

from plexus.codec.http1 import RequestDecoder, RequestHead, request_decoder
from plexus.core import speedups
from plexus.proxy import access_line, tracing
from plexus.proxy.telemetry import Telemetry
from plexus.proxy.tracing import Tracer

needs_c = pytest.mark.skipif(speedups.access_lines is None, reason="plexus.core._speedups is not built")


def test_the_c_versions_are_built_where_plexus_is_installed_with_a_compiler() -> None:
    """CI installs with gcc and Python's headers: the figures in bench/RESULTS.md assume the C versions."""
    if os.environ.get("PLEXUS_NO_SPEEDUPS", "") not in ("", "0"):
        pytest.skip("switched off by PLEXUS_NO_SPEEDUPS")
    assert speedups.access_lines is not None
    assert speedups.fresh_blocks is not None
    assert speedups.known_block is not None
    assert speedups.block_passes is not None
    assert speedups.journal_setup is not None and speedups.journal_end is not None


# -- access lines -------------------------------------------------------------------------------------


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_batches())
def test_access_lines_are_the_python_lines_or_leave_the_batch_to_them(case: tuple[Telemetry, Any]) -> None:
    telemetry, batch = case
    assert speedups.access_lines is not None
    got = speedups.access_lines(batch, telemetry.loop_clock_offset, access_line._second_bytes)
    if got is not None:
        assert got == _reference_batch(telemetry, batch)
    assert access_line.format_batch(telemetry, batch) == _reference_batch(telemetry, batch)


@needs_c
@pytest.mark.parametrize("offset_index", [0, 1, 2])
def test_access_lines_take_the_usual_batch(offset_index: int) -> None:
    """Tuples with trace lines blocks, float starts and durations of zero or more: the C path formats them
    (it does not return None), with changing sizes, outcomes and seconds."""
    rnd = random.Random(offset_index)
    telemetry = _TELEMETRIES[offset_index]
    outcomes = _OUTCOMES[id(telemetry)]
    tracer = Tracer(sample_percent=30)
    batch: list[Any] = []
    for i in range(600):
        lines = tracer.fresh_lines() if i % 3 else tracer.follow_block(tracer.fresh_lines()) or b""
        batch.append(
            (
                rnd.choice(outcomes),
                77_109.0 + i * 0.0037,
                rnd.choice((0.0, 0.4995, 4.9995, 5.0, 1234.5678)),
                rnd.choice((0, 0, 17)),
                rnd.choice((13, 13, 70_000)),
                (None, None, lines, None),
                None,
            )
        )
    assert speedups.access_lines is not None
    got = speedups.access_lines(batch, telemetry.loop_clock_offset, access_line._second_bytes)
    assert got is not None and got == _reference_batch(telemetry, batch)
    assert got.count(b"\n") == len(batch)


@needs_c
def test_access_lines_take_sizes_of_equal_value_as_the_same() -> None:
    """Sizes above 256 are new int objects per request: the C path compares their values (not identity)
    to reuse an outcome's parts, and a size that changes value still gets its own parts."""
    telemetry = _TELEMETRIES[0]
    outcome = _OUTCOMES[id(telemetry)][0]
    tracer = Tracer()
    sizes = [int(str(n)) for n in (853, 853, 853, 70_000, 853, 853)]  # (distinct objects, as on the wire)
    batch: list[Any] = [
        (outcome, 77_109.25 + i, 1.5, int(str(300)), size, (None, None, tracer.fresh_lines(), None), None)
        for i, size in enumerate(sizes)
    ]
    assert speedups.access_lines is not None
    got = speedups.access_lines(batch, telemetry.loop_clock_offset, access_line._second_bytes)
    assert got is not None and got == _reference_batch(telemetry, batch)
    assert [line.count(b"70000") for line in got.splitlines()] == [0, 0, 0, 1, 0, 0]


def test_format_batch_without_the_c_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_line, "_native_lines", None)
    telemetry = _TELEMETRIES[1]
    outcome = _OUTCOMES[id(telemetry)][0]
    tracer = Tracer()
    batch: list[Any] = [
        (outcome, 77_109.25, 1.5, 0, 13, (None, None, tracer.fresh_lines(), None), None) for _ in range(5)
    ]
    assert access_line.format_batch(telemetry, batch) == _reference_batch(telemetry, batch)


# -- fresh trace lines --------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [0.0, 1.0, 37.5, 100.0])
@pytest.mark.parametrize("start", [0, 2**48 - 300])
def test_fresh_lines_are_the_same_from_the_same_draws(
    monkeypatch: pytest.MonkeyPatch, percent: float, start: int
) -> None:
    """Two tracers seeded alike make the same blocks, one with the C batches and one with the Python ones,
    across batches and across the counter's wrap at 2**48."""

    def blocks(native: Any) -> list[bytes]:
        monkeypatch.setattr(tracing, "_native_blocks", native)
        tracer = Tracer(sample_percent=percent, rand=random.Random(7))
        tracer._id_count = start
        return [tracer.fresh_lines() for _ in range(700)]

    python = blocks(None)
    assert python == blocks(speedups.fresh_blocks)
    assert len(set(python)) == len(python)
    for block in python:
        request_id, trace_id, span_id, sampled = tracing.ids_from_lines(block)
        assert len(request_id) == 36 and len(trace_id) == 32 and len(span_id) == 16
        assert block.endswith(b"-01\r\n" if sampled else b"-00\r\n")
    if percent == 100.0:
        assert all(tracing.sampled_in_lines(b) for b in python)
    if percent == 0.0:
        assert not any(tracing.sampled_in_lines(b) for b in python)


@needs_c
def test_fresh_blocks_refuses_a_batch_it_cannot_number() -> None:
    assert speedups.fresh_blocks is not None
    with pytest.raises(ValueError, match="multiple of 256"):
        speedups.fresh_blocks(b"p-", 255, b"0" * 49 * 4, b"0000")
    with pytest.raises(ValueError, match="49 digits"):
        speedups.fresh_blocks(b"p-", 256, b"0" * 10, b"0000")


# -- a followed block ---------------------------------------------------------------------------------

_TRACER = Tracer(sample_percent=50)


def _mutations(block: bytes) -> list[bytes]:
    out = [block, block[:-57] + b"01" + block[-55:], block[:-57] + b"ff" + block[-55:]]
    out += [block[:-54] + b"0" * 32 + block[-22:], block[:-21] + b"0" * 16 + block[-5:]]
    out += [block[:-3] + bytes([c]) + block[-2:] for c in b"0123456789abcdefx"]
    return out


def test_passes_through_is_follow_approved_returning_the_block() -> None:
    blocks = [_TRACER.fresh_lines() for _ in range(200)]
    for block in [m for b in blocks[:20] for m in _mutations(b)] + blocks:
        want = _TRACER.follow_approved(block) is block
        assert tracing._passes_through_py(block) == want
        if speedups.block_passes is not None:
            assert speedups.block_passes(block) == want
    assert tracing.passes_through(b"short") is False


# -- a known head's trace block -----------------------------------------------------------------------

_HEAD = b"GET /orders HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\n%bx-plexus-caller: web\r\n\r\n"
_value = st.binary(min_size=0, max_size=40) | st.sampled_from(
    [b"0123abcd-0000-4000-8000-000000000001", b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-00"]
)


def _decoded(heads: list[bytes], native: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    monkeypatch.setattr(request_decoder, "_native_block", native)
    got: list[tuple[Any, ...]] = []

    class Sink:
        def on_request_head(self, head: RequestHead) -> None:
            got.append((head.fields(), head.trace, head.trace_block))

        def on_request_body(self, data: bytes) -> None:
            got.append(("body", data))

        def on_request_end(self) -> None:
            got.append(("end",))

        def on_upgrade(self, tail: bytes) -> None:
            got.append(("upgrade", tail))

        def on_request_error(self, error: Exception) -> None:
            got.append(("error", str(error)))

    decoder = RequestDecoder(Sink(), block_check=Tracer.approves_block)
    for head in heads:
        decoder.feed(head)
    return got


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_value, _value), min_size=1, max_size=6))
def test_known_blocks_decode_alike_with_and_without_the_c_check(
    monkeypatch: pytest.MonkeyPatch, values: list[tuple[bytes, bytes]]
) -> None:
    """Heads of one layout with any values in their blocks (of the same lengths as the first one's, which
    is what the C check is for, or not): the same heads, trace context and blocks either way."""
    first = _TRACER.fresh_lines()
    heads = [_HEAD % first, _HEAD % _TRACER.fresh_lines()]
    for request_id, parent in values:
        heads.append(_HEAD % b"x-request-id: %b\r\ntraceparent: %b\r\n" % (request_id, parent))
        # The same lengths as the first block, values changed byte by byte (quotes, upper case, CRs...).
        same = bytearray(_TRACER.fresh_lines())
        for i, byte in enumerate((request_id + parent)[:20]):
            same[14 + (i * 7) % (len(same) - 16)] = byte
        heads.append(_HEAD % bytes(same))
    python = _decoded(heads, None, monkeypatch)
    native = speedups.known_block
    if native is not None:
        found: list[Any] = []

        def counted(*args: Any) -> Any:
            found.append(native(*args))
            return found[-1]

        assert _decoded(heads, counted, monkeypatch) == python
        assert found[0] is not None  # (the second head: the first one's layout, other ids)

"""The codec suite (test_connection, test_attacks, test_split, test_grpcio_interop) run on the nghttp2 engine.

Each existing test module names ``Http2ServerCodec`` / ``Http2ClientCodec`` at module level; here those names
are swapped for the ngh2 codecs while the test runs, so the very same scenarios and assertions apply. Tests
that reach into h2's internals, or whose GOAWAY detail differs by design, have ngh2 versions in
test_ngh2_engine.py instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from plexus.codec.http2.ngh2_engine import Ngh2ClientCodec, Ngh2ServerCodec

from . import test_attacks, test_connection, test_grpcio_interop, test_split
from .test_grpcio_interop import grpcio_server  # noqa: F401  (a fixture the interop cases ask for)

# Covered by test_ngh2_engine.py: h2 internals, or a GOAWAY code / count that libnghttp2 decides.
_REPLACED = {
    "test_decoded_size_rechecked_after_hpack",  # pokes h2's HPACK decoder
    "test_refused_streams_count_as_resets",  # libnghttp2 refuses the whole read before our window trips
    "test_stream_error_closes_only_that_stream",  # DATA after END_STREAM: libnghttp2 fails the connection
}


def _cases() -> list[Any]:
    cases = []
    for module in (test_connection, test_attacks, test_split, test_grpcio_interop):
        for name, fn in vars(module).items():
            if name.startswith("test_") and inspect.isfunction(fn) and name not in _REPLACED:
                cases.append(pytest.param(module, fn, id=f"{module.__name__.rsplit('.', 1)[1]}::{name}"))
    return cases


@pytest.fixture
def on_ngh2(monkeypatch: pytest.MonkeyPatch) -> Callable[[ModuleType], None]:
    def swap(module: ModuleType) -> None:
        monkeypatch.setattr(module, "Http2ServerCodec", Ngh2ServerCodec)
        monkeypatch.setattr(module, "Http2ClientCodec", Ngh2ClientCodec)

    return swap


@pytest.mark.parametrize(("module", "fn"), _cases())
def test_suite_on_ngh2(
    module: ModuleType, fn: Callable[..., None], on_ngh2: Callable[[ModuleType], None], request: Any
) -> None:
    on_ngh2(module)
    args = [request.getfixturevalue(name) for name in inspect.signature(fn).parameters]
    fn(*args)

"""Exchange._ended's usual path in C (plexus.core.speedups.journal_end) against its Python path, through two
real sidecars: the same requests give the same entries, counters, taps and spans either way, and the C
path takes the usual requests (the same signature as the connection's last one, nothing needed at once)
while it leaves the rest to Python (a new signature, a failure, a status past the small ints, a tap open,
a sampled request while spans are exported).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import h11
import pytest

from plexus.core import speedups
from plexus.proxy.telemetry import entry_of
from plexus.transport import DataPlane, http_exchange
from transport.test_http_telemetry import Chain
from transport.upstreams import LoopThread, read_response

_FIELDS = (
    "direction",
    "service",
    "protocol",
    "method",
    "path",
    "status",
    "reason",
    "flags",
    "request_bytes",
    "response_bytes",
    "peer_workload",
    "attempts",
    "sampled",
    "authority",
    "user_agent",
)


def _requests() -> list[bytes]:
    plain = b"GET /items?id=%d HTTP/1.1\r\nHost: orders\r\nUser-Agent: t\r\n\r\n"
    out = [plain % i for i in range(3)] + [plain % 7] * 4
    out += [b"GET /retriable HTTP/1.1\r\nHost: orders\r\nUser-Agent: t\r\n\r\n"] * 2  # 503: failed
    out += [b"POST /echo HTTP/1.1\r\nHost: orders\r\nContent-Length: 3\r\n\r\nabc"] * 3
    out += [plain % 9] * 3
    return out


def _send(chain: Chain, requests: list[bytes]) -> None:
    with socket.create_connection(chain.egress, timeout=5) as s:
        for request in requests:
            s.sendall(request)
            read_response(s)


def _run(chain: Chain, native: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The same requests on fresh connections (a connection keeps the tracer it started with): unsampled,
    then with a tap open, then with spans exported, sampled and not."""
    monkeypatch.setattr(http_exchange, "_native_end", native)
    planes: tuple[DataPlane, DataPlane] = (chain.consumer, chain.provider)
    chain.sample_percent(0.0)
    _send(chain, _requests())
    chain.lt.call(lambda: [p.stats.telemetry.open_tap("t1", "") for p in planes])
    _send(chain, _requests()[:6])
    tapped = chain.lt.call(lambda: [[e.path for e in p.stats.telemetry.taps["t1"].lines] for p in planes])
    chain.lt.call(lambda: [p.stats.telemetry.close_tap("t1") for p in planes])

    def exporting() -> None:
        for p in planes:
            p.stats.telemetry.exporting_spans = True

    chain.lt.call(exporting)
    for percent in (100.0, 0.0):
        chain.sample_percent(percent)
        _send(chain, _requests()[3:9])
    chain.wait_entries(chain.consumer, 33)  # (the provider sees the retries of /retriable too)

    def seen() -> dict[str, Any]:
        got: dict[str, Any] = {}
        for name, plane in zip(("consumer", "provider"), planes, strict=True):
            telemetry = plane.stats.telemetry
            entries = telemetry.recent  # (settles the journal)
            got[name] = [tuple(getattr(e, f) for f in _FIELDS) for e in entries]
            got[name + " spans"] = [(e.path, e.status) for e in map(entry_of, telemetry.spans)]
            got[name + " failures"] = [(e.path, e.status) for e in telemetry.recent_failures]
            text = plane.stats.render()
            got[name + " counters"] = [
                line
                for line in text.splitlines()
                if line.startswith(("istio_requests_total", "istio_request_bytes_count"))
                or line.startswith(("istio_response_bytes_sum", "istio_request_duration_milliseconds_count"))
            ]
        return got

    result: dict[str, Any] = chain.lt.call(seen)
    result["tapped"] = tapped
    return result


@pytest.fixture
def two_chains(lt: LoopThread) -> Iterator[tuple[Chain, Chain]]:
    chains = (Chain(lt), Chain(lt))
    try:
        yield chains
    finally:
        for chain in chains:
            chain.close()


@pytest.mark.skipif(speedups.journal_end is None, reason="plexus.core._speedups is not built")
def test_the_c_end_of_an_exchange_is_the_python_one(
    two_chains: tuple[Chain, Chain], monkeypatch: pytest.MonkeyPatch
) -> None:
    native = speedups.journal_end
    assert native is not None
    taken: list[bool] = []

    def counted(*args: Any) -> bool:
        done = native(*args)
        taken.append(done)
        return done

    with_c = _run(two_chains[0], counted, monkeypatch)
    python = _run(two_chains[1], None, monkeypatch)
    assert with_c == python
    assert with_c["consumer"] and with_c["provider counters"]
    # Both ways: the C path took the repeated requests and left the others to Python.
    assert taken.count(True) >= 20 and taken.count(False) >= 20
    assert with_c["consumer failures"] == [("/retriable", 503)] * 6
    assert with_c["consumer spans"]  # sampled while spans were exported: entries made at once
    assert [len(paths) for paths in with_c["tapped"]] == [6, 6]  # every request seen while the tap was open


def test_a_status_past_the_small_ints_takes_the_same_outcome(lt: LoopThread) -> None:
    """A status the response decoder makes as a new int object each time (404) still finds the
    connection's last outcome: compared by value, as the Python path compares it."""
    chain = Chain(lt)

    async def answer(
        conn: h11.Connection, writer: asyncio.StreamWriter, req: h11.Request, body: bytes
    ) -> None:
        writer.write(conn.send(h11.Response(status_code=404, headers=[("content-length", "1")])) or b"")
        writer.write(conn.send(h11.Data(data=b"x")) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

    chain.app._answer = answer  # type: ignore[method-assign]
    try:
        chain.sample_percent(0.0)
        with socket.create_connection(chain.egress, timeout=5) as s:
            for _ in range(5):
                s.sendall(b"GET /gone HTTP/1.1\r\nHost: orders\r\n\r\n")
                assert read_response(s)[0] == 404
        entries = chain.wait_entries(chain.provider, 5)
        assert [e.status for e in entries] == [404] * 5
        outcomes = chain.lt.call(lambda: {id(item[0]) for item in chain.provider.stats.telemetry.ring})
        assert len(outcomes) == 1
    finally:
        chain.close()


"""The access log: JSON lines with Envoy's fields, written in batches off the hot path, to a file or stdout.

The writer's own tests run it on a loop of this process; the end-to-end test runs real sidecars with
``--access-log`` and reads what they wrote for real requests.
"""

from __future__ import annotations

import asyncio
import io
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sidecar_helpers import Group, api, start_echo
from telemetry_mesh import APP_BODY, TelemetryMesh, telemetry_mesh

from plexus.core import reasons
from plexus.proxy import DataPlaneStats
from plexus.proxy.telemetry import ACCESS_LOG_BATCH, INBOUND, OUTBOUND, RequestEntry, Telemetry, response_flag
from plexus.sidecar.access_log import FLUSH_INTERVAL, AccessLogError, AccessLogWriter, entry_record
from plexus.testing.procs import wait_for

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ENVOY_FIELDS = {
    "start_time",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_host",
    "upstream_cluster",
    "authority",
    "user_agent",
    "request_id",
    "trace_id",
}


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# Both ways of writing a file: with O_DIRECT by plexus.sidecar._direct_log's thread, and through the page
# cache.
WAYS = [pytest.param(True, id="direct"), pytest.param(False, id="page-cache")]


@pytest.mark.parametrize("direct", WAYS)
def test_writer_formats_batches_on_its_timer_and_flushes_on_close(tmp_path: Path, direct: bool) -> None:
    log_path = tmp_path / "access.log"

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        telemetry = Telemetry("shop-v1", "prod")
        telemetry.set_clock(loop.time())
        writer = AccessLogWriter.open(str(log_path), telemetry, direct=direct)
        assert writer.direct is direct
        writer.start(loop)
        stats = DataPlaneStats(telemetry).service("orders", "egress")
        began = loop.time()
        stats.done(
            RequestEntry(
                OUTBOUND,
                "orders",
                "http",
                "POST",
                "/cart?x=1",
                began,
                12.3456,
                201,
                request_bytes=17,
                response_bytes=230,
                peer_workload="orders-v2",
                upstream="10.0.0.7:15006",
                request_id="req-1",
                authority="orders:8080",
                user_agent="curl/8",
                trace_id="ab" * 16,
                span_id="cd" * 8,
                attempts=2,
            )
        )
        assert _lines(log_path) == []  # nothing on the hot path: the timer writes
        await asyncio.sleep(FLUSH_INTERVAL * 4)
        first = _lines(log_path)
        stats.done(
            RequestEntry(
                INBOUND,
                "orders",
                "grpc",
                "Get",
                "/shop.Orders/Get",
                loop.time(),
                0.2,
                200,
                grpc_status="14",
                reason=reasons.LOCAL_APP_UNAVAILABLE,
                flags=response_flag(reasons.LOCAL_APP_UNAVAILABLE),
            )
        )
        writer.close()  # written at once, not lost with the timer
        assert telemetry.access_log is None and telemetry.access_log_written == 2
        return first, _lines(log_path)

    first, both = asyncio.run(run())
    assert len(first) == 1 and len(both) == 2
    line = first[0]
    assert set(line) >= ENVOY_FIELDS
    assert ISO_MS.match(line["start_time"])
    assert (
        abs(
            time.mktime(time.strptime(line["start_time"][:19], "%Y-%m-%dT%H:%M:%S"))
            - time.mktime(time.gmtime())
        )
        < 60
    )
    assert (line["method"], line["path"], line["protocol"]) == ("POST", "/cart?x=1", "HTTP/1.1")
    assert (line["response_code"], line["response_flags"], line["response_code_details"]) == (
        201,
        "-",
        "via_upstream",
    )
    assert (line["bytes_received"], line["bytes_sent"], line["duration"]) == (17, 230, 12)
    assert "duration_ms" not in line  # (12.346 ms: Envoy's whole milliseconds only)
    assert line["upstream_host"] == "10.0.0.7:15006" and line["upstream_cluster"] == "outbound|||orders"
    assert (line["authority"], line["user_agent"], line["request_id"]) == ("orders:8080", "curl/8", "req-1")
    assert line["trace_id"] == "ab" * 16
    assert (line["workload"], line["peer_workload"], line["attempts"]) == ("shop-v1", "orders-v2", 2)
    assert line["grpc_status"] is None
    failed = both[1]
    assert failed["protocol"] == "HTTP/2" and failed["grpc_status"] == "14"
    assert failed["response_flags"] == "UF" and failed["response_code_details"] == "local_app_unavailable"
    assert failed["upstream_host"] is None and failed["upstream_cluster"].startswith("inbound|")


def test_dash_writes_to_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    telemetry = Telemetry("w")
    writer = AccessLogWriter.open("-", telemetry)
    telemetry.access_log = []
    telemetry.observe(RequestEntry(OUTBOUND, "s", "http", "GET", "/p", 0.0, 1.0, 204))
    writer.close()  # flushes, and leaves stdout open
    (line,) = out.getvalue().splitlines()
    assert orjson.loads(line)["response_code"] == 204 and not sys.stdout.closed


def test_protocol_names() -> None:
    def entry(protocol: str, version: str = "") -> RequestEntry:
        return RequestEntry(OUTBOUND, "s", protocol, "GET", "/", 0.0, 1.0, 200, http_version=version)

    telemetry = Telemetry()
    assert [entry_record(entry(p), telemetry)["protocol"] for p in ("http", "grpc", "bolt", "dubbo")] == [
        "HTTP/1.1",
        "HTTP/2",
        "bolt",
        "dubbo",
    ]
    assert entry_record(entry("http", "2"), telemetry)["protocol"] == "HTTP/2"


def test_open_error_names_the_flag_and_a_failed_write_is_counted(tmp_path: Path) -> None:
    telemetry = Telemetry()
    for direct in (True, False):
        with pytest.raises(AccessLogError, match=r"--access-log .*/missing/access\.log: cannot open"):
            AccessLogWriter.open(str(tmp_path / "missing" / "access.log"), telemetry, direct=direct)
    writer = AccessLogWriter.open(str(tmp_path / "a.log"), telemetry, direct=False)
    telemetry.access_log = []
    for _ in range(3):
        telemetry.observe(RequestEntry(OUTBOUND, "s", "http", "GET", "/", 0.0, 1.0, 200))
    writer._stream.close()  # the file went away under the writer: its batch is lost and counted
    assert writer.flush() == 0
    assert telemetry.access_log_failed == 3 and telemetry.access_log == []


# -- end to end --------------------------------------------------------------------------------------


@pytest.fixture
def mesh(request: pytest.FixtureRequest) -> TelemetryMesh:
    mesh = telemetry_mesh(request)
    mesh.provide("hello-log")
    return mesh


def test_sidecars_log_real_requests_and_a_failure(mesh: TelemetryMesh) -> None:
    a, b, a_log, b_log = mesh.a, mesh.b, mesh.a_log, mesh.b_log
    shared = a.address("egress")
    response = wait_for(
        lambda: _ok(
            httpx.get(
                f"http://{shared}/whoami", headers={"Host": "hello-log", "User-Agent": "t/1"}, timeout=5
            )
        ),
        timeout=15,
        what="a call through A and B",
    )
    request_id = response.request.headers.get("x-request-id")
    failed = httpx.get(f"http://{shared}/x", headers={"Host": "no-such-service"}, timeout=10)
    assert failed.status_code >= 400

    def logged() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        mine = [x for x in _lines(a_log) if x["path"] == "/whoami" and x["response_code"] == 200]
        theirs = [x for x in _lines(b_log) if x["path"] == "/whoami" and x["response_code"] == 200]
        refused = [x for x in _lines(a_log) if x["path"] == "/x"]
        return (mine + refused, theirs) if mine and theirs and refused else None

    found = wait_for(logged, timeout=10, what="access-log lines of both sidecars (do the transports report?)")
    assert found is not None
    ours, theirs = found
    out, refused = ours[-2], ours[-1]
    inbound = theirs[-1]
    assert set(out) >= ENVOY_FIELDS and ISO_MS.match(out["start_time"])
    assert inbound["upstream_cluster"] == "inbound|||hello-log"
    assert out["method"] == "GET" and out["protocol"] == "HTTP/1.1" and out["user_agent"] == "t/1"
    assert out["upstream_host"] == b.address("ingress") and out["upstream_cluster"] == "outbound|||hello-log"
    assert out["bytes_sent"] == len(APP_BODY) and out["workload"] == "web"
    assert out["peer_workload"] == "hello-v1" and inbound["peer_workload"] == "web"
    assert out["request_id"] and out["request_id"] == inbound["request_id"]  # one id across both hops
    if request_id is not None:
        assert out["request_id"] == request_id
    assert out["trace_id"] and out["trace_id"] == inbound["trace_id"]
    assert refused["response_code"] == failed.status_code
    assert refused["response_flags"] == "NR" and refused["response_code_details"] == reasons.UNKNOWN_SERVICE


def _ok(response: httpx.Response) -> httpx.Response | None:
    return response if response.status_code == 200 else None


@pytest.mark.parametrize("direct", WAYS)
def test_a_full_batch_is_written_before_the_timer(tmp_path: Path, direct: bool) -> None:
    """ACCESS_LOG_BATCH lines queued: the writer writes them as soon as the loop is free, not 0.1 s later
    (with O_DIRECT, its thread has them in the file a few milliseconds after that)."""
    log_path = tmp_path / "access.log"

    async def run() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        telemetry = Telemetry("shop-v1")
        telemetry.set_clock(loop.time())
        writer = AccessLogWriter.open(str(log_path), telemetry, direct=direct)
        writer.start(loop)
        stats = DataPlaneStats(telemetry).service("orders", "ingress")
        for i in range(ACCESS_LOG_BATCH + 1):
            stats.done(RequestEntry(INBOUND, "orders", "http", "GET", f"/{i}", loop.time(), 0.5, 200))
        assert _lines(log_path) == []  # never while requests are being served
        began = time.monotonic()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert telemetry.access_log == []  # handed over before the timer
        if direct:  # (the loop's timer never ran: the thread wrote them, whole blocks and then the tail)
            while len(_lines(log_path)) < ACCESS_LOG_BATCH + 1 and time.monotonic() - began < FLUSH_INTERVAL:
                time.sleep(0.005)
        early = len(_lines(log_path))  # well before FLUSH_INTERVAL
        writer.close()
        return early, len(_lines(log_path))

    early, total = asyncio.run(run())
    assert early == ACCESS_LOG_BATCH + 1
    assert total == ACCESS_LOG_BATCH + 1


@pytest.mark.parametrize("direct", WAYS)
def test_journaled_requests_are_written_by_the_next_flush(tmp_path: Path, direct: bool) -> None:
    """An HTTP/1.1 request that ended through its outcome waits in the telemetry's journal, uncounted; the
    writer's flush settles the journal first, so one request is logged on the next tick, not after
    hundreds."""
    from plexus.proxy.outcomes import outcome_for, request_ended
    from plexus.proxy.tracing import Tracer, ids_from_lines

    log_path = tmp_path / "access.log"
    telemetry = Telemetry("shop-v1", "prod")
    writer = AccessLogWriter.open(str(log_path), telemetry, direct=direct)
    telemetry.access_log = []
    stats = DataPlaneStats(telemetry).service("orders", "egress")
    key = (b"GET", b"/cart", b"orders", b"curl/8", 200, "", "-", "10.0.0.7:15006", "orders-v2", 1)
    lines = Tracer(sample_percent=0).fresh_lines()
    request_ended(stats, outcome_for(stats, key), 1.0, 2.5, 0, 13, (b"orders", b"curl/8", lines, None), None)
    assert telemetry.journal and telemetry.access_log == []  # journaled: nothing queued yet
    assert writer.flush() == 1
    writer.close()
    (line,) = _lines(log_path)
    assert (line["path"], line["response_code"], line["bytes_sent"]) == ("/cart", 200, 13)
    assert line["request_id"] == ids_from_lines(lines)[0] and stats.by_class[2] == 1


def test_sidecars_log_a_tcp_connection_when_it_closes(mesh: TelemetryMesh) -> None:
    group = Group()
    try:
        _, echo_port = start_echo(group)
        published = api(mesh.b, "PUT", "/v1/providers/echo-log", {"port": echo_port, "protocol": "tcp"})
        assert published.status_code == 200, published.text
        tcp_ingress = published.json()["address"]
        host, _, port = api(mesh.a, "PUT", "/v1/consumers/echo-log").json()["address"].rpartition(":")
        payload = b"ping over two sidecars\n"

        def echoed() -> bool:
            with socket.create_connection((host, int(port)), timeout=5) as conn:
                conn.sendall(payload)
                data = b""
                while len(data) < len(payload):
                    chunk = conn.recv(100)
                    if not chunk:
                        break
                    data += chunk
                return data == payload

        wait_for(echoed, timeout=15, what="a TCP echo through A and B")

        def logged() -> tuple[dict[str, Any], dict[str, Any]] | None:
            def echoes(path: Path) -> list[dict[str, Any]]:
                return [
                    x
                    for x in _lines(path)
                    if x["protocol"] == "tcp"
                    and x["upstream_cluster"].endswith("|echo-log")
                    and x["bytes_sent"] == len(payload)
                ]

            ours, theirs = echoes(mesh.a_log), echoes(mesh.b_log)
            return (ours[-1], theirs[-1]) if ours and theirs else None

        found = wait_for(logged, timeout=10, what="both sidecars' lines for the connection")
        assert found is not None
        out, inbound = found
        assert set(out) >= ENVOY_FIELDS and ISO_MS.match(out["start_time"])
        assert inbound["upstream_cluster"] == "inbound|||echo-log"
        assert (out["response_code"], out["response_flags"], out["response_code_details"]) == (0, "-", None)
        assert out["bytes_received"] == len(payload) == inbound["bytes_received"] == inbound["bytes_sent"]
        assert out["upstream_host"] == tcp_ingress and out["upstream_cluster"] == "outbound|||echo-log"
        assert inbound["upstream_host"] == f"127.0.0.1:{echo_port}"
        assert out["peer_workload"] == "hello-v1" and out["workload"] == "web"
        assert out["method"] is None and out["path"] is None and out["request_id"] is None
    finally:
        group.stop_all()

"""Span export: sampled requests become OpenTelemetry spans, one per hop, to a JSON-lines file or OTLP/HTTP.

The OTLP test runs a real OTLP/HTTP receiver (an HTTP server on 127.0.0.1:0 that decodes
ExportTraceServiceRequest with opentelemetry-proto); the end-to-end test chains two real sidecars with 100%
sampling and reads their span files.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from telemetry_mesh import TelemetryMesh, telemetry_mesh

from plexus.config.bootstrap import BootstrapError, resolve_bootstrap
from plexus.core import reasons
from plexus.proxy.telemetry import INBOUND, OUTBOUND, RequestEntry, Telemetry, response_flag
from plexus.sidecar.trace_export import SpanExport, TraceExportError
from plexus.testing.procs import wait_for

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACED_SERVICE = "hello-trace"
SERVER_SPAN = "b7ad6b7169203331"


def _hop_entries(loop_time: float) -> list[RequestEntry]:
    """One request as both sidecars saw it: A's CLIENT span is the parent of B's SERVER span."""
    return [
        RequestEntry(
            OUTBOUND,
            "orders",
            "http",
            "GET",
            "/orders/7",
            loop_time,
            12.5,
            200,
            peer_workload="orders-v1",
            upstream="127.0.0.1:15006",
            request_id="req-1",
            trace_id=TRACE,
            span_id=CLIENT_SPAN,
            sampled=True,
        ),
        RequestEntry(
            INBOUND,
            "orders",
            "http",
            "GET",
            "/orders/7",
            loop_time + 0.001,
            10.0,
            503,
            peer_workload="web",
            request_id="req-1",
            trace_id=TRACE,
            span_id=SERVER_SPAN,
            parent_span_id=CLIENT_SPAN,
            sampled=True,
            reason=reasons.LOCAL_APP_UNAVAILABLE,
            flags=response_flag(reasons.LOCAL_APP_UNAVAILABLE),
        ),
    ]


def _export(spec: str, telemetry: Telemetry) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        telemetry.set_clock(loop.time())
        export = SpanExport.open(spec, telemetry)
        assert export is not None
        export.start(loop)
        for entry in _hop_entries(loop.time()):
            telemetry.observe(entry)
        await export.aclose()  # hands over what is queued and waits for the worker

    asyncio.run(run())


def test_file_export_writes_otlp_shaped_lines(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    telemetry = Telemetry("web", "shop")
    _export(f"file:{path}", telemetry)
    spans = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert telemetry.spans_exported == 2 and telemetry.spans_failed == 0
    client, server = spans
    assert client["traceId"] == server["traceId"] == TRACE
    assert (client["spanId"], client["parentSpanId"], client["kind"]) == (CLIENT_SPAN, "", "CLIENT")
    assert (server["spanId"], server["parentSpanId"], server["kind"]) == (SERVER_SPAN, CLIENT_SPAN, "SERVER")
    start, end = int(client["startTimeUnixNano"]), int(client["endTimeUnixNano"])
    assert end - start == 12_500_000
    attributes = client["attributes"]
    assert attributes["http.method"] == "GET" and attributes["http.target"] == "/orders/7"
    assert attributes["http.status_code"] == 200 and attributes["upstream_address"] == "127.0.0.1:15006"
    assert attributes["guid:x-request-id"] == "req-1" and attributes["plexus.peer_workload"] == "orders-v1"
    assert attributes["plexus.workload"] == "web" and attributes["plexus.service"] == "orders"
    assert client["status"]["code"] == "UNSET"
    assert server["status"] == {"code": "ERROR", "message": reasons.LOCAL_APP_UNAVAILABLE}
    assert server["attributes"]["response_flags"] == "UF"
    assert client["resource"]["service.name"] == "web" and client["resource"]["service.namespace"] == "shop"


def test_bad_specs_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(TraceExportError, match="--trace-export"):
        SpanExport.open("kafka:somewhere", Telemetry())
    with pytest.raises(TraceExportError, match=r"--trace-export file:.*cannot open"):
        SpanExport.open(f"file:{tmp_path / 'missing' / 'x.jsonl'}", Telemetry())
    assert SpanExport.open("none", Telemetry()) is None
    assert SpanExport.open(None, Telemetry()) is None  # a bare sidecar exports nothing


_LAZY_PROBE = """
import asyncio, sys
from plexus.proxy.telemetry import Telemetry
from plexus.sidecar.trace_export import SpanExport

async def main():
    export = SpanExport.open(sys.argv[1], Telemetry())
    export.start(asyncio.get_running_loop())
    await asyncio.sleep(0.05)
    idle = "opentelemetry.sdk.trace" in sys.modules
    await export.aclose()
    print(idle, "opentelemetry.sdk.trace" in sys.modules)

asyncio.run(main())
"""


def test_an_exporter_with_no_span_to_export_never_imports_the_sdk(tmp_path: Path) -> None:
    """Idle RSS: OpenTelemetry's SDK is mapped only when the first batch of spans is exported."""
    path = tmp_path / "spans.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", _LAZY_PROBE, f"file:{path}"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
    assert path.exists() and path.read_bytes() == b""  # opened at start (a bad path fails then), left empty


class _Receiver(BaseHTTPRequestHandler):
    requests: list[ExportTraceServiceRequest] = []
    paths: list[str] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        type(self).requests.append(message)
        type(self).paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_otlp_http_export_reaches_a_real_receiver() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        telemetry = Telemetry("web", "shop")
        _export(f"otlp:http://127.0.0.1:{server.server_address[1]}", telemetry)
    finally:
        server.shutdown()
        server.server_close()
    assert _Receiver.paths == ["/v1/traces"]
    spans = [
        (resource, span)
        for message in _Receiver.requests
        for resource in message.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert telemetry.spans_exported == 2 and len(spans) == 2
    by_id = {span.span_id.hex(): (resource, span) for resource, span in spans}
    resource, server_span = by_id[SERVER_SPAN]
    _, client_span = by_id[CLIENT_SPAN]
    assert server_span.trace_id.hex() == client_span.trace_id.hex() == TRACE
    assert server_span.parent_span_id.hex() == CLIENT_SPAN and client_span.parent_span_id == b""
    assert (
        server_span.kind == server_span.SPAN_KIND_SERVER and client_span.kind == client_span.SPAN_KIND_CLIENT
    )
    attributes = {a.key: a.value for a in client_span.attributes}
    assert attributes["http.status_code"].int_value == 200
    assert attributes["guid:x-request-id"].string_value == "req-1"
    names = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert names["service.name"] == "web"


# -- end to end --------------------------------------------------------------------------------------


@pytest.fixture
def mesh(request: pytest.FixtureRequest) -> TelemetryMesh:
    mesh = telemetry_mesh(request)
    mesh.provide(TRACED_SERVICE)
    return mesh


def test_two_sidecars_make_one_trace_with_a_span_each(mesh: TelemetryMesh) -> None:
    a_spans, b_spans = mesh.a_spans, mesh.b_spans
    shared = mesh.a.address("egress")
    wait_for(
        lambda: (
            httpx.get(f"http://{shared}/whoami", headers={"Host": TRACED_SERVICE}, timeout=5).status_code
            == 200
        ),
        timeout=15,
        what="a call through A and B",
    )

    def spans(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        every = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        return [span for span in every if span["attributes"]["plexus.service"] == TRACED_SERVICE]

    def pair() -> tuple[dict[str, Any], dict[str, Any]] | None:
        clients = {s["traceId"]: s for s in spans(a_spans) if s["kind"] == "CLIENT"}
        for server in spans(b_spans):
            client = clients.get(server["traceId"])
            if server["kind"] == "SERVER" and client is not None:
                return client, server
        return None

    found = wait_for(pair, timeout=10, what="a CLIENT span from A and a SERVER span from B of one trace")
    assert found is not None
    client, server = found
    assert server["parentSpanId"] == client["spanId"] and client["parentSpanId"] == ""
    assert server["spanId"] != client["spanId"]
    assert (
        client["attributes"]["plexus.workload"] == "web"
        and server["attributes"]["plexus.workload"] == "hello-v1"
    )
    assert client["attributes"]["http.status_code"] == server["attributes"]["http.status_code"] == 200
    assert int(client["startTimeUnixNano"]) <= int(server["startTimeUnixNano"])
    assert int(server["endTimeUnixNano"]) <= int(client["endTimeUnixNano"]) + 50_000_000  # clocks of one host


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"trace_export": "jaeger:somewhere"}, "--trace-export"),
        ({"trace_export": "otlp:127.0.0.1:4318"}, "--trace-export"),
        ({"trace_sample_percent": 250}, "--trace-sample-percent"),
        ({"access_log": ""}, "--access-log"),
    ],
)
def test_bad_telemetry_flags_are_refused_naming_the_flag(flags: dict[str, object], named: str) -> None:
    with pytest.raises(BootstrapError) as info:
        resolve_bootstrap(flags, {})
    assert info.value.problems[0][0] == named


def test_an_access_log_the_sidecar_cannot_open_stops_it_naming_the_flag() -> None:
    args = ["--registry", "127.0.0.1:1", "--ingress", "127.0.0.1:0", "--egress", "127.0.0.1:0"]
    args += ["--api", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    result = subprocess.run(
        [sys.executable, "-m", "plexus", "sidecar", *args, "--access-log", "/nonexistent-plexus-dir/a.log"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "invalid configuration: --access-log /nonexistent-plexus-dir/a.log: cannot open" in result.stderr

"""`plexus stat / top / tap / explain / dashboard`: formatting of what the control plane answers, explain from
access logs, exit codes.

The tables are rendered from ``control_pb2`` messages built here: they are the commands' input as the control
plane sends it. Commands run in-process through typer's CliRunner; "unreachable" is a port nothing listens on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from plexus.cli import access_logs, observe_cmd, tables
from plexus.cli.control_access import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE
from plexus.cli.main import app
from plexus.proto import control_pb2 as pb
from plexus.testing.procs import free_port


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


# ----------------------------------------------------------------------------------------------- numbers
def test_numbers_as_linkerd_prints_them() -> None:
    assert tables.percent(0.995) == "99.50%"
    assert tables.percent(1.0) == "100.00%"
    assert tables.percent(1.0, requests=0) == "-"  # nothing in the window is not 100%
    assert tables.rps(12.34) == "12.3" and tables.rps(0.0) == "0.0"
    assert tables.millis(3.2) == "3ms" and tables.millis(250.4) == "250ms" and tables.millis(2.5) == "3ms"
    assert tables.millis(0.4) == "0.4ms" and tables.millis(12_500) == "12.5s"
    assert tables.millis(5.0, requests=0) == "-"
    assert tables.meshed(2, 3) == "2/3" and tables.meshed(1, 0) == "1/?"


def test_durations() -> None:
    assert tables.parse_duration("30s") == 30.0
    assert tables.parse_duration("500ms") == 0.5
    assert tables.parse_duration("2m") == 120.0
    assert tables.parse_duration("1.5") == 1.5
    for bad in ("", "fast", "-3s", "0s", "3 days"):
        with pytest.raises(ValueError):
            tables.parse_duration(bad)


def test_table_columns_align_and_numbers_right_align() -> None:
    text = tables.render_table(["NAME", "N"], [["a", "1"], ["longer-name", "12345"]], right=(1,))
    header, first, second = text.splitlines()
    assert header == "NAME              N"
    assert first == "a                 1"
    assert second == "longer-name   12345"


def stat_response() -> pb.StatResponse:
    return pb.StatResponse(
        window_seconds=30,
        services=[
            pb.ServiceStat(
                service="hello",
                meshed=2,
                instances=3,
                success_rate=0.995,
                rps=12.34,
                latency_p50_ms=3.2,
                latency_p95_ms=17.6,
                latency_p99_ms=250.0,
                tcp_connections=4,
                requests=370,
                protocol="http",
            ),
            pb.ServiceStat(
                service="a-much-longer-service-name",
                meshed=1,
                instances=1,
                success_rate=1.0,
                requests=0,
                protocol="grpc",
            ),
        ],
        paths=[
            pb.PathStat(
                service="hello",
                method="GET",
                path="/slow",
                rps=0.5,
                success_rate=0.5,
                latency_p50_ms=800,
                latency_p99_ms=12_000,
                requests=15,
            ),
            pb.PathStat(
                service="hello",
                method="GET",
                path="/whoami",
                rps=12.0,
                success_rate=1.0,
                latency_p50_ms=2.0,
                latency_p99_ms=9.0,
                requests=360,
            ),
            pb.PathStat(service="other", method="POST", path="/x", rps=1.0, success_rate=1.0, requests=30),
        ],
    )


def test_stat_table() -> None:
    header, hello, idle = observe_cmd.stat_table(stat_response()).splitlines()
    assert header.split() == [
        "SERVICE",
        "MESHED",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
    ]
    assert hello.split() == ["hello", "2/3", "99.50%", "12.3", "3ms", "18ms", "250ms", "4"]
    assert idle.split() == ["a-much-longer-service-name", "1/1", "-", "0.0", "-", "-", "-", "0"]
    # every column starts (left) or ends (right-aligned numbers) at the same offset on every line
    assert hello.index("hello") == idle.index("a-much") == 0
    for name in ("MESHED", "SUCCESS", "RPS", "LATENCY_P99", "TCP_CONN"):
        end = header.index(name) + len(name)
        assert hello[end - 1] != " " and idle[end - 1] != " ", name
        assert hello[end : end + 1] in ("", " ") and idle[end : end + 1] in ("", " ")


def test_stat_wide_and_json() -> None:
    header, hello, _ = observe_cmd.stat_table(stat_response(), wide=True).splitlines()
    assert header.split()[-2:] == ["PROTOCOL", "REQUESTS"] and hello.split()[-2:] == ["http", "370"]
    document = observe_cmd.stat_json(stat_response())
    assert document["window_seconds"] == 30
    first = document["services"][0]
    assert first["service"] == "hello" and first["success_rate"] == pytest.approx(0.995)
    assert first["meshed"] == 2 and first["instances"] == 3 and first["tcp_connections"] == 4
    json.dumps(document)  # serialisable as it is


# ----------------------------------------------------------------------------------------------- top
def test_top_busiest_first_and_filtered() -> None:
    response = stat_response()
    paths = observe_cmd.busiest(response, None)
    assert [p.path for p in paths] == ["/whoami", "/x", "/slow"]
    assert [p.path for p in observe_cmd.busiest(response, "hello")] == ["/whoami", "/slow"]
    header, *rows = observe_cmd.top_table(paths).splitlines()
    assert header.split() == ["SERVICE", "METHOD", "PATH", "COUNT", "RPS", "SUCCESS", "P50", "P99"]
    assert rows[0].split() == ["hello", "GET", "/whoami", "360", "12.0", "100.00%", "2ms", "9ms"]
    assert rows[2].split() == ["hello", "GET", "/slow", "15", "0.5", "50.00%", "800ms", "12.0s"]
    assert len(observe_cmd.top_table(paths, limit=1).splitlines()) == 2


# ----------------------------------------------------------------------------------------------- tap
def test_tap_line() -> None:
    out = pb.RequestLine(
        start_unix=1_764_130_000.25,
        workload="consumer",
        direction="outbound",
        service="hello",
        method="GET",
        path="/whoami",
        status=503,
        response_flags="UF",
        reason="upstream_connect_failed",
        duration_ms=3.4,
        peer_workload="hello-v1",
        request_id="req-1",
    )
    line = observe_cmd.tap_line(out)
    assert re.match(r"^\d\d:\d\d:\d\d\.250 out consumer -> hello-v1 svc=hello GET /whoami ", line), line
    assert "status=503 grpc=- flags=UF reason=upstream_connect_failed duration=3ms id=req-1" in line
    inbound = pb.RequestLine(
        start_unix=1_764_130_000.0,
        workload="hello-v1",
        direction="inbound",
        service="hello",
        protocol="grpc",
        method="POST",
        path="/pkg.Svc/Call",
        status=200,
        grpc_status="0",
        response_flags="-",
        duration_ms=0.4,
        peer_workload="consumer",
        request_id="req-2",
    )
    line = observe_cmd.tap_line(inbound)
    assert " in consumer -> hello-v1 svc=hello POST /pkg.Svc/Call status=200 grpc=0 flags=- " in line
    assert line.endswith("duration=0.4ms id=req-2") and "reason=" not in line


# ----------------------------------------------------------------------------------------------- explain
def log_record(**fields: Any) -> str:
    return json.dumps(fields)


def write_logs(tmp_path: Path) -> tuple[Path, Path]:
    """Access logs of a consumer sidecar and a provider sidecar: req-bad failed at the provider's side."""
    consumer = tmp_path / "consumer.log"
    provider = tmp_path / "provider.log"
    consumer.write_text(
        "\n".join(
            [
                log_record(
                    start_time="2026-11-26T04:30:00.100Z",
                    request_id="req-ok",
                    workload="consumer",
                    direction="outbound",
                    service="hello",
                    method="GET",
                    path="/",
                    response_code=200,
                    response_flags="-",
                    response_code_details="via_upstream",
                    duration=2,
                    upstream_host="127.0.0.1:4001",
                ),
                "not json: a stray line",
                log_record(
                    start_time="2026-11-26T04:30:01.000Z",
                    request_id="req-bad",
                    workload="consumer",
                    direction="outbound",
                    service="hello",
                    method="GET",
                    path="/work",
                    response_code=503,
                    response_flags="-",
                    response_code_details="via_upstream",
                    duration=12,
                    duration_ms=12.5,
                    upstream_host="127.0.0.1:4001",
                ),
            ]
        )
        + "\n"
    )
    provider.write_text(
        log_record(
            start_time="2026-11-26T04:30:01.004Z",
            request_id="req-bad",
            workload="hello-v1",
            direction="inbound",
            service="hello",
            method="GET",
            path="/work",
            response_code=503,
            response_flags="UF",
            response_code_details="local_app_unavailable",
            duration=1,
            duration_ms=0.75,
            upstream_host="127.0.0.1:8080",
        )
        + "\n"
    )
    return consumer, provider


def test_hops_from_access_logs_and_the_verdict(tmp_path: Path) -> None:
    consumer, provider = write_logs(tmp_path)
    found = access_logs.read_hops([provider, consumer], "req-bad")
    assert [h.workload for h in found.hops] == ["consumer", "hello-v1"]  # oldest first across files
    assert found.lines_read == 4 and found.lines_skipped == 1
    outbound, inbound = found.hops
    assert outbound.reason == "" and outbound.status == 503 and outbound.upstream == "127.0.0.1:4001"
    assert inbound.reason == "local_app_unavailable" and inbound.response_flags == "UF"
    assert inbound.start_unix - outbound.start_unix == pytest.approx(0.004, abs=1e-6)
    # the control plane's verdict on the same hops: the deepest hop with a reason is blamed
    assert access_logs.verdict(found.hops) == (
        "hello-v1 (inbound) failed it: local_app_unavailable (UF), status 503, upstream 127.0.0.1:8080"
    )
    gone = access_logs.hop_from_record(
        {
            "request_id": "r",
            "response_code": 0,
            "response_flags": "DC",
            "response_code_details": "downstream_remote_disconnect",
            "start_time": 1764130000.5,
        }
    )
    assert gone.reason == "" and gone.response_flags == "DC" and gone.start_unix == 1764130000.5
    # Istio's own lines name no service or direction: its upstream_cluster does
    istio = access_logs.hop_from_record(
        {"request_id": "r", "upstream_cluster": "outbound|9080||reviews.default.svc.cluster.local"}
    )
    assert (istio.direction, istio.service) == ("outbound", "reviews.default.svc.cluster.local")
    plexus = access_logs.hop_from_record({"request_id": "r", "upstream_cluster": "inbound|||hello"})
    assert (plexus.direction, plexus.service) == ("inbound", "hello")
    other = access_logs.hop_from_record({"request_id": "r", "upstream_cluster": "my-cluster"})
    assert (other.direction, other.service) == ("", "my-cluster")


def test_path_order_puts_callers_before_callees_whatever_the_clocks_say() -> None:
    def hop(workload: str, direction: str, service: str, peer: str, start: float) -> pb.RequestLine:
        return pb.RequestLine(
            workload=workload,
            direction=direction,
            service=service,
            peer_workload=peer,
            start_unix=start,
            status=503,
            duration_ms=5.0,
        )

    # web -> api -> db; each callee's clock is a little behind its caller's
    hops = [
        hop("api", "inbound", "api", "web", 99.998),
        hop("db", "inbound", "db", "api", 99.990),
        hop("web", "outbound", "api", "api", 100.000),
        hop("api", "outbound", "db", "db", 99.999),
    ]
    ordered = access_logs.path_order(hops)
    assert [(h.workload, h.direction) for h in ordered] == [
        ("web", "outbound"),
        ("api", "inbound"),
        ("api", "outbound"),
        ("db", "inbound"),
    ]
    assert access_logs.verdict(hops).startswith("db (inbound) failed it")
    # a retry: both inbound attempts follow the outbound hop (a peer "unknown" may be any caller)
    retried = [
        hop("b", "inbound", "s", "unknown", 5.0),
        hop("a", "outbound", "s", "b", 5.5),
        hop("b", "inbound", "s", "a", 5.2),
    ]
    assert [h.start_unix for h in access_logs.path_order(retried)] == [5.5, 5.0, 5.2]


def test_explain_command_from_logs(tmp_path: Path) -> None:
    consumer, provider = write_logs(tmp_path)
    result = cli("explain", "req-bad", "--log", str(consumer), "--log", str(provider))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "request req-bad: 2 hops (2 access logs (4 lines))"
    assert lines[1].split() == [
        "#",
        "TIME",
        "WORKLOAD",
        "DIRECTION",
        "SERVICE",
        "STATUS",
        "FLAGS",
        "REASON",
        "UPSTREAM",
        "DURATION",
    ]
    assert lines[2].split()[2:] == [
        "consumer",
        "outbound",
        "hello",
        "503",
        "-",
        "-",
        "127.0.0.1:4001",
        "13ms",
    ]
    assert lines[3].split()[2:] == [
        "hello-v1",
        "inbound",
        "hello",
        "503",
        "UF",
        "local_app_unavailable",
        "127.0.0.1:8080",
        "0.8ms",
    ]
    assert lines[4] == (
        "verdict: hello-v1 (inbound) failed it: local_app_unavailable (UF), status 503, "
        "upstream 127.0.0.1:8080"
    )

    as_json = cli("explain", "req-bad", "--log", str(provider), "--log", str(consumer), "-o", "json")
    document = json.loads(as_json.stdout)
    assert [h["workload"] for h in document["hops"]] == ["consumer", "hello-v1"]
    assert "local_app_unavailable" in document["verdict"]

    missing = cli("explain", "req-none", "--log", str(consumer))
    assert missing.exit_code == EXIT_FAILED and 'request id "req-none" not found' in missing.output
    unreadable = cli("explain", "req-bad", "--log", str(tmp_path / "nope.log"))
    assert unreadable.exit_code == EXIT_FAILED and "nope.log" in unreadable.output


def test_dashboard_url_a_browser_can_open() -> None:
    assert observe_cmd.browsable("http://127.0.0.1:15401/", "10.0.0.5:15400") == "http://127.0.0.1:15401/"
    assert observe_cmd.browsable("http://0.0.0.0:15401/", "10.0.0.5:15400") == "http://10.0.0.5:15401/"
    assert observe_cmd.browsable("http://[::]:15401/", "[::1]:15400") == "http://[::1]:15401/"


# ----------------------------------------------------------------------------------------------- exit codes
def test_unreachable_control_plane_exits_3() -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    for args in (
        ["stat"],
        ["top"],
        ["tap", "hello", "--for", "2s"],
        ["explain", "req-1"],
        ["dashboard", "--no-browser"],
    ):
        result = cli(*args, "--control", nowhere)
        assert result.exit_code == EXIT_UNAVAILABLE, (args, result.output)
        assert f"cannot reach the control plane at {nowhere}" in result.output, args


def test_bad_usage_exits_2() -> None:
    assert cli("stat", "--window", "soon").exit_code == EXIT_USAGE
    assert cli("stat", "hello", "--all").exit_code == EXIT_USAGE
    assert cli("stat", "-o", "yaml").exit_code == EXIT_USAGE
    assert cli("top", "--interval", "0s").exit_code == EXIT_USAGE
    assert cli("tap", "hello", "--count", "0").exit_code == EXIT_USAGE
    assert cli("stat", "--control", "no-port").exit_code == EXIT_USAGE

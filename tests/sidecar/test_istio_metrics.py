"""Istio's standard metrics at a live sidecar's /stats/prometheus, read with prometheus_client's own parser.

Consumer sidecar A (workload web) → provider sidecar B (workload hello-v1) → app, in namespace shop. Values
must match the requests made, histograms must be consistent, and callers that invent workload names and
status codes must not grow the series past the bound.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sidecar_helpers import admin
from telemetry_mesh import APP_BODY, NAMESPACE, TelemetryMesh, telemetry_mesh

from plexus.proxy.stats import MAX_SERIES_PER_SERVICE, OVERFLOW
from plexus.testing.procs import ManagedProcess, wait_for

SERVICE = "hello-metrics"


@pytest.fixture
def mesh(request: pytest.FixtureRequest) -> TelemetryMesh:
    mesh = telemetry_mesh(request)
    mesh.provide(SERVICE)
    return mesh


def _families(proc: ManagedProcess, only: str = "") -> dict[str, Metric]:
    """The sidecar's /stats/prometheus parsed (``only``: the lines that mention it, the parser is slow)."""
    response = admin(proc, "/stats/prometheus")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    if only:
        text = "\n".join(line for line in text.splitlines() if only in line) + "\n"
    return {f.name: f for f in text_string_to_metric_families(text)}


def _mine(samples: list[Sample], reporter: str) -> list[Sample]:
    return [
        s for s in samples if s.labels["destination_service"] == SERVICE and s.labels["reporter"] == reporter
    ]


def _check_histogram(
    family: Metric, requests: dict[tuple[str, ...], float], key_labels: tuple[str, ...]
) -> None:
    """Per label set: buckets cumulative, +Inf == _count == the matching istio_requests_total."""
    by_series: dict[tuple[str, ...], dict[str, float]] = {}
    for s in family.samples:
        key = tuple(s.labels[k] for k in key_labels)
        series = by_series.setdefault(key, {})
        if s.name.endswith("_bucket"):
            series[s.labels["le"]] = s.value
        else:
            series[s.name.rsplit("_", 1)[1]] = s.value
    for key, value in requests.items():
        series = by_series[key]
        buckets = [v for k, v in series.items() if k not in ("sum", "count")]
        assert buckets == sorted(buckets)
        assert series["+Inf"] == series["count"] == value


def test_request_families_match_the_requests_made(mesh: TelemetryMesh) -> None:
    egress = mesh.a.address("egress")
    with httpx.Client(timeout=5) as client:
        wait_for(
            lambda: client.get(f"http://{egress}/whoami", headers={"Host": SERVICE}).status_code == 200,
            timeout=15,
            what="a call through A and B",
        )
        for _ in range(2):
            assert client.get(f"http://{egress}/whoami", headers={"Host": SERVICE}).text == APP_BODY
        for _ in range(2):
            assert client.get(f"http://{egress}/missing", headers={"Host": SERVICE}).status_code == 404

    for proc, reporter, peer in ((mesh.a, "source", "hello-v1"), (mesh.b, "destination", "web")):

        def counted(proc: ManagedProcess = proc, reporter: str = reporter) -> dict[str, float] | None:
            samples = _mine(_families(proc, "istio_requests_total")["istio_requests"].samples, reporter)
            codes = {s.labels["response_code"]: s.value for s in samples}
            return codes if codes.get("200") == 3 and codes.get("404") == 2 else None

        wait_for(counted, timeout=10, what=f"istio_requests_total of the {reporter} reporter")
        families = _families(proc)
        requests = _mine(families["istio_requests"].samples, reporter)
        assert {s.labels["response_code"]: s.value for s in requests} == {"200": 3, "404": 2}
        for s in requests:
            labels = s.labels
            assert labels["source_workload"] == "web" and labels["destination_workload"] == "hello-v1"
            assert (
                labels["source_workload_namespace"] == labels["destination_workload_namespace"] == NAMESPACE
            )
            assert labels["destination_service_namespace"] == NAMESPACE
            assert labels["destination_service_name"] == SERVICE and labels["request_protocol"] == "http"
            assert labels["response_flags"] == "-" and labels["grpc_response_status"] == ""
            assert labels["source_principal"] == labels["destination_principal"] == "unknown"
            assert labels["connection_security_policy"] == ("unknown" if reporter == "source" else "none")
            assert (
                labels["source_workload"] if reporter == "destination" else labels["destination_workload"]
            ) == peer
        by_code: dict[tuple[str, ...], float] = {
            (s.labels["reporter"], s.labels["response_code"]): s.value for s in requests
        }
        key = ("reporter", "response_code")
        for name in ("istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"):
            family = families[name]
            assert family.type == "histogram"
            _check_histogram(_only_service(family), by_code, key)
        response_sum = next(
            s.value
            for s in _only_service(families["istio_response_bytes"]).samples
            if s.name.endswith("_sum")
            and s.labels["response_code"] == "200"
            and s.labels["reporter"] == reporter
        )
        assert response_sum == 3 * len(APP_BODY)
        request_sum = sum(
            s.value
            for s in _only_service(families["istio_request_bytes"]).samples
            if s.name.endswith("_sum") and s.labels["reporter"] == reporter
        )
        assert request_sum == 0  # GETs without a body
        # the sidecar's own families are there too
        assert "plexus_requests" in families and "plexus_telemetry_dropped" in families
        assert "plexus_upstream_pool_connections" in families


def _only_service(family: Metric) -> Metric:
    kept = Metric(family.name, family.documentation, family.type)
    kept.samples = [s for s in family.samples if s.labels.get("destination_service") == SERVICE]
    return kept


def test_invented_callers_and_codes_cannot_grow_the_series(mesh: TelemetryMesh) -> None:
    ingress = mesh.b.address("ingress")
    sent = 0
    with httpx.Client(timeout=5) as client:
        for i in range(MAX_SERIES_PER_SERVICE + 60):
            path, method = (("/whoami", "GET"), ("/nothing", "GET"), ("/whoami", "DELETE"))[i % 3]
            client.request(
                method, f"http://{ingress}{path}", headers={"Host": SERVICE, "x-plexus-caller": f"bot-{i}"}
            )
            sent += 1

    def flooded() -> list[Sample] | None:
        samples = _mine(_families(mesh.b, "istio_requests_total")["istio_requests"].samples, "destination")
        bots = sum(s.value for s in samples if s.labels["source_workload"] != "web")
        return samples if bots == sent else None

    samples = wait_for(flooded, timeout=10, what="every invented caller counted")
    assert samples is not None
    assert len(samples) <= MAX_SERIES_PER_SERVICE + 1  # the bound, plus one overflow series
    overflow = [s for s in samples if s.labels["source_workload"] == OVERFLOW]
    assert len(overflow) == 1 and overflow[0].value > 0
    assert {s.labels["response_code"] for s in samples} >= {"200", "404", "501"}

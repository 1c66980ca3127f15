"""The web dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright), served
by a real `plexus control` for a small real mesh: two sidecars, a provider app serving hello, a consumer
calling it.

The page loads without script errors; the graph shows the mesh's services and workloads and the
consumer -> hello edge with its success rate, rate and p99; push status shows every sidecar SYNCED at the
control plane's version; hello gets golden-metric charts; and once the traffic has stopped and the sidecars
have reported again, the edge's request count on the page equals the consumer sidecar's own
istio_requests_total (and the service's equals the provider sidecar's).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from plexus.clients.control import ControlClient
from plexus.demo.cluster import Cluster
from plexus.demo.processes import Child

CHROMIUM = Path("/usr/bin/chromium")
WAIT = 30.0  # bounds, not timings: several test processes share two cores
SERVICE = "hello"
DESTINATION_RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hello}
spec:
  host: hello
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
"""
# The consumer's sidecar runs without --unit, so it cannot install a unit-scoped rule for hello: a NACK.
UNIT_SCOPED = """\
apiVersion: plexus.io/v1
kind: UnitRouting
metadata: {name: cells}
spec:
  hosts: [hello]
  scope: unit
"""

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium); CI installs it"
)


def get_json(admin: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=10) as response:
        return json.loads(response.read())


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def istio_requests(sidecar: Child, reporter: str, service: str) -> int:
    with urllib.request.urlopen(f"http://{sidecar.address('admin')}/stats/prometheus", timeout=10) as r:
        text = r.read().decode()
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "istio_requests_total"
            and sample.labels.get("reporter") == reporter
            and sample.labels.get("destination_service", "").split(".")[0] == service
        )
    )


def report_sequences(admin: str) -> dict[str, int]:
    return {p["node"]["id"]: int(p["report_sequence"]) for p in get_json(admin, "/api/proxies")["proxies"]}


def wait_for_reports(admin: str, more: int, after: dict[str, int] | None = None) -> None:
    base = after or {}
    ids = sorted(report_sequences(admin))
    wait_until(
        lambda: all(report_sequences(admin).get(i, 0) >= base.get(i, 0) + more for i in ids),
        f"{more} more report(s) from every sidecar",
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    mesh = Cluster(tmp_path)
    try:
        yield mesh
    finally:
        mesh.stop_all()  # every child by PID, consumers first


def test_dashboard_shows_the_mesh_and_the_sidecars_counts(cluster: Cluster) -> None:
    from playwright.sync_api import sync_playwright

    admin = cluster.start_control().address("admin")
    provider_sidecar = cluster.start_sidecar("provider-sidecar", extra=("--workload", "provider"))
    consumer_sidecar = cluster.start_sidecar("consumer-sidecar", extra=("--workload", "consumer"))
    cluster.start_provider("provider", SERVICE, "mesh", sidecar=provider_sidecar)
    applied = ControlClient(cluster.control_address).apply(DESTINATION_RULE, "hello-dr.yaml")
    assert not applied.problems and applied.version >= 1
    wait_until(lambda: len(report_sequences(admin)) == 2, "both sidecars connected")
    wait_for_reports(admin, 1)  # a window reaching back to the first reports then covers every request
    consumer = cluster.start_consumer("consumer", [SERVICE], "mesh", rate=40.0, sidecar=consumer_sidecar)

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True, timeout=WAIT * 1000
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(WAIT * 1000)
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            response = page.goto(f"http://{admin}/?window=600")
            assert response is not None and response.ok
            assert page.title() == "Plexus dashboard"

            # the graph: services and workloads as nodes, the call edge labelled with its figures
            edge = page.locator(f'#graph g.edge[data-edge="consumer->{SERVICE}"]')
            page.wait_for_function(
                "sel => Number(document.querySelector(sel)?.dataset.requests) > 0",
                arg=f'#graph g.edge[data-edge="consumer->{SERVICE}"]',
            )
            services = page.locator("#graph g.node[data-service]").evaluate_all(
                "els => els.map(e => e.dataset.service)"
            )
            assert services == [SERVICE]
            name = page.locator(f'#graph g.node[data-service="{SERVICE}"] text.name')
            assert name.text_content() == SERVICE
            workloads = page.locator("#graph g.node[data-workload]").evaluate_all(
                "els => els.map(e => e.dataset.workload).sort()"
            )
            assert workloads == ["consumer", "provider"]
            assert page.locator(f'#graph g.edge[data-serves="{SERVICE}->provider"]').count() == 1
            label = edge.locator("text.label").text_content() or ""
            assert "100%" in label and "rps" in label and "p99" in label, label
            assert float(edge.get_attribute("data-rps") or 0) > 0

            # push status: a row per sidecar, SYNCED; the consumer's sidecar (it calls hello) acknowledged the
            # version that applied the DestinationRule; every row shows what the control plane says
            version = get_json(admin, "/proxies")["version"]
            page.wait_for_function(
                "v => document.getElementById('policy-version').dataset.version === v", arg=str(version)
            )
            consumer_row = '#proxies tbody tr[data-workload="consumer"] td[data-field="acked_version"]'
            page.wait_for_function(
                "([sel, v]) => document.querySelector(sel)?.textContent === v",
                arg=[consumer_row, str(applied.version)],
            )
            rows = page.locator("#proxies tbody tr")
            assert rows.count() == 2
            assert rows.evaluate_all("rs => rs.map(r => r.dataset.state)") == ["SYNCED", "SYNCED"]
            shown_workloads = rows.evaluate_all("rs => rs.map(r => r.dataset.workload)")
            assert sorted(shown_workloads) == ["consumer", "provider"]
            expected = {p["node"]["id"]: p for p in get_json(admin, "/proxies")["proxies"]}
            for row in rows.all():
                known = expected[row.get_attribute("data-sidecar") or ""]
                for field in ("sent_version", "acked_version"):
                    shown = row.locator(f'td[data-field="{field}"]').text_content()
                    assert shown == str(known[field]) == str(known["acked_version"]), (field, shown, known)
                assert row.locator('td[data-field="state"]').text_content() == "SYNCED"

            # golden metrics over time for hello
            page.wait_for_function(
                "s => Number(document.querySelector("
                '`[data-service-metrics="${s}"] svg[data-chart="rps"]`)?.dataset.points) >= 1',
                arg=SERVICE,
            )
            charts = page.locator(f'[data-service-metrics="{SERVICE}"] svg[data-chart]')
            kinds = charts.evaluate_all("cs => cs.map(c => c.dataset.chart)")
            assert kinds == ["rps", "success_rate", "p99_ms"]

            # stop the traffic; after two more reports from each sidecar the counts are final: the page's
            # numbers equal the sidecars' own counters
            consumer.stop()
            wait_for_reports(admin, 2, report_sequences(admin))
            sent = istio_requests(consumer_sidecar, "source", SERVICE)
            received = istio_requests(provider_sidecar, "destination", SERVICE)
            assert sent > 0 and received == sent
            page.wait_for_function(
                "([sel, n]) => document.querySelector(sel)?.dataset.requests === n",
                arg=[f'#graph g.edge[data-edge="consumer->{SERVICE}"]', str(sent)],
            )
            row = page.locator(f'#services tbody tr[data-service="{SERVICE}"]')
            page.wait_for_function(
                "([sel, n]) => document.querySelector(sel)?.dataset.requests === n",
                arg=[f'#services tbody tr[data-service="{SERVICE}"]', str(received)],
            )
            assert row.locator('td[data-field="requests"]').text_content() == str(received)
            status = page.locator("#status")
            assert int(status.get_attribute("data-refreshes") or 0) >= 2, "refreshes every 2 s"
            assert status.get_attribute("data-error") == ""

            # a snapshot the consumer's sidecar refuses: its row turns NACKED with the error
            control = ControlClient(cluster.control_address)
            refused = control.apply(UNIT_SCOPED, "cells.yaml")
            assert not refused.problems
            nacked = '#proxies tbody tr[data-workload="consumer"][data-state="NACKED"]'
            page.wait_for_selector(nacked)
            error = page.locator(f'{nacked} td[data-field="last_error"]').text_content() or ""
            assert "unit" in error.lower(), error
            assert page.locator(f"{nacked} td.state-NACKED").count() == 1
            provider_row = page.locator('#proxies tbody tr[data-workload="provider"]')
            assert provider_row.get_attribute("data-state") == "SYNCED"
            assert control.delete("UnitRouting", "cells").deleted
            page.wait_for_selector('#proxies tbody tr[data-workload="consumer"][data-state="SYNCED"]')
            assert problems == []
        finally:
            browser.close()

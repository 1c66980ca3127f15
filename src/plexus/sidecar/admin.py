"""The sidecar's admin API (default 127.0.0.1:15300): /ready, /stats/prometheus, /clusters, /config_dump."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plexus.transport.control_http import ControlRequest, ControlResponse, Router

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def build_admin_api(
    *,
    ready: Callable[[], dict[str, Any] | None],
    metrics: Callable[[], str],
    clusters: Callable[[], list[dict[str, Any]]],
    config_dump: Callable[[], dict[str, Any]],
) -> Router:
    """``ready()`` returns the readiness document, or None while the sidecar is not ready (503).

    A draining sidecar answers /ready with 503 too (as Envoy does), so probes take it out of rotation; the
    document still says why.
    """
    router = Router()

    def get_ready(request: ControlRequest) -> ControlResponse:
        document = ready()
        if document is None:
            return ControlResponse.json({"ready": False}, 503)
        return ControlResponse.json(document, 503 if document.get("draining") else 200)

    def get_stats(request: ControlRequest) -> ControlResponse:
        return ControlResponse.text(metrics(), content_type=PROMETHEUS_TEXT)

    def get_clusters(request: ControlRequest) -> ControlResponse:
        return ControlResponse.json(clusters())

    def get_config_dump(request: ControlRequest) -> ControlResponse:
        return ControlResponse.json(config_dump())

    router.add("GET", "/ready", get_ready)
    router.add("GET", "/stats/prometheus", get_stats)
    router.add("GET", "/clusters", get_clusters)
    router.add("GET", "/config_dump", get_config_dump)
    return router

"""The control plane's admin HTTP API: /ready, /proxies, /config_dump, /stats/prometheus."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.json_format import MessageToDict

from plexus.control.core import ControlCore
from plexus.transport.control_http import ControlRequest, ControlResponse, Router


def proxies_json(core: ControlCore) -> dict[str, Any]:
    found: dict[str, Any] = MessageToDict(
        core.proxy_status(), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return found


def prometheus_text(core: ControlCore) -> str:
    push = core.push_state
    states = push.state_counts()
    lines = [
        "# HELP plexus_control_version The current policy version.",
        "# TYPE plexus_control_version gauge",
        f"plexus_control_version {core.version}",
        "# HELP plexus_control_resources Stored policy resources.",
        "# TYPE plexus_control_resources gauge",
        f"plexus_control_resources {len(core.get())}",
        "# HELP plexus_control_connected_sidecars Sidecars with an open stream.",
        "# TYPE plexus_control_connected_sidecars gauge",
        f"plexus_control_connected_sidecars {core.connected}",
        "# HELP plexus_control_sidecars Connected sidecars by sync state.",
        "# TYPE plexus_control_sidecars gauge",
    ]
    for state, count in states.items():
        lines.append(f'plexus_control_sidecars{{state="{state.value}"}} {count}')
    lines += [
        "# HELP plexus_control_pushes_total Snapshots pushed to sidecars.",
        "# TYPE plexus_control_pushes_total counter",
        f"plexus_control_pushes_total {push.pushes_total}",
        "# HELP plexus_control_acks_total Snapshots sidecars accepted.",
        "# TYPE plexus_control_acks_total counter",
        f"plexus_control_acks_total {push.acks_total}",
        "# HELP plexus_control_nacks_total Snapshots sidecars refused.",
        "# TYPE plexus_control_nacks_total counter",
        f"plexus_control_nacks_total {push.nacks_total}",
        "# HELP plexus_control_ignored_answers_total ACKs/NACKs of no push in flight (late or stale nonce).",
        "# TYPE plexus_control_ignored_answers_total counter",
        f"plexus_control_ignored_answers_total {push.ignored_answers_total}",
        "# HELP plexus_control_push_to_ack_seconds From a push to its ACK or NACK.",
        "# TYPE plexus_control_push_to_ack_seconds histogram",
    ]
    hist = push.push_to_ack
    for bound, count in zip((*hist.bounds, None), hist.cumulative(), strict=True):
        le = "+Inf" if bound is None else f"{bound:g}"
        lines.append(f'plexus_control_push_to_ack_seconds_bucket{{le="{le}"}} {count}')
    lines.append(f"plexus_control_push_to_ack_seconds_sum {hist.total:.6f}")
    lines.append(f"plexus_control_push_to_ack_seconds_count {hist.count}")
    return "\n".join(lines) + "\n"


def build_router(core: ControlCore, flags: Mapping[str, Any], serving: Callable[[], bool]) -> Router:
    router = Router()

    def ready(_: ControlRequest) -> ControlResponse:
        if not serving():
            return ControlResponse.json({"ready": False}, 503)
        return ControlResponse.json({"ready": True, "version": core.version})

    def proxies(_: ControlRequest) -> ControlResponse:
        return ControlResponse.json(proxies_json(core))

    def config_dump(_: ControlRequest) -> ControlResponse:
        return ControlResponse.json(
            {
                "flags": dict(flags),
                "version": core.version,
                "report_interval_ms": core.report_interval_ms,
                "stress": [{"host": s.host, "address": s.address, "percent": s.percent} for s in core.stress],
                "resources": core.resources_json(),
            }
        )

    def stats(_: ControlRequest) -> ControlResponse:
        return ControlResponse.text(
            prometheus_text(core), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    router.add("GET", "/ready", ready)
    router.add("GET", "/proxies", proxies)
    router.add("GET", "/config_dump", config_dump)
    router.add("GET", "/stats/prometheus", stats)
    return router

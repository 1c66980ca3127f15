"""The sidecar's own counters (``plexus_sidecar_*``), beside the data plane's; rendered on demand."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


class SidecarStats:
    def __init__(self) -> None:
        self.health_checks: Counter[tuple[str, str]] = Counter()  # (service, "ok"|"fail")
        self.health_transitions: Counter[tuple[str, str]] = Counter()  # (service, "withdrawn"|"restored")
        self.api_requests: Counter[tuple[str, str, int]] = Counter()  # (method, route, status)
        self.on_demand_subscriptions = 0

    def render(
        self,
        *,
        registry_connected: bool,
        published: int,
        registered: int,
        healthy: dict[str, bool],
        consumers: int,
    ) -> str:
        lines = [
            "# HELP plexus_sidecar_registry_connected Whether the registry client holds a live connection.",
            "# TYPE plexus_sidecar_registry_connected gauge",
            f"plexus_sidecar_registry_connected {int(registry_connected)}",
            "# HELP plexus_sidecar_published_instances Instances published now (healthy providers).",
            "# TYPE plexus_sidecar_published_instances gauge",
            f"plexus_sidecar_published_instances {published}",
            "# HELP plexus_sidecar_providers Services the local app registered, healthy or not.",
            "# TYPE plexus_sidecar_providers gauge",
            f"plexus_sidecar_providers {registered}",
            "# HELP plexus_sidecar_consumers Services consumed through a per-service egress port.",
            "# TYPE plexus_sidecar_consumers gauge",
            f"plexus_sidecar_consumers {consumers}",
            "# HELP plexus_sidecar_on_demand_subscriptions_total Services the shared egress subscribed.",
            "# TYPE plexus_sidecar_on_demand_subscriptions_total counter",
            f"plexus_sidecar_on_demand_subscriptions_total {self.on_demand_subscriptions}",
            "# HELP plexus_sidecar_app_healthy Whether the last health verdict of the local app was healthy.",
            "# TYPE plexus_sidecar_app_healthy gauge",
        ]
        lines += [
            f"plexus_sidecar_app_healthy{_labels([('service', s)])} {int(h)}"
            for s, h in sorted(healthy.items())
        ]
        lines += [
            "# HELP plexus_sidecar_health_checks_total Health checks of the local app, by result.",
            "# TYPE plexus_sidecar_health_checks_total counter",
        ]
        lines += [
            f"plexus_sidecar_health_checks_total{_labels([('service', s), ('result', r)])} {n}"
            for (s, r), n in sorted(self.health_checks.items())
        ]
        lines += [
            "# HELP plexus_sidecar_health_transitions_total Withdrawals and restorations by health checks.",
            "# TYPE plexus_sidecar_health_transitions_total counter",
        ]
        lines += [
            f"plexus_sidecar_health_transitions_total{_labels([('service', s), ('event', e)])} {n}"
            for (s, e), n in sorted(self.health_transitions.items())
        ]
        lines += [
            "# HELP plexus_sidecar_api_requests_total Local API requests by method, route and status.",
            "# TYPE plexus_sidecar_api_requests_total counter",
        ]
        lines += [
            f"plexus_sidecar_api_requests_total{_labels([('method', m), ('route', r), ('code', str(c))])} {n}"
            for (m, r, c), n in sorted(self.api_requests.items())
        ]
        return "\n".join(lines) + "\n"

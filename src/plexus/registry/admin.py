"""The registry's admin HTTP API: /ready, /stats/prometheus, /config_dump, /services, /services/{name}."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from plexus.discovery.model import ServiceSet
from plexus.registry.server import RegistryCore
from plexus.stores.registry_snapshot import instance_to_json
from plexus.transport.control_http import ControlRequest, ControlResponse, Router


def service_set_json(sset: ServiceSet) -> dict[str, Any]:
    return {
        "service": sset.service,
        "version": sset.version,
        "state": sset.state.value,
        "instances": [instance_to_json(i) for i in sset.instances],
    }


def prometheus_text(core: RegistryCore, subscribers: int) -> str:
    sets = [s for s in core.state.service_sets() if s.instances]
    lines = [
        "# HELP plexus_registry_services Services with at least one instance.",
        "# TYPE plexus_registry_services gauge",
        f"plexus_registry_services {len(sets)}",
        "# HELP plexus_registry_instances Instances over all services.",
        "# TYPE plexus_registry_instances gauge",
        f"plexus_registry_instances {sum(len(s.instances) for s in sets)}",
        "# HELP plexus_registry_publishers Publishers with an open stream.",
        "# TYPE plexus_registry_publishers gauge",
        f"plexus_registry_publishers {core.state.publisher_count()}",
        "# HELP plexus_registry_subscribers Open subscribe streams (watching or not).",
        "# TYPE plexus_registry_subscribers gauge",
        f"plexus_registry_subscribers {subscribers}",
        "# HELP plexus_registry_pushes_total Sets pushed to subscribers.",
        "# TYPE plexus_registry_pushes_total counter",
        f"plexus_registry_pushes_total {core.state.pushes_total}",
        "# HELP plexus_registry_publish_rejects_total Published instances refused, by offending field.",
        "# TYPE plexus_registry_publish_rejects_total counter",
    ]
    for field_name, count in sorted(core.publish_rejects.items()):
        lines.append(f'plexus_registry_publish_rejects_total{{field="{_escape(field_name)}"}} {count}')
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def build_router(core: RegistryCore, config: Mapping[str, Any], serving: Callable[[], bool]) -> Router:
    router = Router()

    def ready(_: ControlRequest) -> ControlResponse:
        if not serving():
            return ControlResponse.json({"ready": False}, 503)
        return ControlResponse.json({"ready": True, "warming": core.state.warming})

    def stats(_: ControlRequest) -> ControlResponse:
        return ControlResponse.text(
            prometheus_text(core, core.subscriber_streams),
            content_type="text/plain; version=0.0.4; charset=utf-8",
        )

    def config_dump(_: ControlRequest) -> ControlResponse:
        return ControlResponse.json(dict(config))

    def services(_: ControlRequest) -> ControlResponse:
        return ControlResponse.json(
            {
                "warming": core.state.warming,
                "services": [service_set_json(s) for s in core.state.service_sets()],
            }
        )

    def service(request: ControlRequest) -> ControlResponse:
        name = request.params["name"]
        found = core.state.service_set(name)
        if found is None:
            return ControlResponse.error(404, f"no such service: {name}")
        return ControlResponse.json(service_set_json(found))

    router.add("GET", "/ready", ready)
    router.add("GET", "/stats/prometheus", stats)
    router.add("GET", "/config_dump", config_dump)
    router.add("GET", "/services", services)
    router.add("GET", "/services/{name}", service)
    return router

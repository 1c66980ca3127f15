"""The sidecar's local API for its app: plain HTTP/JSON on 127.0.0.1 (default port 15301).

    PUT    /v1/providers/{service}   {"port": 20880, "protocol": "http", "version": "", "metadata": {},
                                      "weight": 100, "health": {"path": "/healthz"}}
                                     -> the published instance
    DELETE /v1/providers/{service}
    PUT    /v1/consumers/{service}   [{"lb": "round_robin", "hash_header": "x-user"}]
                                     -> {"address": "HOST:PORT"}
    DELETE /v1/consumers/{service}
    GET    /v1/services/{service}    -> {"service", "version", "state", "instances": [...]}
    GET    /ready                    -> 200 once the sidecar listens (the SDK probes it to find a sidecar)

Bodies are validated with pydantic (the control path, not the data path); a bad body answers 400 with the
offending field named in ``field``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from plexus.config.bootstrap import LbPolicy
from plexus.discovery.model import MAX_WEIGHT
from plexus.sidecar.mesh import LocalMesh, MeshError, ProviderSpec, instance_json
from plexus.sidecar.stats import SidecarStats
from plexus.transport.control_http import ControlRequest, ControlResponse, Router

# Every protocol of plexus.discovery.model.PROTOCOLS; "tcp" gets its own ingress port, the rest share one.
ProtocolName = Literal["http", "tcp", "grpc", "bolt", "dubbo"]


class _HealthBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Annotated[str, Field(pattern=r"^/[\x21-\x7e]*$", max_length=2048)] | None = None


class _ProviderBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: Annotated[StrictInt, Field(gt=0, le=65535)]
    protocol: ProtocolName = "http"
    version: str = ""
    metadata: dict[str, str] = Field(default_factory=dict)
    weight: Annotated[StrictInt, Field(gt=0, le=MAX_WEIGHT)] = 100
    health: _HealthBody | None = None


class _ConsumerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lb: LbPolicy | None = None
    hash_header: Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", max_length=256)] | None = None


def _bad_body(exc: pydantic.ValidationError) -> ControlResponse:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "body"
    return ControlResponse.error(400, f"{field}: {error['msg']}", field=field)


def _parse(model: type[BaseModel], request: ControlRequest) -> Any:
    body = request.json()  # ValueError -> 400 by the server
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    return model.model_validate(body)


def _mesh_error(exc: MeshError) -> ControlResponse:
    extra = {"field": exc.field} if exc.field else {}
    return ControlResponse.error(exc.status, str(exc), **extra)


Handler = Callable[[ControlRequest], Awaitable[ControlResponse]]


def build_local_api(
    mesh: LocalMesh, stats: SidecarStats, ready: Callable[[], dict[str, Any] | None]
) -> Router:
    """The local API's router. ``ready()`` returns the readiness document, or None while not ready."""
    router = Router()

    def counted(method: str, route: str, handler: Handler) -> None:
        async def wrapper(request: ControlRequest) -> ControlResponse:
            try:
                response = await handler(request)
            except pydantic.ValidationError as exc:
                response = _bad_body(exc)
            except MeshError as exc:
                response = _mesh_error(exc)
            except ValueError as exc:
                response = ControlResponse.error(400, str(exc))
            stats.api_requests[(method, route, response.status)] += 1
            return response

        router.add(method, route, wrapper)

    async def put_provider(request: ControlRequest) -> ControlResponse:
        body: _ProviderBody = _parse(_ProviderBody, request)
        if body.health is not None and body.health.path is not None and body.protocol == "tcp":
            return ControlResponse.error(
                400, "health.path: a tcp provider is checked by connecting", field="health.path"
            )
        spec = ProviderSpec(
            port=body.port,
            protocol=body.protocol,
            version=body.version,
            metadata=body.metadata,
            weight=body.weight,
            health_path=body.health.path if body.health is not None else None,
        )
        instance = await mesh.put_provider(request.params["service"], spec)
        return ControlResponse.json(instance_json(instance))

    async def delete_provider(request: ControlRequest) -> ControlResponse:
        service = request.params["service"]
        if not await mesh.delete_provider(service):
            return ControlResponse.error(404, f"{service} is not published by this sidecar")
        return ControlResponse.json({"service": service, "withdrawn": True})

    async def put_consumer(request: ControlRequest) -> ControlResponse:
        body: _ConsumerBody = _parse(_ConsumerBody, request)
        address = await mesh.put_consumer(request.params["service"], body.lb, body.hash_header)
        return ControlResponse.json({"service": request.params["service"], "address": str(address)})

    async def delete_consumer(request: ControlRequest) -> ControlResponse:
        service = request.params["service"]
        if not await mesh.delete_consumer(service):
            return ControlResponse.error(404, f"{service} is not consumed through this sidecar")
        return ControlResponse.json({"service": service, "closed": True})

    async def get_service(request: ControlRequest) -> ControlResponse:
        service = request.params["service"]
        view = mesh.service_view(service)
        if view is None:
            return ControlResponse.error(
                404, f"this sidecar does not watch {service}; subscribe with PUT /v1/consumers/{service}"
            )
        return ControlResponse.json(view)

    async def get_ready(request: ControlRequest) -> ControlResponse:
        document = ready()
        if document is None:
            return ControlResponse.json({"ready": False}, 503)
        return ControlResponse.json(document)

    counted("PUT", "/v1/providers/{service}", put_provider)
    counted("DELETE", "/v1/providers/{service}", delete_provider)
    counted("PUT", "/v1/consumers/{service}", put_consumer)
    counted("DELETE", "/v1/consumers/{service}", delete_consumer)
    counted("GET", "/v1/services/{service}", get_service)
    counted("GET", "/ready", get_ready)
    return router

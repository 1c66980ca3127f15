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

Bodies are validated by hand (a few fields; pydantic would cost the idle sidecar several MB of memory for
them); a bad body answers 400 with the offending field named in ``field``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from plexus.config.sidecar_settings import LB_POLICIES
from plexus.discovery.model import MAX_WEIGHT
from plexus.sidecar.mesh import LocalMesh, MeshError, ProviderSpec, instance_json
from plexus.sidecar.stats import SidecarStats
from plexus.transport.control_http import ControlRequest, ControlResponse, Router

# Every protocol of plexus.discovery.model.PROTOCOLS; "tcp" gets its own ingress port, the rest share one.
PROTOCOL_NAMES: Final = ("http", "tcp", "grpc", "bolt", "dubbo")
HEALTH_PATH: Final = re.compile(r"/[\x21-\x7e]*")
MAX_HEALTH_PATH: Final = 2048  # a request line, not a document
HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
MAX_HEADER_NAME: Final = 256


class BodyError(ValueError):
    """A request body field is invalid: ``field`` is its dotted path (``metadata.zone``, ``health.path``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class ConsumerBody:
    lb: str | None = None
    hash_header: str | None = None


def _body(request: ControlRequest, known: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    body = request.json()  # ValueError -> 400 by the server
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    _no_extra(body, known, prefix)
    return body


def _no_extra(body: Mapping[str, Any], known: tuple[str, ...], prefix: str = "") -> None:
    for key in body:
        if key not in known:
            raise BodyError(prefix + str(key), "unknown field; known fields: " + ", ".join(known))


def _int(body: Mapping[str, Any], name: str, default: int | None, high: int) -> int:
    value = body.get(name, default)
    if value is None:
        raise BodyError(name, "required")
    if not isinstance(value, int) or isinstance(value, bool):
        raise BodyError(name, "must be an integer")
    if not 0 < value <= high:
        raise BodyError(name, f"must be between 1 and {high}")
    return value


def _str(body: Mapping[str, Any], name: str, default: str) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise BodyError(name, "must be a string")
    return value


def _optional_str(
    body: Mapping[str, Any], name: str, pattern: re.Pattern[str], max_length: int, prefix: str = ""
) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length or pattern.fullmatch(value) is None:
        raise BodyError(prefix + name, f"must match {pattern.pattern} (at most {max_length} characters)")
    return value


def parse_provider(request: ControlRequest) -> ProviderSpec:
    """A ``PUT /v1/providers/{service}`` body; raises BodyError naming the field."""
    body = _body(request, ("port", "protocol", "version", "metadata", "weight", "health"))
    port = _int(body, "port", None, 65535)
    protocol = _str(body, "protocol", "http")
    if protocol not in PROTOCOL_NAMES:
        raise BodyError("protocol", f"must be one of {', '.join(PROTOCOL_NAMES)}")
    version = _str(body, "version", "")
    metadata = body.get("metadata", {})
    if not isinstance(metadata, dict):
        raise BodyError("metadata", "must be an object of strings")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise BodyError(f"metadata.{key}", "must be a string")
    weight = _int(body, "weight", 100, MAX_WEIGHT)
    health = body.get("health")
    health_path: str | None = None
    if health is not None:
        if not isinstance(health, dict):
            raise BodyError("health", "must be an object")
        _no_extra(health, ("path",), "health.")
        health_path = _optional_str(health, "path", HEALTH_PATH, MAX_HEALTH_PATH, "health.")
    if health_path is not None and protocol == "tcp":
        raise BodyError("health.path", "a tcp provider is checked by connecting")
    return ProviderSpec(
        port=port,
        protocol=protocol,
        version=version,
        metadata=dict(metadata),
        weight=weight,
        health_path=health_path,
    )


def parse_consumer(request: ControlRequest) -> ConsumerBody:
    """A ``PUT /v1/consumers/{service}`` body (an empty body is ``{}``); raises BodyError naming the field."""
    body = _body(request, ("lb", "hash_header"))
    lb = body.get("lb")
    if lb is not None and lb not in LB_POLICIES:
        raise BodyError("lb", f"must be one of {', '.join(LB_POLICIES)}")
    return ConsumerBody(lb, _optional_str(body, "hash_header", HEADER_NAME, MAX_HEADER_NAME))


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
            except BodyError as exc:
                response = ControlResponse.error(400, str(exc), field=exc.field)
            except MeshError as exc:
                response = _mesh_error(exc)
            except ValueError as exc:
                response = ControlResponse.error(400, str(exc))
            stats.api_requests[(method, route, response.status)] += 1
            return response

        router.add(method, route, wrapper)

    async def put_provider(request: ControlRequest) -> ControlResponse:
        spec = parse_provider(request)
        instance = await mesh.put_provider(request.params["service"], spec)
        return ControlResponse.json(instance_json(instance))

    async def delete_provider(request: ControlRequest) -> ControlResponse:
        service = request.params["service"]
        if not await mesh.delete_provider(service):
            return ControlResponse.error(404, f"{service} is not published by this sidecar")
        return ControlResponse.json({"service": service, "withdrawn": True})

    async def put_consumer(request: ControlRequest) -> ControlResponse:
        body = parse_consumer(request)
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

"""MOSN's app-facing HTTP API (``--mosn-compat``), mapped onto the sidecar's own provider/consumer logic.

SOFA mesh clients (anthunder, SOFA RPC in mesh mode) talk to MOSN at 127.0.0.1:13330 and send their calls
to its Bolt egress at 127.0.0.1:12220. Every endpoint is ``POST`` with a JSON body and answers 200 with
``{"success": bool, "errorMessage": str}`` (anthunder reads only those two; a non-200 status is "mesh
down" to it, so refusals are ``success: false`` with the reason):

    POST /configs/application  {"appName", "dataCenter", "zone", "registryEndPoint", "accessKey",
                                "secretKey", "antShareCloud"}      the app says who it is (kept, shown)
    POST /services/publish     {"serviceName", "port": "12200", "providerMetaInfo": {"protocol": "1",
                                "version": "4.0", "serializeType": "protobuf", "appName"},
                                "protocolType", "onlyPublishInCloud"}   -> LocalMesh.put_provider
    POST /services/unpublish   {"serviceName"}                      -> LocalMesh.delete_provider
    POST /services/subscribe   {"serviceName"}                      -> LocalMesh.subscribe_service
                                (answers also "datas": the provider addresses known so far)
    POST /services/unsubscribe {"serviceName"}                      -> LocalMesh.unsubscribe_service

``serviceName`` is SOFA's unique service name (``interface:version[:uniqueId]``); it is the registry's
service name as is, and the name the shared Bolt egress finds in each request's ``sofa_head_target_service``.
``providerMetaInfo.protocol`` is SOFA's protocol code ("1" is Bolt; "bolt" and "dubbo" are taken by name).
Unknown fields are ignored, as MOSN does: SOFA clients add fields between releases.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from plexus.sidecar.mesh import LocalMesh, MeshError, ProviderSpec
from plexus.transport.control_http import ControlRequest, ControlResponse, Router

# SOFA's protocol codes as sent in providerMetaInfo.protocol, and names some clients send instead.
PROTOCOL_CODES: Final = {"1": "bolt", "bolt": "bolt", "dubbo": "dubbo", "": "bolt"}
# Metadata keys published with an instance, from what the app told the MOSN API.
META_APP: Final = "app"
META_SERIALIZE: Final = "serialize_type"
META_SOFA_VERSION: Final = "sofa_rpc_version"
MAX_FIELD_CHARS: Final = 253  # every string field here names something: a service, an app, a zone


class MosnRequestError(ValueError):
    """A MOSN API body that cannot be served; the message goes back as ``errorMessage``."""


@dataclass(slots=True)
class MosnAppInfo:
    """What ``/configs/application`` said; published as metadata, shown in /config_dump."""

    app_name: str = ""
    data_center: str = ""
    zone: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


def _body(request: ControlRequest) -> Mapping[str, Any]:
    try:
        body = request.json()
    except ValueError as exc:
        raise MosnRequestError(str(exc)) from None
    if not isinstance(body, dict):
        raise MosnRequestError("request body must be a JSON object")
    return body


def _text(body: Mapping[str, Any], name: str, required: bool = False) -> str:
    value = body.get(name, "")
    if value is None:
        value = ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MosnRequestError(f"{name}: must be a string")
    text = str(value)
    if required and not text:
        raise MosnRequestError(f"{name}: required")
    if len(text) > MAX_FIELD_CHARS:
        raise MosnRequestError(f"{name}: longer than {MAX_FIELD_CHARS} characters")
    return text


def parse_publish(body: Mapping[str, Any], app: MosnAppInfo) -> tuple[str, ProviderSpec]:
    """``/services/publish`` body → (service, ProviderSpec); raises MosnRequestError naming the field."""
    service = _text(body, "serviceName", required=True)
    port_text = _text(body, "port", required=True)
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise MosnRequestError(f"port: {port_text!r} is not a port number")
    meta = body.get("providerMetaInfo") or {}
    if not isinstance(meta, dict):
        raise MosnRequestError("providerMetaInfo: must be an object")
    code = _text(meta, "protocol").lower()
    protocol = PROTOCOL_CODES.get(code)
    if protocol is None:
        raise MosnRequestError(f"providerMetaInfo.protocol: {code!r} is not Bolt (1) or dubbo")
    metadata = {
        key: value
        for key, value in (
            (META_APP, _text(meta, "appName") or app.app_name),
            (META_SERIALIZE, _text(meta, "serializeType")),
            (META_SOFA_VERSION, _text(meta, "version")),
        )
        if value
    }
    return service, ProviderSpec(port=int(port_text), protocol=protocol, metadata=metadata)


def _ok(**extra: Any) -> ControlResponse:
    return ControlResponse.json({"success": True, "errorMessage": "", **extra})


def _refused(message: str) -> ControlResponse:
    return ControlResponse.json({"success": False, "errorMessage": message})


def build_mosn_api(mesh: LocalMesh, app: MosnAppInfo) -> Router:
    """The router for ``--mosn-api``; ``app`` is filled by ``/configs/application``."""
    router = Router()

    def route(path: str, handler: Callable[[Mapping[str, Any]], Awaitable[ControlResponse]]) -> None:
        async def wrapper(request: ControlRequest) -> ControlResponse:
            try:
                return await handler(_body(request))
            except MosnRequestError as exc:
                return _refused(str(exc))
            except MeshError as exc:
                where = f"{exc.field}: " if exc.field else ""
                return _refused(f"{where}{exc}")

        router.add("POST", path, wrapper)

    async def application(body: Mapping[str, Any]) -> ControlResponse:
        app.app_name = _text(body, "appName", required=True)
        app.data_center = _text(body, "dataCenter")
        app.zone = _text(body, "zone")
        app.fields = {k: v for k, v in body.items() if k not in ("accessKey", "secretKey")}
        return _ok()

    async def publish(body: Mapping[str, Any]) -> ControlResponse:
        service, spec = parse_publish(body, app)
        instance = await mesh.put_provider(service, spec)
        return _ok(serviceName=service, address=instance.address)

    async def unpublish(body: Mapping[str, Any]) -> ControlResponse:
        service = _text(body, "serviceName", required=True)
        if not await mesh.delete_provider(service):
            return _refused(f"{service} is not published by this sidecar")
        return _ok(serviceName=service)

    async def subscribe(body: Mapping[str, Any]) -> ControlResponse:
        service = _text(body, "serviceName", required=True)
        found = await mesh.subscribe_service(service)
        datas = [i.address for i in found.instances] if found is not None else []
        return _ok(serviceName=service, datas=datas)

    async def unsubscribe(body: Mapping[str, Any]) -> ControlResponse:
        service = _text(body, "serviceName", required=True)
        if not await mesh.unsubscribe_service(service):
            return _refused(f"{service} is not subscribed through this API")
        return _ok(serviceName=service)

    route("/configs/application", application)
    route("/services/publish", publish)
    route("/services/unpublish", unpublish)
    route("/services/subscribe", subscribe)
    route("/services/unsubscribe", unsubscribe)
    return router

"""``parse_publish``: a MOSN ``/services/publish`` body (as anthunder sends it) → ProviderSpec."""

from __future__ import annotations

from typing import Any

import pytest

from plexus.sidecar.mosn_api import MosnAppInfo, MosnRequestError, parse_publish


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "serviceName": "com.acme.Echo:1.0",
        "providerMetaInfo": {
            "protocol": "1",
            "version": "4.0",
            "serializeType": "protobuf",
            "appName": "prov",
        },
        "port": "12200",
        "protocolType": "DEFAULT",
        "onlyPublishInCloud": False,
    }
    base.update(overrides)
    return base


def test_anthunder_body_maps_to_a_bolt_provider() -> None:
    service, spec = parse_publish(body(), MosnAppInfo())
    assert service == "com.acme.Echo:1.0"
    assert spec.port == 12200 and spec.protocol == "bolt"
    assert spec.metadata == {"app": "prov", "serialize_type": "protobuf", "sofa_rpc_version": "4.0"}


def test_app_name_from_configs_application_when_meta_has_none() -> None:
    _, spec = parse_publish(body(providerMetaInfo={"protocol": "dubbo"}, port=20880), MosnAppInfo("caller"))
    assert spec.protocol == "dubbo" and spec.port == 20880 and spec.metadata == {"app": "caller"}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"serviceName": ""}, "serviceName: required"),
        ({"serviceName": ["x"]}, "serviceName: must be a string"),
        ({"port": "0"}, "port"),
        ({"port": "70000"}, "port"),
        ({"port": True}, "port: must be a string"),
        ({"providerMetaInfo": "bolt"}, "providerMetaInfo: must be an object"),
        ({"providerMetaInfo": {"protocol": "http"}}, "providerMetaInfo.protocol"),
        ({"serviceName": "x" * 300}, "longer than"),
    ],
)
def test_bad_bodies_name_the_field(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MosnRequestError) as caught:
        parse_publish(body(**overrides), MosnAppInfo())
    assert fragment in str(caught.value)

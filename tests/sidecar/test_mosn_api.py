"""``--mosn-compat``: MOSN's app API (configs/application, services/publish|unpublish|subscribe|unsubscribe)
and its shared Bolt egress, through real processes: a Bolt app published through sidecar B's MOSN API, a
caller subscribed through sidecar A's, calls sent to A's Bolt egress routed by ``sofa_head_target_service``.

The bodies are the ones anthunder's MeshClient posts (anthunder/mesh/mesh_client.py, 0.8.1).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sidecar_helpers import Group, start_registry, start_sidecar
from test_sidecar_rpc import start_rpc_app  # the Bolt provider app of the RPC sidecar tests

from plexus.codec import bolt
from plexus.codec.rpc import FrameKind, RpcFrame
from plexus.testing.procs import ManagedProcess, wait_for

SERVICE = "com.acme.Echo:1.0"
MOSN_ENV = {
    "PLEXUS_MOSN_COMPAT": "true",
    "PLEXUS_MOSN_API": "127.0.0.1:0",  # MOSN's fixed ports would clash between two sidecars on one host
    "PLEXUS_BOLT_EGRESS": "127.0.0.1:0",
}
_CLIENT = httpx.Client(timeout=5)


@dataclass
class MosnMesh:
    group: Group
    a: ManagedProcess  # the caller's sidecar
    b: ManagedProcess  # the provider's sidecar


@pytest.fixture(scope="module")
def mosn_mesh() -> Iterator[MosnMesh]:
    group = Group()
    try:
        registry = start_registry(group)
        b = start_sidecar(group, registry.address("listen"), env=MOSN_ENV)
        a = start_sidecar(group, registry.address("listen"), env=MOSN_ENV)
        yield MosnMesh(group, a, b)
    finally:
        group.stop_all()


def mosn(proc: ManagedProcess, path: str, body: Any) -> dict[str, Any]:
    response = _CLIENT.post(f"http://{proc.address('mosn_api')}/{path}", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert set(result) >= {"success", "errorMessage"}
    return result


def publish_body(service: str, port: int | str) -> dict[str, Any]:
    return {
        "serviceName": service,
        "providerMetaInfo": {
            "protocol": "1",
            "version": "4.0",
            "serializeType": "protobuf",
            "appName": "prov",
        },
        "port": str(port),
        "protocolType": "DEFAULT",
        "onlyPublishInCloud": False,
    }


def call(sock: socket.socket, request_id: int, service: str = SERVICE) -> None:
    headers = {
        bolt.HEADER_TARGET_SERVICE: service,
        bolt.HEADER_METHOD: "echo",
        bolt.HEADER_TARGET_APP: "",
        bolt.HEADER_SERVICE: service,
        "uid": "",
    }
    sock.sendall(bolt.encode_request(request_id, headers, b"<tok:%d>" % request_id, timeout_ms=-1))


def read(sock: socket.socket, count: int) -> list[RpcFrame]:
    decoder = bolt.BoltCodec().decoder()
    frames: list[RpcFrame] = []
    sock.settimeout(10)
    while len(frames) < count:
        data = sock.recv(65536)
        assert data, "connection closed"
        frames += decoder.feed(data)
    return frames


def egress(proc: ManagedProcess) -> tuple[str, int]:
    host, _, port = proc.address("bolt_egress").rpartition(":")
    return host, int(port)


def test_publish_subscribe_call_unpublish(mosn_mesh: MosnMesh) -> None:
    a, b = mosn_mesh.a, mosn_mesh.b
    app_port = start_rpc_app(mosn_mesh.group, "bolt", "app0")
    assert mosn(b, "configs/application", {"appName": "prov", "antShareCloud": False})["success"] is True
    result = mosn(b, "services/publish", publish_body(SERVICE, app_port))
    assert result["success"] is True, result
    assert mosn(a, "configs/application", {"appName": "caller"})["success"] is True

    def subscribed() -> bool:
        return bool(mosn(a, "services/subscribe", {"serviceName": SERVICE})["datas"])

    wait_for(subscribed, timeout=10, what="the caller's sidecar sees the provider")
    ids = list(range(1, 301))
    with socket.create_connection(egress(a), timeout=5) as s:
        for i in ids:
            call(s, i)
        frames = read(s, len(ids))
        assert sorted(f.request_id for f in frames) == ids
        for f in frames:
            assert f.kind is FrameKind.RESPONSE and f.status == bolt.BoltStatus.SUCCESS
            assert b"@app0@" in f.raw and b"<tok:%d>" % f.request_id in f.raw  # misdelivered 0
        # A service nobody published: NO_PROCESSOR in Bolt terms, naming the reason.
        call(s, 500, "com.acme.Nobody:1.0")
        (missing,) = read(s, 1)
        assert missing.status == bolt.BoltStatus.NO_PROCESSOR and b"unknown_service" in missing.raw
        # Unpublished: the provider's instance goes, and calls get NO_PROCESSOR again.
        assert mosn(b, "services/unpublish", {"serviceName": SERVICE})["success"] is True

        def withdrawn() -> bool:
            call(s, 600)
            (frame,) = read(s, 1)
            return frame.status == bolt.BoltStatus.NO_PROCESSOR

        wait_for(withdrawn, timeout=10, what="calls refused once the service is withdrawn")
    assert mosn(a, "services/unsubscribe", {"serviceName": SERVICE})["success"] is True
    assert mosn(a, "services/unsubscribe", {"serviceName": SERVICE})["success"] is False


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("services/publish", {"serviceName": SERVICE}, "port"),
        ("services/publish", publish_body(SERVICE, "http"), "port"),
        ("services/publish", publish_body("bad name", 20880), "service"),
        (
            "services/publish",
            {**publish_body(SERVICE, 20880), "providerMetaInfo": {"protocol": "9"}},
            "protocol",
        ),
        ("services/unpublish", {"serviceName": "com.acme.NotMine"}, "not published"),
        ("services/subscribe", {}, "serviceName"),
        ("services/subscribe", ["not", "an", "object"], "object"),
        ("configs/application", {"dataCenter": "dc1"}, "appName"),
    ],
)
def test_refusals_answer_success_false_with_a_reason(
    mosn_mesh: MosnMesh, path: str, body: Any, fragment: str
) -> None:
    result = mosn(mosn_mesh.b, path, body)
    assert result["success"] is False
    assert fragment in result["errorMessage"]

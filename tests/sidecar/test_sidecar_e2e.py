"""The seed's flow end to end with real processes: app → sidecar A → sidecar B → app; local/admin APIs.

One registry, a provider sidecar B and a consumer sidecar A are shared by the tests of this module (each test
uses its own service names); tests that stop parts of the mesh live in test_sidecar_lifecycle.py.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sidecar_helpers import (
    Group,
    addresses_seen,
    admin,
    api,
    instances,
    start_echo,
    start_http_app,
    start_registry,
    start_sidecar,
)

from plexus.clients.registry import list_services
from plexus.core.reasons import ERROR_HEADER, UNKNOWN_SERVICE, parse_error_header
from plexus.testing.procs import ManagedProcess, free_port, wait_for


@dataclass
class Mesh:
    group: Group
    registry: ManagedProcess
    a: ManagedProcess  # the consumer's sidecar
    b: ManagedProcess  # the provider's sidecar
    app_port: int
    b_egress_port: int  # B hands out per-service egress ports from the range [this, this]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    group = Group()
    config = tmp_path_factory.mktemp("sidecar-a") / "sidecar.yaml"
    config.write_text("zone: file-zone\nunit: file-unit\nworkload: file-workload\n")
    try:
        registry = start_registry(group)
        port = free_port()
        b = start_sidecar(
            group,
            registry.address("listen"),
            "--zone",
            "z1",
            "--workload",
            "hello-v1",
            "--egress-ports",
            f"{port}-{port}",
        )
        a = start_sidecar(
            group,
            registry.address("listen"),
            "--config",
            str(config),
            "--workload",
            "flag-workload",
            env={"PLEXUS_UNIT": "env-unit"},
        )
        _, app_port = start_http_app(group, "hello-app")
        yield Mesh(group, registry, a, b, app_port, port)
    finally:
        group.stop_all()


def _provide(mesh: Mesh, service: str, port: int, **body: object) -> dict[str, object]:
    response = api(mesh.b, "PUT", f"/v1/providers/{service}", {"port": port, **body})
    assert response.status_code == 200, response.text
    published: dict[str, object] = response.json()
    return published


def test_seed_flow_through_a_per_service_egress_port(mesh: Mesh) -> None:
    published = _provide(
        mesh, "hello", mesh.app_port, version="1.0", metadata={"team": "core"}, health={"path": "/healthz"}
    )
    assert published["address"] == mesh.b.address("advertise") == mesh.b.address("ingress")
    assert published["meshed"] is True and published["zone"] == "z1" and published["workload"] == "hello-v1"
    assert published["labels"] == {"team": "core"} and published["version"] == "1.0"

    first = api(mesh.a, "PUT", "/v1/consumers/hello")
    assert first.status_code == 200, first.text
    egress = first.json()["address"]
    assert egress.startswith("127.0.0.1:")
    assert api(mesh.a, "PUT", "/v1/consumers/hello").json()["address"] == egress  # stable

    wait_for(
        lambda: addresses_seen(mesh.a, "hello") == {mesh.b.address("ingress")},
        timeout=10,
        what="sidecar A sees B's instance of hello",
    )
    seen = instances(mesh.a, "hello")[0]
    assert seen["version"] == "1.0" and seen["labels"] == {"team": "core"}
    response = wait_for(
        lambda: _ok(httpx.get(f"http://{egress}/whoami", timeout=5)),
        timeout=10,
        what="a call through A and B",
    )
    assert response.text == "hello-app"

    # the same call with curl, as any app would make it
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "5", f"http://{egress}/whoami"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode == 0 and out.stdout == "hello-app", out.stderr

    view = api(mesh.a, "GET", "/v1/services/hello").json()
    assert view["service"] == "hello" and view["version"] > 0 and view["state"] == "live"


def test_shared_egress_routes_by_host(mesh: Mesh) -> None:
    _provide(mesh, "hello-shared", mesh.app_port)
    shared = mesh.a.address("egress")
    registry = mesh.registry.address("listen")
    wait_for(
        lambda: any(s.instances for s in list_services(registry, service="hello-shared")),
        timeout=10,
        what="the registry holds hello-shared",
    )
    # A never subscribed to it: the very first call subscribes on demand, waits for the set and goes through
    response = httpx.get(f"http://{shared}/whoami", headers={"Host": "hello-shared:8080"}, timeout=5)
    assert _ok(response).text == "hello-app"
    assert addresses_seen(mesh.a, "hello-shared") == {mesh.b.address("ingress")}
    stats = admin(mesh.a, "/stats/prometheus").text
    assert int(_metric(stats, "plexus_sidecar_on_demand_subscriptions_total")) >= 1


def test_unknown_service_is_a_503_with_its_reason(mesh: Mesh) -> None:
    shared = mesh.a.address("egress")
    response = httpx.get(f"http://{shared}/x", headers={"Host": "no-such-service"}, timeout=5)
    assert response.status_code == 503
    assert parse_error_header(response.headers[ERROR_HEADER]) == UNKNOWN_SERVICE
    assert api(mesh.a, "GET", "/v1/services/no-such-service").status_code == 404


def test_tcp_service_through_two_sidecars(mesh: Mesh) -> None:
    _, echo_port = start_echo(mesh.group)
    published = _provide(mesh, "echo", echo_port, protocol="tcp")
    tcp_ingress = str(published["address"])
    assert tcp_ingress != mesh.b.address("ingress") and published["protocol"] == "tcp"
    # re-PUT with the same app port keeps the TCP ingress port callers know
    assert _provide(mesh, "echo", echo_port, protocol="tcp", version="2")["address"] == tcp_ingress

    egress = api(mesh.a, "PUT", "/v1/consumers/echo").json()["address"]
    wait_for(lambda: addresses_seen(mesh.a, "echo") == {tcp_ingress}, timeout=10, what="A sees echo")
    host, _, port = egress.rpartition(":")

    def echo_once() -> bytes:
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"ping over two sidecars\n")
            data = b""
            while len(data) < 23:
                chunk = conn.recv(100)
                if not chunk:
                    break
                data += chunk
            return data

    assert wait_for(lambda: echo_once() == b"ping over two sidecars\n", timeout=10, what="TCP echo")


def test_health_check_withdraws_a_dead_app_and_republishes_it(mesh: Mesh) -> None:
    port = free_port()
    app, _ = start_http_app(mesh.group, "fragile", port)
    _provide(mesh, "fragile", port, health={"path": "/healthz"})
    api(mesh.a, "PUT", "/v1/consumers/fragile")
    wait_for(lambda: addresses_seen(mesh.a, "fragile"), timeout=10, what="A sees fragile")

    app.kill()
    wait_for(
        lambda: not addresses_seen(mesh.a, "fragile"), timeout=10, what="fragile withdrawn after its app died"
    )
    stats = admin(mesh.b, "/stats/prometheus").text
    assert 'plexus_sidecar_health_transitions_total{service="fragile",event="withdrawn"} 1' in stats
    assert 'plexus_sidecar_app_healthy{service="fragile"} 0' in stats
    assert api(mesh.b, "GET", "/v1/services/fragile").status_code == 404  # B itself does not consume it

    start_http_app(mesh.group, "fragile-again", port)
    wait_for(lambda: addresses_seen(mesh.a, "fragile"), timeout=10, what="fragile republished once healthy")


def test_local_api_refuses_bad_requests_naming_the_field(mesh: Mesh) -> None:
    cases: list[tuple[str, str, object, str]] = [
        ("PUT", "/v1/providers/svc", {"protocol": "http"}, "port"),
        ("PUT", "/v1/providers/svc", {"port": 70000}, "port"),
        ("PUT", "/v1/providers/svc", {"port": "80"}, "port"),
        ("PUT", "/v1/providers/svc", {"port": 80, "protocol": "smtp"}, "protocol"),
        ("PUT", "/v1/providers/svc", {"port": 80, "weight": 0}, "weight"),
        ("PUT", "/v1/providers/svc", {"port": 80, "metadata": {"a": 1}}, "metadata.a"),
        ("PUT", "/v1/providers/svc", {"port": 80, "health": {"path": "healthz"}}, "health.path"),
        ("PUT", "/v1/providers/svc", {"port": 80, "colour": "red"}, "colour"),
        ("PUT", "/v1/providers/bad%20name", {"port": 80}, "service"),
        ("PUT", "/v1/consumers/svc", {"lb": "fastest"}, "lb"),
    ]
    for method, path, body, field in cases:
        response = api(mesh.b, method, path, body)
        assert response.status_code == 400, (path, body, response.text)
        assert response.json()["field"] == field, (body, response.json())
    response = httpx.put(f"http://{mesh.b.address('api')}/v1/providers/svc", content=b"{not json", timeout=5)
    assert response.status_code == 400
    assert api(mesh.b, "DELETE", "/v1/providers/never-published").status_code == 404
    assert api(mesh.a, "DELETE", "/v1/consumers/never-consumed").status_code == 404
    assert api(mesh.a, "GET", "/ready").json()["ready"] is True


def test_delete_withdraws_and_closes(mesh: Mesh) -> None:
    _provide(mesh, "shortlived", mesh.app_port)
    egress = api(mesh.a, "PUT", "/v1/consumers/shortlived").json()["address"]
    wait_for(
        lambda: _ok(httpx.get(f"http://{egress}/whoami", timeout=5)), timeout=10, what="shortlived works"
    )
    assert api(mesh.b, "DELETE", "/v1/providers/shortlived").status_code == 200
    wait_for(lambda: not addresses_seen(mesh.a, "shortlived"), timeout=10, what="shortlived withdrawn")
    assert api(mesh.a, "DELETE", "/v1/consumers/shortlived").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{egress}/whoami", timeout=5)


def test_egress_ports_come_from_the_range(mesh: Mesh) -> None:
    first = api(mesh.b, "PUT", "/v1/consumers/ranged-1")
    assert first.status_code == 200 and first.json()["address"] == f"127.0.0.1:{mesh.b_egress_port}"
    full = api(mesh.b, "PUT", "/v1/consumers/ranged-2")
    assert full.status_code == 503 and "--egress-ports" in full.json()["error"]
    assert api(mesh.b, "DELETE", "/v1/consumers/ranged-1").status_code == 200
    second = api(mesh.b, "PUT", "/v1/consumers/ranged-2")
    assert second.status_code == 200 and second.json()["address"] == f"127.0.0.1:{mesh.b_egress_port}"
    assert api(mesh.b, "DELETE", "/v1/consumers/ranged-2").status_code == 200


def test_admin_endpoints(mesh: Mesh) -> None:
    _provide(mesh, "admin-view", mesh.app_port)
    api(mesh.a, "PUT", "/v1/consumers/admin-view", {"lb": "least_request"})
    wait_for(lambda: addresses_seen(mesh.a, "admin-view"), timeout=10, what="A sees admin-view")

    ready = admin(mesh.a, "/ready")
    assert ready.status_code == 200 and ready.json()["registry_connected"] is True

    stats = admin(mesh.b, "/stats/prometheus")
    assert stats.status_code == 200 and stats.headers["content-type"].startswith("text/plain")
    assert "plexus_sidecar_registry_connected 1" in stats.text
    published = int(_metric(stats.text, "plexus_sidecar_published_instances"))
    assert published == len([s for s, h in _healthy(stats.text).items() if h])
    assert (
        'plexus_sidecar_api_requests_total{method="PUT",route="/v1/providers/{service}",code="200"}'
        in stats.text
    )

    clusters = admin(mesh.a, "/clusters")
    assert clusters.status_code == 200
    assert "admin-view" in clusters.text and mesh.b.address("ingress") in clusters.text
    assert "least_request" in clusters.text  # the consumer's lb choice reached the data plane

    dump = admin(mesh.b, "/config_dump").json()
    assert dump["bootstrap"]["zone"] == {"value": "z1", "source": "flag"}
    assert dump["bootstrap"]["namespace"] == {"value": "default", "source": "default"}
    assert "admin-view" in dump["local"]["providers"]
    assert "data_plane" in dump
    sources = {
        k: (v["value"], v["source"]) for k, v in admin(mesh.a, "/config_dump").json()["bootstrap"].items()
    }
    assert sources["zone"] == ("file-zone", "file")
    assert sources["unit"] == ("env-unit", "env")
    assert sources["workload"] == ("flag-workload", "flag")
    assert sources["lb"] == ("round_robin", "default")


def _ok(response: httpx.Response) -> httpx.Response:
    """The response when it is a 200; otherwise raise, so a wait_for that times out says what came back."""
    if response.status_code != 200:
        error, hop = response.headers.get(ERROR_HEADER), response.headers.get("x-plexus-hop")
        body = response.text[:200]
        raise AssertionError(f"{response.status_code} x-plexus-error={error} hop={hop}: {body!r}")
    return response


def _metric(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return line.split()[1]
    raise AssertionError(f"{name} not in stats")


def _healthy(text: str) -> dict[str, bool]:
    result = {}
    for line in text.splitlines():
        if line.startswith("plexus_sidecar_app_healthy{"):
            service = line.split('"')[1]
            result[service] = line.endswith(" 1")
    return result

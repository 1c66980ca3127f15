"""Direct mode's HTTP client: balances in-process over the published apps and retries once elsewhere when an
endpoint refuses before anything was sent. Each test uses its own service name (the registry is shared)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from plexus import sdk
from plexus.sdk import Client

from .http_apps import App


def _publish(registry: str, clients: list[Client], service: str, port: int) -> None:
    client = sdk.connect(mode="direct", registry=registry)
    clients.append(client)
    client.publish(service, port)


def _http(registry: str, clients: list[Client], service: str, count: int) -> httpx.Client:
    client = sdk.connect(mode="direct", registry=registry)
    clients.append(client)
    assert client.subscribe(service).wait_for_instances(count, timeout=5)
    return client.http_client(service)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_balances_over_two_apps_and_names_the_service(registry: str, clients: list[Client],
                                                      make_app: Callable[..., App]) -> None:
    service = "balanced"
    apps = [make_app("one"), make_app("two")]
    for app in apps:
        _publish(registry, clients, service, app.port)
    http = _http(registry, clients, service, 2)
    answered = Counter(http.get(f"/hello/{i}").json()["app"] for i in range(20))
    assert answered == {"one": 10, "two": 10}
    for app in apps:
        assert {r["host"] for r in app.requests} == {service}
        assert {r["x-plexus-service"] for r in app.requests} == {service}
        assert all(r[":path"].startswith("/hello/") for r in app.requests)


def test_a_refused_endpoint_is_retried_elsewhere(registry: str, clients: list[Client], dead_address: str,
                                                 make_app: Callable[..., App]) -> None:
    service = "half-dead"
    app = make_app("alive")
    _publish(registry, clients, service, app.port)
    _publish(registry, clients, service, _port(dead_address))  # published, then crashed
    http = _http(registry, clients, service, 2)
    answers = [http.get("/x") for _ in range(10)]
    assert [r.status_code for r in answers] == [200] * 10
    assert len(app.requests) == 10


def test_every_endpoint_refusing_is_an_error(registry: str, clients: list[Client], dead_address: str) -> None:
    _publish(registry, clients, "all-dead", _port(dead_address))
    http = _http(registry, clients, "all-dead", 1)
    with pytest.raises(httpx.ConnectError):
        http.get("/x")


def test_no_instances_is_a_clear_error(registry: str, clients: list[Client]) -> None:
    client = sdk.connect(mode="direct", registry=registry)
    clients.append(client)
    with pytest.raises(httpx.ConnectError, match="no endpoint for service 'nobody'"):
        client.http_client("nobody").get("/x")


def test_a_sidecar_local_reply_before_send_is_retried(registry: str, clients: list[Client],
                                                      make_app: Callable[..., App]) -> None:
    # A meshed provider whose app is down answers 503 with x-plexus-error: local_app_unavailable; nothing
    # reached an app, so another endpoint may take the call. A plain 503 from an app is the app's answer.
    down = make_app("down", 503, {"x-plexus-error": "local_app_unavailable; service=local-reply"})
    busy = make_app("busy", 503)
    alive = make_app("alive")
    for app in (down, alive):
        _publish(registry, clients, "local-reply", app.port)
    http = _http(registry, clients, "local-reply", 2)
    assert [http.get("/x").status_code for _ in range(6)] == [200] * 6
    assert len(alive.requests) == 6

    for app in (busy, alive):
        _publish(registry, clients, "app-503", app.port)
    http = _http(registry, clients, "app-503", 2)
    statuses = Counter(http.get("/x").status_code for _ in range(6))
    assert statuses == {200: 3, 503: 3}


def test_a_provider_sidecars_upstream_reset_is_retried_for_idempotent_methods_only(
        registry: str, clients: list[Client], make_app: Callable[..., App]) -> None:
    # A meshed provider whose app died with the request in flight answers 502 upstream_reset: a GET may go to
    # another endpoint (as the consumer sidecar does), a POST may have been acted on and is not replayed.
    reset = make_app("reset", 502, {"x-plexus-error": "upstream_reset; service=reset"})
    alive = make_app("alive")
    for app in (reset, alive):
        _publish(registry, clients, "reset", app.port)
    http = _http(registry, clients, "reset", 2)
    assert [http.get("/x").status_code for _ in range(4)] == [200] * 4
    assert len(alive.requests) == 4

    for app in (reset, alive):  # a service of its own: the GETs above ejected the resetting endpoint
        _publish(registry, clients, "reset-post", app.port)
    http = _http(registry, clients, "reset-post", 2)
    posts = Counter(http.post("/x", content=b"once").status_code for _ in range(4))
    assert posts == {200: 2, 502: 2}


def test_async_client_balances_too(registry: str, clients: list[Client],
                                   make_app: Callable[..., App]) -> None:
    apps = [make_app("one"), make_app("two")]
    for app in apps:
        _publish(registry, clients, "async", app.port)
    consumer = sdk.connect(mode="direct", registry=registry)
    clients.append(consumer)
    assert consumer.subscribe("async").wait_for_instances(2, timeout=5)

    async def calls() -> Counter[str]:
        async with consumer.async_http_client("async") as http:
            answers = await asyncio.gather(*(http.get(f"/a/{i}") for i in range(10)))
        return Counter(r.json()["app"] for r in answers)

    assert asyncio.run(calls()) == {"one": 5, "two": 5}

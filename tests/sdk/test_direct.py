"""Direct mode against a real registry process: detection, publish, subscribe, change callbacks, close."""

from __future__ import annotations

import threading

import pytest

from plexus import sdk
from plexus.discovery.model import ServiceSet
from plexus.sdk import Client


def test_no_sidecar_means_direct_mode(registry: str, dead_address: str, monkeypatch: pytest.MonkeyPatch,
                                      clients: list[Client]) -> None:
    monkeypatch.setenv("PLEXUS_SIDECAR_API", dead_address)
    monkeypatch.setenv("PLEXUS_REGISTRY", registry)
    monkeypatch.delenv("PLEXUS_MODE", raising=False)
    client = sdk.connect()
    clients.append(client)
    assert client.mode == "direct"
    assert client.connected


def test_forced_mesh_without_sidecar_is_an_error(dead_address: str) -> None:
    with pytest.raises(sdk.SidecarUnavailableError, match=dead_address):
        sdk.connect(mode="mesh", sidecar_api=dead_address)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(sdk.ValidationError, match="mode"):
        sdk.connect(mode="sideways")


def test_publish_subscribe_and_close(registry: str, clients: list[Client]) -> None:
    provider = sdk.connect(mode="direct", registry=registry)
    consumer = sdk.connect(mode="direct", registry=registry)
    clients += [provider, consumer]
    provider.publish("orders", 18080, version="v2", metadata={"team": "a"})
    sub = consumer.subscribe("orders")
    assert sub.wait_for_instances(1, timeout=5), sub
    (instance,) = sub.instances
    assert instance.address == "127.0.0.1:18080"
    assert (instance.protocol, instance.version, dict(instance.labels)) == ("http", "v2", {"team": "a"})
    assert instance.meshed is False
    provider.close(grace=0)
    assert sub.wait(5, lambda s: not s.instances), sub
    with pytest.raises(sdk.ClientClosedError):
        provider.publish("orders", 18080)
    with pytest.raises(sdk.SdkError, match="direct mode has no sidecar egress"):
        consumer.egress("orders")


def test_advertise_host_from_the_environment(registry: str, monkeypatch: pytest.MonkeyPatch,
                                             clients: list[Client]) -> None:
    monkeypatch.setenv("PLEXUS_ADVERTISE_HOST", "127.0.0.2")
    provider = sdk.connect(mode="direct", registry=registry)
    consumer = sdk.connect(mode="direct", registry=registry)
    clients += [provider, consumer]
    provider.publish("billing", 18081)
    sub = consumer.subscribe("billing")
    assert sub.wait_for_instances(1, timeout=5)
    assert sub.addresses == ["127.0.0.2:18081"]


def test_change_callback_follows_publishers(registry: str, clients: list[Client]) -> None:
    consumer = sdk.connect(mode="direct", registry=registry)
    first = sdk.connect(mode="direct", registry=registry)
    second = sdk.connect(mode="direct", registry=registry)
    clients += [consumer, first, second]
    seen: list[ServiceSet] = []
    changed = threading.Condition()

    def on_change(service_set: ServiceSet) -> None:
        with changed:
            seen.append(service_set)
            changed.notify_all()

    def wait_for(ports: set[int]) -> None:
        def match() -> bool:
            return bool(seen) and {int(i.address.rsplit(":", 1)[1]) for i in seen[-1].instances} == ports

        with changed:
            assert changed.wait_for(match, timeout=5), seen[-1:] or "no set"

    sub = consumer.subscribe("cart", wait=0)
    sub.on_change(on_change)
    first.publish("cart", 18090)
    wait_for({18090})
    second.publish("cart", 18091)
    wait_for({18090, 18091})
    first.unpublish("cart")
    wait_for({18091})
    versions = [s.version for s in seen]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    sub.close()
    count = len(seen)
    second.close(grace=0)
    assert len(seen) == count  # a closed subscription calls back no more


def test_publish_refuses_a_bad_service_name(registry: str, clients: list[Client]) -> None:
    client = sdk.connect(mode="direct", registry=registry)
    clients.append(client)
    with pytest.raises(sdk.ValidationError, match="service"):
        client.publish("no spaces please", 18000)


def test_a_registry_that_is_down_does_not_fail_the_app(dead_address: str, clients: list[Client]) -> None:
    client = sdk.connect(mode="direct", registry=dead_address, registry_wait=0.2)
    clients.append(client)
    assert client.mode == "direct" and not client.connected
    client.publish("patient", 18100)  # kept, and sent once the registry answers
    sub = client.subscribe("patient", wait=0.1)
    assert sub.current is None and sub.addresses == []

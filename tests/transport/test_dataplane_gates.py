"""DataPlane.set_policy puts rate-limit gates on ingress routes: existing ones in place, new ones as built."""

from __future__ import annotations

from plexus.config.policy_kinds import AdaptiveLimit, LocalRateLimit, RateLimitPolicy
from plexus.config.resources import PolicySet
from plexus.core.address import HostPort
from plexus.transport.dataplane import DataPlane, DataPlaneSettings
from plexus.transport.routes import Route


def ingress(plane: DataPlane, service: str) -> Route:
    route = plane.ingress_route(service)
    assert isinstance(route, Route)
    return route


def test_gates_follow_the_policy_on_old_and_new_ingress_routes() -> None:
    plane = DataPlane(DataPlaneSettings())
    plane.set_local_service("orders", "http", HostPort("127.0.0.1", 9001))
    orders = ingress(plane, "orders")
    assert orders.gate is None  # no policy: the hot path tests one attribute
    limits = RateLimitPolicy("l", "shop", "orders", local=(LocalRateLimit("all", 1, 0.001),))
    shed = RateLimitPolicy("s", "shop", "users", adaptive=AdaptiveLimit(cpu_threshold=0.5))
    plane.set_policy(PolicySet(rate_limits=(limits, shed)))
    gate = orders.gate
    assert gate is not None and gate.policies == ("shop/l",)  # the existing route, updated in place
    assert set(plane.gates) == {"orders", "users"}
    assert plane.load.wanted  # an adaptive rule with a CPU threshold: the sampler reads the machine
    plane.set_policy(PolicySet(rate_limits=(limits, shed)))
    assert orders.gate is not gate  # a new gate per push, keeping the bucket (tested in proxy)
    plane.set_local_service("users", "http", HostPort("127.0.0.1", 9002))
    users = ingress(plane, "users")
    assert users.gate is plane.gates["users"]  # a new route gets its gate when it is built
    assert "plexus_ratelimit_admitted_total" in plane.metrics_text()
    assert plane.config_view()["rate_limits"]["orders"]["policies"] == ["shop/l"]
    plane.set_policy(PolicySet())
    assert orders.gate is None and users.gate is None
    assert not plane.load.wanted

"""Load balancers and clusters (pure): distribution, exclusion, weights, consistency of ring hash."""

from __future__ import annotations

from collections import Counter

import pytest

from plexus.core.errors import ConfigError
from plexus.discovery.model import Instance
from plexus.proxy import Cluster, ClusterManager, make_balancer
from plexus.proxy.endpoint import Endpoint


def _endpoints(n: int, weights: list[int] | None = None) -> list[Endpoint]:
    return [
        Endpoint(Instance(service="s", address=f"10.0.0.{i + 1}:80", weight=(weights or [100] * n)[i]))
        for i in range(n)
    ]


def test_round_robin_cycles_evenly() -> None:
    lb = make_balancer("round_robin")
    eps = _endpoints(3)
    lb.rebuild(eps)
    picks = [lb.pick() for _ in range(9)]
    assert picks == eps * 3


def test_random_spreads() -> None:
    lb = make_balancer("random")
    eps = _endpoints(4)
    lb.rebuild(eps)
    counts = Counter(lb.pick() for _ in range(4000))
    assert set(counts) == set(eps) and min(counts.values()) > 800


def test_least_request_prefers_idle_endpoints() -> None:
    lb = make_balancer("least_request")
    eps = _endpoints(4)
    lb.rebuild(eps)
    eps[0].active = 50  # busy: power of two choices avoids it unless it is paired with itself (never)
    counts = Counter(lb.pick() for _ in range(2000))
    assert counts[eps[0]] == 0
    assert all(counts[e] > 400 for e in eps[1:])


def test_weighted_is_smooth_and_proportional() -> None:
    lb = make_balancer("weighted")
    eps = _endpoints(3, [500, 100, 100])
    lb.rebuild(eps)
    picks = [lb.pick() for _ in range(70)]
    counts = Counter(picks)
    assert counts[eps[0]] == 50 and counts[eps[1]] == 10 and counts[eps[2]] == 10
    # smooth: the heavy endpoint is never picked more than 5 times in a row (nginx: a a b a c a a ...)
    run = longest = 0
    for p in picks:
        run = run + 1 if p is eps[0] else 0
        longest = max(longest, run)
    assert longest <= 5


def test_ring_hash_is_consistent_and_moves_about_one_nth() -> None:
    lb = make_balancer("ring_hash")
    eps = _endpoints(4)
    lb.rebuild(eps)
    keys = [b"user-%d" % i for i in range(4000)]
    before = {k: lb.pick(hash_key=k) for k in keys}
    assert all(lb.pick(hash_key=k) is before[k] for k in keys[:200])  # same key, same endpoint
    spread = Counter(before.values())
    assert min(spread.values()) > 4000 / 4 * 0.6
    lb.rebuild([*eps, *_endpoints(5)[4:]])
    after = {k: lb.pick(hash_key=k) for k in keys}
    moved = sum(1 for k in keys if after[k] is not before[k])
    assert 0.1 * len(keys) < moved < 0.3 * len(keys)  # ideal 1/5 = 20%
    assert all(after[k].key == "10.0.0.5:80" for k in keys if after[k] is not before[k])


@pytest.mark.parametrize("policy", ["round_robin", "least_request", "random", "weighted", "ring_hash"])
def test_exclude_avoids_an_endpoint_when_another_exists(policy: str) -> None:
    lb = make_balancer(policy)
    eps = _endpoints(3)
    lb.rebuild(eps)
    for i in range(200):
        assert lb.pick(exclude=eps[1], hash_key=b"k%d" % i) is not eps[1]
    lb.rebuild(eps[:1])
    assert lb.pick(exclude=eps[0]) is eps[0]  # the only one left: retry it rather than fail
    lb.rebuild([])
    assert lb.pick() is None


def test_unknown_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        make_balancer("fastest")
    with pytest.raises(ConfigError):
        ClusterManager("fastest")


def test_cluster_update_keeps_counters_and_marks_removed() -> None:
    cluster = Cluster("s", "round_robin")
    a, b = (Instance(service="s", address=f"10.0.0.{i}:80") for i in (1, 2))
    cluster.update([a, b])
    ep_a = cluster.by_key["10.0.0.1:80"]
    ep_a.total = 7
    removed = cluster.update([a])
    assert [e.key for e in removed] == ["10.0.0.2:80"] and removed[0].removed
    assert cluster.by_key["10.0.0.1:80"] is ep_a and ep_a.total == 7
    assert all(cluster.pick() is ep_a for _ in range(5))


def test_manager_configure_before_and_after_the_cluster_exists() -> None:
    manager = ClusterManager()
    manager.configure("s", lb_policy="ring_hash", hash_header="X-User")
    manager.update("s", [Instance(service="s", address="10.0.0.1:80")])
    cluster = manager.get("s")
    assert cluster is not None and cluster.lb_policy == "ring_hash" and cluster.hash_header == b"x-user"
    manager.configure("s", lb_policy="least_request")
    assert cluster.lb_policy == "least_request" and cluster.pick() is not None

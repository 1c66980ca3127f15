"""Subsets (DestinationRule): endpoints selected by instance labels, a balancer each, kept in step."""

from __future__ import annotations

from collections import Counter

from plexus.discovery.model import Instance
from plexus.proxy import Cluster, ClusterManager
from plexus.proxy.cluster import in_subset, instance_labels
from plexus.proxy.endpoint import Endpoint


def _instance(n: int, release: str = "", **labels: str) -> Instance:
    return Instance(service="s", address=f"10.0.0.{n}:80", version=release, labels=labels)


FLEET = [
    _instance(1, "v1", zone="east"),
    _instance(2, "v1", zone="west"),
    _instance(3, "v2", zone="east"),
    _instance(4, "", version="v3", zone="east"),  # no version field: the metadata's version label counts
    _instance(5),
]
SUBSETS = {
    "v1": {"version": "v1"},
    "v2": {"version": "v2"},
    "v3": {"version": "v3"},
    "east": {"zone": "east"},
    "v1-east": {"version": "v1", "zone": "east"},
    "all": {},
    "none": {"version": "v9"},
}


def _keys(cluster: Cluster, subset: str, n: int = 40) -> Counter[str]:
    picks = [cluster.pick_subset(subset) for _ in range(n)]
    return Counter(p.key if p is not None else "-" for p in picks)


def _port(n: int) -> str:
    return f"10.0.0.{n}:80"


def test_labels_are_the_metadata_plus_the_version() -> None:
    assert instance_labels(FLEET[0]) == {"version": "v1", "zone": "east"}
    assert instance_labels(FLEET[3]) == {"version": "v3", "zone": "east"}
    assert instance_labels(_instance(9, "v2", version="v1")) == {"version": "v2"}  # the version field wins
    assert in_subset(FLEET[0], {}) and not in_subset(FLEET[4], {"version": ""})


def test_a_subset_is_the_endpoints_whose_labels_include_all_of_its_labels() -> None:
    cluster = Cluster("s", "round_robin")
    cluster.set_subsets(SUBSETS)
    cluster.update(FLEET)
    assert set(_keys(cluster, "v1")) == {_port(1), _port(2)}
    assert set(_keys(cluster, "v2")) == {_port(3)}
    assert set(_keys(cluster, "v3")) == {_port(4)}
    assert set(_keys(cluster, "east")) == {_port(1), _port(3), _port(4)}
    assert set(_keys(cluster, "v1-east")) == {_port(1)}
    assert set(_keys(cluster, "all")) == {_port(n) for n in range(1, 6)}
    assert cluster.pick_subset("none") is None  # defined, but no endpoint has its labels
    assert cluster.pick_subset("undefined") is None
    assert cluster.pick_subset(None) is not None  # no subset: the whole cluster
    # round robin within a subset is even
    assert _keys(cluster, "v1", 40) == Counter({_port(1): 20, _port(2): 20})


def test_subsets_follow_endpoint_changes() -> None:
    cluster = Cluster("s", "round_robin")
    cluster.update(FLEET)
    cluster.set_subsets(SUBSETS)  # defined after the endpoints arrived
    assert set(_keys(cluster, "v2")) == {_port(3)}
    cluster.update([*FLEET, _instance(6, "v2")])
    assert set(_keys(cluster, "v2")) == {_port(3), _port(6)}
    cluster.update([_instance(3, "v1"), _instance(6, "v2")])  # 3 moved from v2 to v1 in place
    assert set(_keys(cluster, "v2")) == {_port(6)}
    assert set(_keys(cluster, "v1")) == {_port(3)}
    cluster.update([])
    assert cluster.pick_subset("v1") is None


def test_exclude_keeps_a_retry_inside_the_subset() -> None:
    cluster = Cluster("s", "round_robin")
    cluster.set_subsets(SUBSETS)
    cluster.update(FLEET)
    first = cluster.pick_subset("v1")
    assert first is not None
    for _ in range(10):
        again = cluster.pick_subset("v1", exclude=first)
        assert again is not None and again is not first and again.key in (_port(1), _port(2))
    only = cluster.pick_subset("v2")
    assert only is not None and cluster.pick_subset("v2", exclude=only) is only  # nothing else in it


def test_holds_tells_whether_an_endpoint_is_in_a_subset() -> None:
    cluster = Cluster("s", "round_robin")
    cluster.set_subsets(SUBSETS)
    cluster.update(FLEET)
    one = cluster.by_key[_port(1)]
    assert cluster.holds("v1", one) and cluster.holds("east", one) and cluster.holds(None, one)
    assert not cluster.holds("v2", one) and not cluster.holds("undefined", one)
    assert not cluster.holds(None, Endpoint(_instance(1, "v1")))  # not this cluster's endpoint object


def test_subset_balancers_use_the_cluster_policy_and_follow_its_changes() -> None:
    cluster = Cluster("s", "ring_hash", "x-user")
    cluster.set_subsets(SUBSETS)
    cluster.update(FLEET)
    picks = {cluster.pick_subset("east", hash_key=b"alice") for _ in range(20)}
    assert len(picks) == 1  # consistent within the subset
    cluster.set_policy("round_robin", None)
    assert cluster.hash_header is None and cluster.lb_policy == "round_robin"
    assert _keys(cluster, "v1", 4) == Counter({_port(1): 2, _port(2): 2})


def test_manager_installs_subsets_and_policies_and_reverts_them() -> None:
    manager = ClusterManager("round_robin")
    manager.update("s", FLEET)
    manager.configure("s", lb_policy="random")  # the app's choice through the local API
    manager.set_routing({"s": SUBSETS, "later": {"v1": {"version": "v1"}}}, {"s": ("least_request", None)})
    s = manager.get("s")
    assert s is not None and s.lb_policy == "least_request"  # the DestinationRule wins over the app
    assert set(_keys(s, "v2")) == {_port(3)}
    manager.configure("s", lb_policy="weighted")
    assert s.lb_policy == "least_request"
    # a cluster created after the routing was installed gets its subsets at once
    manager.update("later", [_instance(7, "v1"), _instance(8, "v2")])
    later = manager.get("later")
    assert later is not None and set(_keys(later, "v1")) == {_port(7)}
    # routing removed: the app's own choice comes back, the subsets go
    manager.set_routing({}, {})
    assert s.lb_policy == "weighted" and s.pick_subset("v2") is None

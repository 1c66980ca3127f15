"""The route table routes gRPC by its pseudo-headers, end to end: a consumer sidecar with a --routes file
sends ``:rpc-method`` Whoami to subset v2 and everything else of the service to v1 (instances published with
versions v1 and v2 beside their own sidecars)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .grpc_apps import (
    Group,
    _http,
    channel,
    consume,
    method_path,
    read_ledger,
    start_app,
    start_registry,
    start_sidecar,
    start_sidecars,
    wait_seen,
)

CALL_TIMEOUT = 10.0
SERVICE = "g-routed"
ROUTES = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {SERVICE}}}
spec:
  hosts: [{SERVICE}]
  http:
  - name: whoami-to-v2
    match: [{{headers: {{":rpc-method": {{exact: Whoami}}, ":service": {{prefix: plexus.test.}}}}}}]
    route: [{{destination: {{host: {SERVICE}, subset: v2}}}}]
  - name: rest-to-v1
    route: [{{destination: {{host: {SERVICE}, subset: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {SERVICE}}}
spec:
  host: {SERVICE}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


@pytest.fixture
def group() -> Iterator[Group]:
    procs = Group()
    try:
        yield procs
    finally:
        procs.stop_all()


def test_rpc_method_routes_to_a_subset(group: Group, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    registry = start_registry(group).address("listen")
    b, c = start_sidecars(group, registry, 2)
    a = start_sidecar(group, registry, "--routes", str(routes))
    published = set()
    ledgers = {}
    for sidecar, version in ((b, "v1"), (c, "v2")):
        ledgers[version] = tmp_path / f"{version}.ledger"
        _, port = start_app(group, version, ledger=ledgers[version])
        body = {"port": port, "protocol": "grpc", "version": version}
        status, reply = _http(sidecar, "api", "PUT", f"/v1/providers/{SERVICE}", body)
        assert status == 200, reply
        published.add(str(reply["address"]))
    address = consume(a, SERVICE)
    wait_seen(a, SERVICE, published)

    with channel(address) as ch:
        whoami = ch.unary_unary(method_path("Whoami"))
        echo = ch.unary_unary(method_path("Echo"))
        answered = Counter(whoami(b"", timeout=CALL_TIMEOUT) for _ in range(30))
        for i in range(30):
            rid = f"route-{i}"
            assert echo(rid.encode(), metadata=[("x-request-id", rid)], timeout=CALL_TIMEOUT) is not None

    assert answered == Counter({b"v2": 30}), answered  # every Whoami went to the v2 instance
    echoed = [rid for rid in read_ledger(ledgers["v1"]) if rid.startswith("route-")]
    assert len(echoed) == 30, echoed  # every other method went to v1 ...
    assert not [rid for rid in read_ledger(ledgers["v2"]) if rid.startswith("route-")]  # ... and none to v2

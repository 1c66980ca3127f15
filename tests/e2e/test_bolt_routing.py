"""The same route table routes SOFA Bolt by its pseudo-headers, end to end: a consumer sidecar with a --routes
file sends ``:rpc-method`` canary of ``:service`` com.acme.Echo ``:rpc-version`` 1.0 (from the Bolt header
``service: com.acme.Echo:1.0``) to subset v2 and every other method to v1, over one multiplexed downstream
connection (instances published with versions v1 and v2 beside their own sidecars)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from plexus.codec import bolt
from plexus.testing.procs import ManagedProcess, wait_for

from .test_bolt_dubbo_provider import connect, port_of, read, start_app, start_plexus

SERVICE = "bolt-routed"
ROUTES = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {SERVICE}}}
spec:
  hosts: [{SERVICE}]
  http:
  - name: canary-to-v2
    match:
    - headers:
        ":rpc-method": {{exact: canary}}
        ":service": {{exact: com.acme.Echo}}
        ":rpc-version": {{exact: "1.0"}}
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
def started() -> Iterator[list[ManagedProcess]]:
    procs: list[ManagedProcess] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_rpc_method_routes_bolt_to_a_subset(started: list[ManagedProcess], tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    registry = start_plexus(
        [
            "registry",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--warmup",
            "0",
            "--debounce-ms",
            "20",
        ]
    )
    started.append(registry)
    common = ["--registry", registry.address("listen"), "--ingress", "127.0.0.1:0", "--egress", "127.0.0.1:0"]
    common += ["--api", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--drain-time", "0.2"]
    client = httpx.Client(timeout=5, trust_env=False)
    published = set()
    for version in ("v1", "v2"):
        sidecar = start_plexus(["sidecar", *common])
        started.append(sidecar)
        app = start_app("bolt", version)
        started.append(app)
        body = {"port": port_of(app.address("listen")), "protocol": "bolt", "version": version}
        response = client.put(f"http://{sidecar.address('api')}/v1/providers/{SERVICE}", json=body)
        assert response.status_code == 200, response.text
        published.add(response.json()["address"])
    consumer = start_plexus(["sidecar", *common, "--routes", str(routes)])
    started.append(consumer)
    egress = client.put(f"http://{consumer.address('api')}/v1/consumers/{SERVICE}").json()["address"]

    def seen() -> bool:
        found = client.get(f"http://{consumer.address('api')}/v1/services/{SERVICE}")
        return found.status_code == 200 and {i["address"] for i in found.json()["instances"]} == published

    wait_for(seen, timeout=10, what=f"the consumer sidecar sees both {SERVICE} instances")

    sock = connect(egress)
    try:
        methods = {}
        frames = b""
        for request_id in range(1, 81):
            method = "canary" if request_id % 4 == 0 else "echo"
            methods[request_id] = method
            headers = {bolt.HEADER_SERVICE: "com.acme.Echo:1.0", bolt.HEADER_METHOD: method}
            frames += bolt.encode_request(request_id, headers, b"<%d>" % request_id)
        sock.sendall(frames)  # 80 requests in flight on one connection, answered out of order
        replies = read(sock, "bolt", len(methods))
    finally:
        sock.close()

    answered: Counter[tuple[str, str]] = Counter()
    for frame in replies:
        assert frame.status == bolt.BoltStatus.SUCCESS, frame
        content = frame.raw[frame.raw.rindex(b"@v") :]  # the app answers "@<its name>@<request body>"
        assert content.endswith(b"<%d>" % frame.request_id), (frame.request_id, content)  # its own answer
        answered[(methods[frame.request_id], content.split(b"@")[1].decode())] += 1
    assert answered == Counter({("echo", "v1"): 60, ("canary", "v2"): 20}), answered

"""Bolt requests that carry a W3C traceparent become a span per sidecar hop, through real processes: a client
→ consumer sidecar A → provider sidecar B → a Bolt app that echoes the header map it received. Each sidecar
exports its spans to a file; the app's echo shows the traceparent the last hop forwarded."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sidecar_helpers import Group, addresses_seen, api, start_registry, start_sidecar
from test_sidecar_rpc import start_rpc_app

from plexus.codec import bolt, rpc
from plexus.codec.rpc import FrameKind, RpcFrame
from plexus.testing.procs import ManagedProcess, wait_for

SERVICE = "traced-bolt"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN = "00f067aa0ba902b7"  # the calling app's span: the parent of A's


@dataclass
class TracedMesh:
    a: ManagedProcess
    b: ManagedProcess
    a_spans: Path
    b_spans: Path
    egress: tuple[str, int]


@pytest.fixture(scope="module")
def mesh() -> Iterator[TracedMesh]:
    group = Group()
    folder = Path(tempfile.mkdtemp(prefix="plexus-rpc-trace-"))
    try:
        registry = start_registry(group)
        spans = {name: folder / f"{name}.jsonl" for name in ("a", "b")}

        def sidecar(name: str, workload: str) -> ManagedProcess:
            # 0 %: a sidecar starts no sampled trace itself; a sampled one that comes in is followed.
            return start_sidecar(
                group,
                registry.address("listen"),
                "--workload",
                workload,
                "--trace-sample-percent",
                "0",
                "--trace-export",
                f"file:{spans[name]}",
            )

        b = sidecar("b", "echo-provider")
        a = sidecar("a", "caller")
        app_port = start_rpc_app(group, "bolt", "app0")
        published = api(b, "PUT", f"/v1/providers/{SERVICE}", {"port": app_port, "protocol": "bolt"}).json()
        address = api(a, "PUT", f"/v1/consumers/{SERVICE}").json()["address"]
        wait_for(lambda: addresses_seen(a, SERVICE) == {published["address"]}, timeout=10, what="A sees B")
        host, _, port = address.rpartition(":")
        yield TracedMesh(a, b, spans["a"], spans["b"], (host, int(port)))
    finally:
        group.stop_all()


def _call(mesh: TracedMesh, request_id: int, headers: dict[str, str]) -> RpcFrame:
    """One Bolt call through A and B; the app's response (its content echoes the header map it got)."""
    all_headers = {bolt.HEADER_SERVICE: SERVICE, bolt.HEADER_METHOD: "echo", **headers}
    decoder = bolt.BoltCodec().decoder()
    with socket.create_connection(mesh.egress, timeout=10) as conn:
        conn.sendall(bolt.encode_request(request_id, all_headers, b"<payload>"))
        frames: list[RpcFrame] = []
        while not frames:
            data = conn.recv(65536)
            assert data, "the sidecar closed the connection before answering"
            frames = decoder.feed(data)
    [frame] = frames
    assert frame.kind is FrameKind.RESPONSE and frame.status == bolt.BoltStatus.SUCCESS, frame
    return frame


def _received(response: RpcFrame, name: str) -> str | None:
    """The value of header ``name`` as the app received it: the app's content is b"@app0@" and what
    followed its request's fixed header (the class name, the header map, the request's content)."""
    echoed = response.raw.split(b"@app0@", 1)[1]
    start = len(bolt.SOFA_REQUEST_CLASS)
    headers = bolt._decode_header_map(echoed, start, echoed.index(b"<payload>"), rpc.DEFAULT_LIMITS)
    return headers.get(name)


def _spans(path: Path, trace_id: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    every = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [span for span in every if span["traceId"] == trace_id]


def test_a_sampled_bolt_trace_gets_a_span_per_hop_and_the_app_its_parent(mesh: TracedMesh) -> None:
    response = _call(mesh, 11, {"traceparent": f"00-{TRACE}-{APP_SPAN}-01", "tracestate": "acme=7"})
    forwarded = _received(response, "traceparent")
    assert forwarded is not None
    version, trace_id, span_id, flags = forwarded.split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "01") and span_id != APP_SPAN
    assert _received(response, "tracestate") == "acme=7"  # passed through untouched

    def pair() -> tuple[dict[str, Any], dict[str, Any]] | None:
        clients = [s for s in _spans(mesh.a_spans, TRACE) if s["kind"] == "CLIENT"]
        servers = [s for s in _spans(mesh.b_spans, TRACE) if s["kind"] == "SERVER"]
        return (clients[0], servers[0]) if clients and servers else None

    found = wait_for(pair, timeout=10, what="A's CLIENT span and B's SERVER span of the trace")
    assert found is not None
    client, server = found
    assert client["parentSpanId"] == APP_SPAN  # A's span is the calling app's child
    assert server["parentSpanId"] == client["spanId"]  # B's is A's child: A forwarded its own span id
    assert server["spanId"] == span_id  # and the app got B's span id as its parent
    for span, workload in ((client, "caller"), (server, "echo-provider")):
        attributes = span["attributes"]
        assert attributes["plexus.workload"] == workload and attributes["plexus.protocol"] == "bolt"
        assert attributes["rpc.system"] == "sofarpc" and attributes["rpc.method"] == "echo"
        assert span["name"] == f"{SERVICE}/echo" and span["status"]["code"] == "UNSET"


def test_an_unsampled_bolt_trace_is_followed_without_spans(mesh: TracedMesh) -> None:
    trace = "5bf92f3577b34da6a3ce929d0e0e4736"
    response = _call(mesh, 12, {"traceparent": f"00-{trace}-{APP_SPAN}-00"})
    forwarded = _received(response, "traceparent")
    assert forwarded is not None
    _, trace_id, span_id, flags = forwarded.split("-")
    assert trace_id == trace and flags == "00" and span_id != APP_SPAN  # still a hop of its own
    # A sampled call made after it is exported by both sidecars; the unsampled one never is.
    sampled = "6bf92f3577b34da6a3ce929d0e0e4736"
    _call(mesh, 13, {"traceparent": f"00-{sampled}-{APP_SPAN}-01"})
    wait_for(
        lambda: _spans(mesh.a_spans, sampled) and _spans(mesh.b_spans, sampled),
        timeout=10,
        what="the later sampled call's spans",
    )
    assert _spans(mesh.a_spans, trace) == [] and _spans(mesh.b_spans, trace) == []


def test_a_bad_traceparent_is_replaced_and_a_request_without_one_gets_none(mesh: TracedMesh) -> None:
    response = _call(mesh, 14, {"traceparent": "not-a-trace-context"})
    forwarded = _received(response, "traceparent")
    assert forwarded is not None and len(forwarded) == 55  # a new, valid one: 00-TRACE-SPAN-FLAGS
    version, trace_id, span_id, flags = forwarded.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16 and flags == "00"  # rate 0 %
    plain = _call(mesh, 15, {})
    assert _received(plain, "traceparent") is None  # never added: the frame goes through as it came

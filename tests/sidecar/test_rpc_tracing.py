"""Bolt requests that carry a W3C traceparent become a span per sidecar hop, through real processes: a client
→ consumer sidecar A → provider sidecar B → a Bolt app that echoes the header map it received. Each sidecar
exports its spans to a file; the app's echo shows the traceparent the last hop forwarded. Both sample 100 % of
the traces they start."""

from __future__ import annotations

import socket
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
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedMesh]:
    group = Group()
    folder = tmp_path_factory.mktemp("rpc-trace")  # (pytest removes it)
    try:
        registry = start_registry(group)
        spans = {name: folder / f"{name}.jsonl" for name in ("a", "b")}

        def sidecar(name: str, workload: str) -> ManagedProcess:
            # 100 %: every trace a sidecar starts is sampled; a decision that comes in is followed.
            flags = {
                "--workload": workload,
                "--trace-sample-percent": "100",
                "--trace-export": f"file:{spans[name]}",
            }
            return start_sidecar(
                group, registry.address("listen"), *(x for pair in flags.items() for x in pair)
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


def _hop_pair(mesh: TracedMesh, trace_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A's CLIENT span and B's SERVER span of ``trace_id``, once both sidecars exported them."""

    def pair() -> tuple[dict[str, Any], dict[str, Any]] | None:
        clients = [s for s in _spans(mesh.a_spans, trace_id) if s["kind"] == "CLIENT"]
        servers = [s for s in _spans(mesh.b_spans, trace_id) if s["kind"] == "SERVER"]
        return (clients[0], servers[0]) if clients and servers else None

    found = wait_for(pair, timeout=10, what=f"A's CLIENT span and B's SERVER span of trace {trace_id}")
    assert found is not None
    return found


def test_a_sampled_bolt_trace_gets_a_span_per_hop_and_the_app_its_parent(mesh: TracedMesh) -> None:
    response = _call(mesh, 11, {"traceparent": f"00-{TRACE}-{APP_SPAN}-01", "tracestate": "acme=7"})
    forwarded = _received(response, "traceparent")
    assert forwarded is not None
    version, trace_id, span_id, flags = forwarded.split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "01") and span_id != APP_SPAN
    assert _received(response, "tracestate") == "acme=7"  # passed through untouched

    client, server = _hop_pair(mesh, TRACE)
    assert client["parentSpanId"] == APP_SPAN  # A's span is the calling app's child
    assert server["parentSpanId"] == client["spanId"]  # B's is A's child: A forwarded its own span id
    assert server["spanId"] == span_id  # and the app got B's span id as its parent
    for span, workload in ((client, "caller"), (server, "echo-provider")):
        attributes = span["attributes"]
        assert attributes["plexus.workload"] == workload and attributes["plexus.protocol"] == "bolt"
        assert attributes["rpc.system"] == "sofarpc" and attributes["rpc.method"] == "echo"
        assert span["name"] == f"{SERVICE}/echo" and span["status"]["code"] == "UNSET"


def test_an_unsampled_bolt_trace_is_followed_as_it_came_and_exports_no_span(mesh: TracedMesh) -> None:
    trace = "5bf92f3577b34da6a3ce929d0e0e4736"
    sent = f"00-{trace}-{APP_SPAN}-00"
    response = _call(mesh, 12, {"traceparent": sent})
    assert _received(response, "traceparent") == sent  # the decision followed though the rate is 100 %
    # A sampled call made after it is exported by both sidecars; the unsampled one never is.
    sampled = "6bf92f3577b34da6a3ce929d0e0e4736"
    _call(mesh, 13, {"traceparent": f"00-{sampled}-{APP_SPAN}-01"})
    _hop_pair(mesh, sampled)
    assert _spans(mesh.a_spans, trace) == [] and _spans(mesh.b_spans, trace) == []


def test_a_bad_traceparent_is_replaced_by_a_new_trace(mesh: TracedMesh) -> None:
    """A starts a trace in its place (sampled at its rate, 100 % here) and writes its span id into the
    request; B's span is its child, and the app gets B's span id."""
    response = _call(mesh, 14, {"traceparent": "not-a-trace-context"})
    forwarded = _received(response, "traceparent")
    assert forwarded is not None and len(forwarded) == 55
    version, trace_id, span_id, flags = forwarded.split("-")
    assert version == "00" and len(trace_id) == 32 and flags == "01"
    client, server = _hop_pair(mesh, trace_id)
    assert client["parentSpanId"] == "" and server["parentSpanId"] == client["spanId"]
    assert server["spanId"] == span_id


def test_a_bolt_request_without_a_traceparent_is_forwarded_without_one(mesh: TracedMesh) -> None:
    """Not given one (writing a header into every frame costs a quarter of a Bolt request's CPU): the frame
    reaches the app as it was sent."""
    sofa_id = "0a0fe8ec1598859034112100114637"
    response = _call(mesh, 15, {"rpc_trace_context.sofaTraceId": sofa_id})
    assert _received(response, "traceparent") is None
    assert _received(response, "rpc_trace_context.sofaTraceId") == sofa_id

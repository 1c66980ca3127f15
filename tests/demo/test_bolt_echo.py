"""The demo's Bolt provider and consumer on their own (no sidecar): multiplexed calls, errors as errors."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from plexus.codec.bolt import BoltCodec, BoltStatus, encode_response
from plexus.demo.bolt_echo import BoltCallError, BoltConsumer, BoltProvider
from plexus.demo.stats import path_name, split_path


@pytest.fixture
def provider() -> Iterator[BoltProvider]:
    server = BoltProvider(lambda request: json.dumps({"request_id": request.decode()}).encode())
    yield server
    server.close()


def test_concurrent_calls_share_one_connection_and_each_gets_its_own_answer(provider: BoltProvider) -> None:
    consumer = BoltConsumer(f"127.0.0.1:{provider.port}", "echo-bolt", timeout=5.0)
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(lambda i: consumer.call(f"r{i}".encode()), range(200)))
        assert [json.loads(a)["request_id"] for a in answers] == [f"r{i}" for i in range(200)]
        assert consumer._conn is not None and not consumer._conn.pending  # one connection, nothing left over
    finally:
        consumer.close()


def test_a_refused_connection_and_an_error_status_are_call_errors() -> None:
    with socket.socket() as held:  # bound, never listening: connections are refused
        held.bind(("127.0.0.1", 0))
        consumer = BoltConsumer(f"127.0.0.1:{held.getsockname()[1]}", "echo-bolt", timeout=1.0)
        try:
            with pytest.raises(BoltCallError, match="cannot connect"):
                consumer.call(b"x")
        finally:
            consumer.close()

    # A peer that answers every request with NO_PROCESSOR, as a sidecar does when no instance is left.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        consumer = BoltConsumer(f"127.0.0.1:{listener.getsockname()[1]}", "echo-bolt", timeout=2.0)
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(consumer.call, b"x")
                peer, _ = listener.accept()
                with peer:
                    (frame,) = BoltCodec().decoder().feed(peer.recv(65536))
                    peer.sendall(encode_response(frame.request_id, BoltStatus.NO_PROCESSOR, b"no instance"))
                    with pytest.raises(BoltCallError, match="NO_PROCESSOR"):
                        pending.result(5)
        finally:
            consumer.close()


def test_path_names_keep_http_bare() -> None:
    assert path_name("mesh", "direct") == "mesh → direct"
    assert path_name("direct", None, "grpc") == "grpc direct → ?"
    assert split_path("mesh → direct") == ("http", "mesh → direct")
    assert split_path("bolt mesh → mesh") == ("bolt", "mesh → mesh")

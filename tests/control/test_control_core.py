"""ControlCore in process (no gRPC): the stress test's API, reports, scoping, the store and restarts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from plexus.config.resources import StressShare
from plexus.control.core import ControlCore
from plexus.proto import control_pb2 as pb
from plexus.stores.policy_store import FILE_NAME, PolicyStore, read_policy

DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
"""


def _drain(queue: asyncio.Queue[pb.ControlMessage | None]) -> list[pb.Snapshot]:
    out = []
    while not queue.empty():
        msg = queue.get_nowait()
        assert msg is not None
        out.append(msg.snapshot)
    return out


def test_nodes_reports_stress_shares_and_report_interval_reach_the_streams(tmp_path: Path) -> None:
    async def scenario() -> None:
        core = ControlCore(PolicyStore(tmp_path), debounce=0.01, max_debounce=0.05)
        await core.start()
        try:
            node = pb.Node(id="s1", workload="shop", consumes=["reviews"], addresses=["127.0.0.1:9"])
            stream = core.open_stream(node)
            (first,) = _drain(stream.queue)
            core.answered(stream, pb.Ack(version=first.version, nonce=first.nonce, accepted=True))
            (view,) = core.nodes()
            assert view.node.id == "s1" and list(view.node.addresses) == ["127.0.0.1:9"]
            assert view.report is None and view.acked_version == view.sent_version == first.version

            core.report(stream, pb.Report(sequence=3, uptime_seconds=1.5))
            (view,) = core.nodes()
            assert view.report is not None and view.report.sequence == 3 and view.report_time > 0

            core.set_stress((StressShare("reviews", "127.0.0.1:9", 25.0),))
            core.set_report_interval(250)
            await asyncio.sleep(0.2)  # past the debounce: one push with both
            (snap,) = _drain(stream.queue)
            assert snap.report_interval_ms == 250 and snap.version > first.version
            assert json.loads(snap.policy_json)["stress"] == [
                {"host": "reviews", "address": "127.0.0.1:9", "percent": 25.0}
            ]
            assert core.stress == (StressShare("reviews", "127.0.0.1:9", 25.0),)
            # a stress share of a service this sidecar does not call is not pushed to it
            core.answered(stream, pb.Ack(version=snap.version, nonce=snap.nonce, accepted=True))
            core.set_stress((StressShare("ratings", "127.0.0.1:9", 10.0),))
            await asyncio.sleep(0.2)
            (cleared,) = _drain(stream.queue)
            assert json.loads(cleared.policy_json)["stress"] == []
            core.answered(stream, pb.Ack(version=cleared.version, nonce=cleared.nonce, accepted=True))
            core.set_stress((StressShare("ratings", "127.0.0.1:9", 20.0),))
            await asyncio.sleep(0.2)
            assert _drain(stream.queue) == []

            core.close_stream(stream)
            assert core.nodes() == []
            (status,) = core.proxy_status().proxies  # a gone sidecar stays visible for a while
            assert status.node.id == "s1" and status.connected_seconds == 0.0
        finally:
            await core.close()

    asyncio.run(scenario())


def test_the_store_keeps_resources_and_the_version_and_a_restart_goes_past_it(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        core = ControlCore(PolicyStore(tmp_path))
        response = await core.apply("dr.yaml", DR)
        assert not response.problems
        stored = read_policy(tmp_path / FILE_NAME)
        assert stored is not None and stored.version == response.version
        assert [(r.kind, r.name, r.source) for r in stored.resources] == [
            ("DestinationRule", "reviews", "dr.yaml:1")
        ]
        again = ControlCore(PolicyStore(tmp_path))
        await again.load()
        assert [r.ref.name for r in again.get("destinationrules")] == ["reviews"]
        assert [d.host for d in again.policy.destination_rules] == ["reviews"]
        return response.version, again.version

    before, after = asyncio.run(scenario())
    assert after > before


def test_a_hello_with_new_consumes_gets_the_policy_of_its_new_scope(tmp_path: Path) -> None:
    async def scenario() -> None:
        core = ControlCore(PolicyStore(None), debounce=0.01, max_debounce=0.05)
        await core.start()
        try:
            assert not (await core.apply("dr.yaml", DR)).problems
            stream = core.open_stream(pb.Node(id="s1", consumes=["ratings"]))
            (first,) = _drain(stream.queue)
            assert json.loads(first.policy_json)["destination_rules"] == []
            core.answered(stream, pb.Ack(version=first.version, nonce=first.nonce, accepted=True))
            core.hello(stream, pb.Node(id="s1", consumes=["ratings", "reviews"]))
            (second,) = _drain(stream.queue)
            assert second.version > first.version and second.nonce != first.nonce
            assert [d["host"] for d in json.loads(second.policy_json)["destination_rules"]] == ["reviews"]
            # an ACK of the first push again (late, duplicated) changes nothing
            core.answered(stream, pb.Ack(version=first.version, nonce=first.nonce, accepted=True))
            (status,) = core.proxy_status().proxies
            assert status.state == "STALE" and status.sent_version == second.version
            core.answered(stream, pb.Ack(version=second.version, nonce=second.nonce, accepted=True))
            (status,) = core.proxy_status().proxies
            assert status.state == "SYNCED" and list(status.node.consumes) == ["ratings", "reviews"]
        finally:
            await core.close()

    asyncio.run(scenario())

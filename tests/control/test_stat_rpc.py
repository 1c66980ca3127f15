"""ControlCore's Explain and Tap in process (the streams' queues stand for the sidecars): every connected
sidecar is asked, a silent one costs only the wait, a gone one is not waited for; a tap reaches sidecars
that connect during it, stops everywhere when it ends, and stray lines of an ended tap stop it there."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from plexus.control.core import ControlCore, ControlStream
from plexus.proto import control_pb2 as pb
from plexus.stores.policy_store import PolicyStore


def messages(stream: ControlStream, kind: str) -> list[pb.ControlMessage]:
    out = []
    while not stream.queue.empty():
        msg = stream.queue.get_nowait()
        if msg is not None and msg.WhichOneof("kind") == kind:
            out.append(msg)
    return out


def test_explain_asks_every_sidecar_and_waits_only_for_those_still_there(tmp_path: Path) -> None:
    async def scenario() -> None:
        core = ControlCore(PolicyStore(tmp_path))
        await core.start()
        try:
            a = core.open_stream(pb.Node(id="a", workload="shop"))
            b = core.open_stream(pb.Node(id="b", workload="reviews"))
            silent = core.open_stream(pb.Node(id="c", workload="quiet"))
            asking = asyncio.ensure_future(core.explain("rid-1", wait=0.5))
            await asyncio.sleep(0.01)
            (qa,), (qb,) = messages(a, "explain"), messages(b, "explain")
            assert qa.explain.request_id == "rid-1" and qb.explain.query_id == qa.explain.query_id
            assert len(messages(silent, "explain")) == 1
            query_id = qa.explain.query_id
            core.explain_answer(b, pb.ExplainAnswer(query_id=query_id, hops=[
                pb.RequestLine(direction="inbound", start_unix=2.0, status=503,
                               reason="local_app_unavailable", response_flags="UF")]))  # fmt: skip
            core.explain_answer(a, pb.ExplainAnswer(query_id=query_id, hops=[
                pb.RequestLine(direction="outbound", start_unix=1.0, status=503)]))  # fmt: skip
            began = time.monotonic()
            answer = await asyncio.wait_for(asking, 5)
            assert time.monotonic() - began < 2.0  # bounded by the wait, not by the silent sidecar
            assert (answer.sidecars_asked, answer.sidecars_answered) == (3, 2)
            assert [(h.sidecar_id, h.workload) for h in answer.hops] == [("a", "shop"), ("b", "reviews")]
            assert answer.verdict.startswith("reviews (inbound) failed it: local_app_unavailable (UF)")

            # the silent sidecar goes away: the next Explain answers as soon as the others did
            asking = asyncio.ensure_future(core.explain("rid-2", wait=10))
            await asyncio.sleep(0.01)
            (q,) = messages(a, "explain")
            messages(b, "explain")
            core.explain_answer(a, pb.ExplainAnswer(query_id=q.explain.query_id))
            core.explain_answer(b, pb.ExplainAnswer(query_id=q.explain.query_id))
            core.close_stream(silent)
            answer = await asyncio.wait_for(asking, 2)
            assert answer.sidecars_answered == 2 and answer.verdict.startswith("not found")
        finally:
            await core.close()

    asyncio.run(scenario())


def test_a_tap_reaches_late_sidecars_streams_count_lines_and_stops_everywhere(tmp_path: Path) -> None:
    async def scenario() -> None:
        core = ControlCore(PolicyStore(tmp_path))
        await core.start()
        try:
            early = core.open_stream(pb.Node(id="early", workload="shop"))
            lines = core.tap("reviews", count=3)
            first = asyncio.ensure_future(anext(lines))
            await asyncio.sleep(0.01)
            (start,) = messages(early, "tap_start")
            tap_id = start.tap_start.tap_id
            assert start.tap_start.service == "reviews"
            late = core.open_stream(pb.Node(id="late", workload="reviews"))
            (late_start,) = messages(late, "tap_start")
            assert late_start.tap_start.tap_id == tap_id
            core.tap_lines(late, pb.TapLines(tap_id=tap_id, lines=[
                pb.RequestLine(service="reviews", request_id=f"r{i}") for i in range(2)]))  # fmt: skip
            core.tap_lines(early, pb.TapLines(tap_id=tap_id, lines=[
                pb.RequestLine(service="reviews", request_id="r2", sidecar_id="early")]))  # fmt: skip
            got = [await asyncio.wait_for(first, 2)]
            async for line in lines:
                got.append(line)
            assert [(x.request_id, x.sidecar_id, x.workload) for x in got] == [
                ("r0", "late", "reviews"), ("r1", "late", "reviews"), ("r2", "early", "shop")
            ]
            assert len(messages(early, "tap_stop")) == 1 and len(messages(late, "tap_stop")) == 1
            # lines of the ended tap (they crossed the stop) make sure that sidecar stops it
            core.tap_lines(late, pb.TapLines(tap_id=tap_id, lines=[pb.RequestLine(service="reviews")]))
            (stop,) = messages(late, "tap_stop")
            assert stop.tap_stop.tap_id == tap_id
            # a sidecar connecting now gets no tap
            assert messages(core.open_stream(pb.Node(id="later")), "tap_start") == []
        finally:
            await core.close()

    asyncio.run(scenario())

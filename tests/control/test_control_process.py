"""A real `plexus control` with grpcio test clients acting as sidecars: scoped snapshots, ACK/NACK, proxy
status, invalid applies, restarts with --data-dir and --config-dir, Registry and Control on one port,
debounce."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plexus.clients.registry import RegistryClient, list_services
from plexus.discovery.model import Instance
from plexus.proto import control_pb2 as pb
from plexus.proto import control_pb2_grpc as pb_grpc
from plexus.testing.procs import ManagedProcess, wait_for

DR_REVIEWS = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def vs_reviews(v1: int, v2: int, name: str = "reviews") -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {v1}
    - destination: {{host: reviews, subset: v2}}
      weight: {v2}
"""


DR_RATINGS = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets:
  - {name: v1, labels: {version: v1}}
"""


class FakeSidecar:
    """A sidecar's control stream on grpcio (sync, a reader thread). ``decide`` answers each snapshot:
    None = do not answer, else (accepted, error)."""

    def __init__(
        self,
        address: str,
        node_id: str,
        *,
        consumes: tuple[str, ...] = (),
        provides: tuple[str, ...] = (),
        applied_version: int = 0,
        decide: Callable[[pb.Snapshot], tuple[bool, str] | None] | None = None,
    ) -> None:
        self.node = pb.Node(
            id=node_id,
            workload=node_id,
            consumes=consumes,
            provides=provides,
            applied_version=applied_version,
        )
        self.decide = decide or (lambda _s: (True, ""))
        self.snapshots: list[pb.Snapshot] = []
        self.serving = applied_version  # the version it runs (last accepted)
        self.ended: grpc.RpcError | None = None
        self._cond = threading.Condition()
        self._out: queue.Queue[pb.SidecarMessage | None] = queue.Queue()
        self._out.put(pb.SidecarMessage(hello=self.node))
        self._channel = grpc.insecure_channel(address)
        control = pb_grpc.ControlStub(self._channel)  # type: ignore[no-untyped-call]
        self._call: Any = control.Stream(self._requests())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _requests(self) -> Iterator[pb.SidecarMessage]:
        while True:
            msg = self._out.get()
            if msg is None:
                return
            yield msg

    def _read(self) -> None:
        try:
            for msg in self._call:
                snap = msg.snapshot
                answer = self.decide(snap)
                with self._cond:
                    self.snapshots.append(snap)
                    if answer is not None and answer[0]:
                        self.serving = snap.version
                    self._cond.notify_all()
                if answer is not None:
                    self.answer(snap, *answer)
        except grpc.RpcError as exc:
            self.ended = exc
        with self._cond:
            self._cond.notify_all()

    def answer(self, snap: pb.Snapshot, accepted: bool = True, error: str = "") -> None:
        ack = pb.Ack(version=snap.version, nonce=snap.nonce, accepted=accepted, error=error)
        self._out.put(pb.SidecarMessage(ack=ack))

    def send(self, msg: pb.SidecarMessage) -> None:
        self._out.put(msg)

    def wait_snapshots(self, count: int, timeout: float = 10.0) -> list[pb.Snapshot]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.snapshots) >= count, timeout)
            assert ok, f"{self.node.id}: {len(self.snapshots)} snapshots, waited for {count}"
            return list(self.snapshots)

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()
        self._channel.close()
        self._thread.join(5)


@pytest.fixture
def sidecars() -> Iterator[list[FakeSidecar]]:
    made: list[FakeSidecar] = []
    yield made
    for s in made:
        s.close()


def start_control(procs: Any, *args: str) -> ManagedProcess:
    proc: ManagedProcess = procs.plexus("control", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", *args)
    return proc


def stub(proc: ManagedProcess) -> pb_grpc.ControlStub:
    return pb_grpc.ControlStub(grpc.insecure_channel(proc.address("listen")))  # type: ignore[no-untyped-call]


def apply(
    proc: ManagedProcess, text: str, name: str = "policy.yaml", dry_run: bool = False
) -> pb.ApplyResponse:
    response: pb.ApplyResponse = stub(proc).Apply(
        pb.ApplyRequest(file_name=name, text=text, dry_run=dry_run), timeout=10
    )
    return response


def statuses(proc: ManagedProcess) -> dict[str, pb.ProxyStatus]:
    response = stub(proc).ProxyStatus(pb.ProxyStatusRequest(), timeout=5)
    return {p.node.id: p for p in response.proxies}


def in_state(proc: ManagedProcess, node_id: str, state: str) -> pb.ProxyStatus:
    def check() -> pb.ProxyStatus | None:
        got = statuses(proc).get(node_id)
        return got if got is not None and got.state == state else None

    return wait_for(check, timeout=10, what=f"{node_id} {state}")


def admin_get(proc: ManagedProcess, path: str) -> str:
    with urllib.request.urlopen(f"http://{proc.address('admin')}{path}", timeout=5) as resp:
        body: bytes = resp.read()
        return body.decode()


def test_apply_pushes_each_sidecar_its_scoped_snapshot_and_acks_make_it_synced(
    procs: Any, sidecars: list[FakeSidecar]
) -> None:
    ctl = start_control(procs, "--debounce-ms", "20")
    addr = ctl.address("listen")
    a = FakeSidecar(addr, "sidecar-a", consumes=("reviews",))
    b = FakeSidecar(addr, "sidecar-b", consumes=("ratings",), provides=("reviews",))
    sidecars += [a, b]
    first_a, _ = a.wait_snapshots(1)[0], b.wait_snapshots(1)[0]  # the empty policy, on connect
    assert json.loads(first_a.policy_json)["virtual_services"] == []

    response = apply(ctl, DR_REVIEWS + "---\n" + vs_reviews(80, 20) + "---\n" + DR_RATINGS)
    assert list(response.problems) == []
    assert [(c.ref.kind, c.ref.name, c.action) for c in response.changes] == [
        ("DestinationRule", "reviews", "created"),
        ("VirtualService", "reviews", "created"),
        ("DestinationRule", "ratings", "created"),
    ]
    assert response.version > first_a.version
    snap_a = a.wait_snapshots(2)[1]
    snap_b = b.wait_snapshots(2)[1]
    assert snap_a.version == snap_b.version == response.version and snap_a.nonce != first_a.nonce
    policy_a, policy_b = json.loads(snap_a.policy_json), json.loads(snap_b.policy_json)
    assert [vs["name"] for vs in policy_a["virtual_services"]] == ["reviews"]
    assert [dr["name"] for dr in policy_a["destination_rules"]] == ["reviews"]
    assert policy_b["virtual_services"] == [] and [d["name"] for d in policy_b["destination_rules"]] == [
        "ratings"
    ]

    def synced() -> dict[str, pb.ProxyStatus] | None:
        got = statuses(ctl)
        return got if all(got[s].state == "SYNCED" for s in ("sidecar-a", "sidecar-b")) else None

    got = wait_for(synced, timeout=10, what="both sidecars SYNCED")
    assert got["sidecar-a"].acked_version == got["sidecar-a"].sent_version == response.version
    assert list(got["sidecar-a"].node.consumes) == ["reviews"] and got["sidecar-a"].connected_seconds > 0

    # a change that only touches reviews' routing is not pushed to sidecar-b
    second = apply(ctl, vs_reviews(50, 50))
    assert [c.action for c in second.changes] == ["configured"]
    assert a.wait_snapshots(3)[2].version == second.version
    wait_for(lambda: statuses(ctl)["sidecar-a"].acked_version == second.version, timeout=10)
    time.sleep(0.3)
    assert len(b.snapshots) == 2
    assert statuses(ctl)["sidecar-b"].state == "SYNCED"

    # applying the same file again changes nothing
    again = apply(ctl, vs_reviews(50, 50))
    assert [c.action for c in again.changes] == ["unchanged"] and again.version == second.version

    proxies = json.loads(admin_get(ctl, "/proxies"))
    assert {p["node"]["id"]: p["state"] for p in proxies["proxies"]} == {
        "sidecar-a": "SYNCED",
        "sidecar-b": "SYNCED",
    }
    stats = admin_get(ctl, "/stats/prometheus")
    assert f"plexus_control_version {second.version}" in stats
    assert "plexus_control_connected_sidecars 2" in stats
    assert "plexus_control_acks_total 5" in stats
    assert "plexus_control_push_to_ack_seconds_count 5" in stats
    dump = json.loads(admin_get(ctl, "/config_dump"))
    assert dump["version"] == second.version and len(dump["resources"]) == 3


def test_nack_shows_nacked_with_the_error_and_the_next_change_is_still_pushed(
    procs: Any, sidecars: list[FakeSidecar]
) -> None:
    ctl = start_control(procs, "--debounce-ms", "20")

    def refuse_90(snap: pb.Snapshot) -> tuple[bool, str]:
        if '"weight":90' in snap.policy_json:
            return False, "policy.yaml:1: VirtualService reviews: spec.http[0]: refused by the test"
        return True, ""

    s = FakeSidecar(ctl.address("listen"), "sidecar-n", consumes=("reviews",), decide=refuse_90)
    sidecars.append(s)
    good = apply(ctl, DR_REVIEWS + "---\n" + vs_reviews(80, 20))
    wait_for(lambda: statuses(ctl)["sidecar-n"].acked_version == good.version, timeout=10)
    bad = apply(ctl, vs_reviews(90, 10))
    status = in_state(ctl, "sidecar-n", "NACKED")
    assert status.nacked_version == bad.version and status.acked_version == good.version
    assert "refused by the test" in status.last_error
    assert s.serving == good.version
    fixed = apply(ctl, vs_reviews(70, 30))
    status = in_state(ctl, "sidecar-n", "SYNCED")
    assert status.acked_version == fixed.version > bad.version
    assert "nacks_total 1" in admin_get(ctl, "/stats/prometheus")


def test_an_invalid_apply_returns_every_problem_with_file_and_line_and_pushes_nothing(
    procs: Any, sidecars: list[FakeSidecar]
) -> None:
    ctl = start_control(procs, "--debounce-ms", "20")
    s = FakeSidecar(ctl.address("listen"), "sidecar-i", consumes=("reviews",))
    sidecars.append(s)
    s.wait_snapshots(1)
    before = stub(ctl).ProxyStatus(pb.ProxyStatusRequest(), timeout=5).version
    # a weight sum that is not 100 and a route to a subset nobody defines (v3), in one file
    text = DR_REVIEWS + "---\n" + vs_reviews(80, 30).replace("subset: v2", "subset: v3")
    response = apply(ctl, text, name="bad.yaml")
    problems = list(response.problems)
    assert len(problems) >= 2, problems
    assert all(p.startswith("bad.yaml:") for p in problems), problems
    assert any("v3" in p for p in problems) and any("weight" in p for p in problems), problems
    assert response.version == before and list(response.changes) == []
    # not YAML at all
    broken = apply(ctl, "kind: [unclosed\n", name="broken.yaml")
    assert broken.problems and broken.problems[0].startswith("broken.yaml:")
    # a dry run of a valid file validates only
    dry = apply(ctl, DR_REVIEWS, dry_run=True)
    assert list(dry.problems) == [] and [c.action for c in dry.changes] == ["created"]
    assert dry.version == before
    assert list(stub(ctl).Get(pb.GetRequest(), timeout=5).resources) == []
    time.sleep(0.3)
    assert len(s.snapshots) == 1  # nothing was pushed


def test_a_route_may_name_a_subset_applied_in_another_file_and_delete_refuses_what_is_still_used(
    procs: Any,
) -> None:
    ctl = start_control(procs, "--no-registry")
    assert not apply(ctl, DR_REVIEWS, name="dr.yaml").problems
    vs = apply(ctl, "\n\n" + vs_reviews(80, 20), name="vs.yaml")
    assert list(vs.problems) == []
    got = stub(ctl).Get(pb.GetRequest(kind="virtualservice"), timeout=5).resources
    assert [(r.ref.name, r.source, r.version) for r in got] == [("reviews", "vs.yaml:3", vs.version)]
    assert "subset: v2" in got[0].yaml
    # a new VS naming a subset nobody defines is refused at its own file and line
    bad = apply(ctl, vs_reviews(80, 20).replace("v2", "v9"), name="vs.yaml")
    assert any(p.startswith("vs.yaml:") and "v9" in p for p in bad.problems), list(bad.problems)

    refused = stub(ctl).Delete(
        pb.DeleteRequest(ref=pb.ResourceRef(kind="DestinationRule", name="reviews")), timeout=5
    )
    assert not refused.deleted and refused.problems and "v1" in "".join(refused.problems)
    assert refused.version == vs.version
    missing = stub(ctl).Delete(
        pb.DeleteRequest(ref=pb.ResourceRef(kind="VirtualService", name="nope")), timeout=5
    )
    assert not missing.deleted and not missing.problems
    gone = stub(ctl).Delete(
        pb.DeleteRequest(ref=pb.ResourceRef(kind="VirtualService", name="reviews")), timeout=5
    )
    assert gone.deleted and gone.version > vs.version
    gone = stub(ctl).Delete(
        pb.DeleteRequest(ref=pb.ResourceRef(kind="DestinationRule", name="reviews")), timeout=5
    )
    assert gone.deleted
    assert list(stub(ctl).Get(pb.GetRequest(), timeout=5).resources) == []


def test_a_restart_with_data_dir_brings_the_resources_back_with_a_larger_version(
    procs: Any, tmp_path: Path, sidecars: list[FakeSidecar]
) -> None:
    data = tmp_path / "data"
    ctl = start_control(procs, "--data-dir", str(data))
    applied = apply(ctl, DR_REVIEWS + "---\n" + vs_reviews(80, 20))
    assert not applied.problems
    s = FakeSidecar(ctl.address("listen"), "sidecar-r", consumes=("reviews",))
    sidecars.append(s)
    wait_for(lambda: s.serving == applied.version, timeout=10)
    s.close()
    assert ctl.stop() == 0

    again = start_control(procs, "--data-dir", str(data))
    resources = stub(again).Get(pb.GetRequest(), timeout=5).resources
    assert sorted((r.ref.kind, r.ref.name, r.version) for r in resources) == [
        ("DestinationRule", "reviews", applied.version),
        ("VirtualService", "reviews", applied.version),
    ]
    version = stub(again).ProxyStatus(pb.ProxyStatusRequest(), timeout=5).version
    assert version > applied.version
    # the sidecar comes back serving the old version and gets the newer one, with the same policy
    back = FakeSidecar(
        again.address("listen"), "sidecar-r", consumes=("reviews",), applied_version=applied.version
    )
    sidecars.append(back)
    snap = back.wait_snapshots(1)[0]
    assert (
        snap.version == version and json.loads(snap.policy_json)["virtual_services"][0]["name"] == "reviews"
    )


def test_config_dir_is_applied_at_start_and_an_invalid_one_refuses_to_start(
    procs: Any, tmp_path: Path
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "10-dr.yaml").write_text(DR_REVIEWS)
    (good / "20-vs.yml").write_text(vs_reviews(80, 20))
    (good / "notes.txt").write_text("not policy")
    ctl = start_control(procs, "--config-dir", str(good), "--no-registry")
    names = [r.ref.name + "@" + r.source for r in stub(ctl).Get(pb.GetRequest(), timeout=5).resources]
    assert sorted(names) == [f"reviews@{good}/10-dr.yaml:1", f"reviews@{good}/20-vs.yml:1"]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.yaml").write_text(vs_reviews(80, 30))
    (bad / "b.yaml").write_text("kind: DestinationRule\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "plexus",
            "control",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--config-dir",
            str(bad),
            "--no-registry",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert f"{bad}/a.yaml:" in run.stderr and f"{bad}/b.yaml:" in run.stderr, run.stderr


def test_registry_and_control_share_one_port(procs: Any, sidecars: list[FakeSidecar]) -> None:
    ctl = start_control(procs, "--warmup", "0")
    addr = ctl.address("listen")
    publisher = RegistryClient(addr, publisher_id="provider-1")
    publisher.start()
    try:
        publisher.set_published([Instance("orders", "10.1.0.1:20881")])
        found = wait_for(
            lambda: list_services(addr, 2.0, "orders"), timeout=10, what="orders in the registry"
        )
        assert [i.address for i in found[0].instances] == ["10.1.0.1:20881"]
        s = FakeSidecar(addr, "sidecar-one-port", consumes=("orders",))
        sidecars.append(s)
        assert s.wait_snapshots(1)
        wait_for(lambda: statuses(ctl).get("sidecar-one-port"), timeout=10)
    finally:
        publisher.close()

    plain = start_control(procs, "--no-registry")
    with pytest.raises(grpc.RpcError) as info:
        list_services(plain.address("listen"), 2.0)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_burst_of_applies_is_pushed_once_after_the_debounce(
    procs: Any, sidecars: list[FakeSidecar]
) -> None:
    ctl = start_control(procs, "--debounce-ms", "1500", "--no-registry")
    s = FakeSidecar(ctl.address("listen"), "sidecar-d", consumes=("reviews",))
    sidecars.append(s)
    s.wait_snapshots(1)
    assert not apply(ctl, DR_REVIEWS).problems
    versions = [apply(ctl, vs_reviews(100 - i, i)).version for i in range(1, 6)]
    assert versions == sorted(set(versions))
    snaps = s.wait_snapshots(2, timeout=15)
    time.sleep(0.5)
    assert len(s.snapshots) == 2, [x.version for x in s.snapshots]
    assert snaps[1].version == versions[-1] and '"weight":5' in snaps[1].policy_json


def test_a_stream_must_start_with_a_hello(procs: Any) -> None:
    ctl = start_control(procs, "--no-registry")
    call = stub(ctl).Stream(iter([pb.SidecarMessage(ack=pb.Ack(version=1, nonce="x", accepted=True))]))
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    call = stub(ctl).Stream(iter([pb.SidecarMessage(hello=pb.Node(id=""))]))
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert "hello.id" in (info.value.details() or "")

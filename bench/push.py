"""Push convergence: from `plexus apply` to every sidecar ACKed, with simulated or real sidecars.

    python bench/push.py sim   [--sidecars 1000] [--processes 2] [--per-connection 100] [--rounds 20]
                               [--resource vs|shift] [--debounce-ms 100] [--out FILE.json]
    python bench/push.py real  [--sidecars 10] [--rounds 20] [--debounce-ms 100] [--out FILE.json]

``sim``: one `plexus control --no-registry` and ``--processes`` client processes (this file's ``clients``
subcommand) holding ``--sidecars`` control streams between them, on grpc.aio. Streams are multiplexed: each
client process opens ``sidecars / processes / per-connection`` channels, each its own HTTP/2 connection
(``grpc.use_local_subchannel_pool``) carrying ``--per-connection`` streams, so 20,000 sidecars need 200
connections, far below the 20,000 descriptors a process may hold. A simulated sidecar sends a Hello
(consumes ``reviews``), ACKs every snapshot at once and notes the wall time it sent each ACK.

``real``: one `plexus control` (registry embedded) and ``--sidecars`` real `plexus sidecar --control`
processes, each with an app that consumes ``reviews`` (asked through the sidecar's local API), so each
one's snapshot changes when the ``reviews`` policy does. ACK times come from polling ProxyStatus every 5 ms.

A round: apply a resource for ``reviews`` whose content differs from the last round's (a VirtualService's
weights, or with ``--resource shift`` a TrafficShift's unit weights), note the wall time just before the Apply
call, wait until the control plane counts every sidecar SYNCED on the new version. Reported: per round, the
time until the last sidecar ACKed ("converged"); over all rounds, p50/p99 of that and of every single
sidecar's apply→ACK time. The control plane's default debounce (100 ms) is part of every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def resource_for(kind: str, round_no: int) -> str:
    share = 1 + round_no % 98
    if kind == "shift":
        return f"""\
apiVersion: plexus.io/v1
kind: TrafficShift
metadata: {{name: reviews-shift}}
spec:
  host: reviews
  by: unit
  weights: {{unit-a: {share}, unit-b: {100 - share}}}
"""
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {share}
    - destination: {{host: reviews, subset: v2}}
      weight: {100 - share}
"""


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(round(p / 100 * (len(ordered) - 1)), len(ordered) - 1)
    return ordered[k]


# ------------------------------------------------------------------ simulated sidecars (a child process)


async def _clients(args: argparse.Namespace) -> None:
    import grpc

    from plexus.proto import control_pb2 as pb
    from plexus.proto import control_pb2_grpc as pb_grpc

    acks: dict[int, list[float]] = defaultdict(list)
    connected = 0
    all_in = asyncio.Event()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    channels = []
    for c in range((args.count + args.per_connection - 1) // args.per_connection):
        options = [("grpc.use_local_subchannel_pool", 1), ("plexus.bench.channel", c)]
        channels.append(grpc.aio.insecure_channel(args.control, options=options))

    errors: dict[str, int] = defaultdict(int)

    async def sidecar(index: int) -> None:
        nonlocal connected
        stub = pb_grpc.ControlStub(channels[index // args.per_connection])  # type: ignore[no-untyped-call]
        node = pb.Node(id=f"{args.prefix}-{index}", workload="bench", unit="unit-a", consumes=["reviews"])
        first = True
        while not stop.is_set():  # a stream refused while thousands open at once is opened again
            try:
                call = stub.Stream()
                await call.write(pb.SidecarMessage(hello=node))
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        return
                    snap = msg.snapshot
                    ack = pb.Ack(version=snap.version, nonce=snap.nonce, accepted=True)
                    await call.write(pb.SidecarMessage(ack=ack))
                    acks[snap.version].append(time.time())
                    if first:
                        first = False
                        connected += 1
                        if connected == args.count:
                            all_in.set()
            except grpc.aio.AioRpcError as exc:
                errors[str(exc.code())] += 1
                if errors[str(exc.code())] <= 3:
                    print(f"{node.id}: {exc.code()} {exc.details()}", file=sys.stderr, flush=True)
                await asyncio.sleep(0.2)

    tasks = []
    for i in range(args.count):
        tasks.append(loop.create_task(sidecar(i)))
        if i % 500 == 499:
            await asyncio.sleep(0.05)  # let the control plane keep up with the Hellos
    await all_in.wait()
    Path(args.ready).write_text(json.dumps({"connected": connected}))
    await stop.wait()
    Path(args.out).write_text(json.dumps({str(v): t for v, t in acks.items()}))
    if errors:
        print(f"stream errors (reopened): {dict(errors)}", file=sys.stderr, flush=True)
    os._exit(0)  # closing thousands of streams one by one takes long and measures nothing


# ------------------------------------------------------------------ the driver


def _metrics(admin: str) -> dict[str, float]:
    # a control plane busy pushing to 20,000 streams answers its admin API late: wait, do not fail
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=120) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _apply(stub: Any, text: str, name: str) -> int:
    from plexus.proto import control_pb2 as pb

    response = stub.Apply(pb.ApplyRequest(file_name=name, text=text), timeout=30)
    if response.problems:
        raise SystemExit("apply failed:\n" + "\n".join(response.problems))
    return int(response.version)


def _wait_synced(admin: str, count: int, acks_before: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _metrics(admin)
        if (
            m.get("plexus_control_acks_total", 0) - acks_before >= count
            and m.get('plexus_control_sidecars{state="SYNCED"}', 0) >= count
        ):
            return time.time()
        time.sleep(0.1)
    raise SystemExit(f"not every sidecar ACKed within {timeout}s: {_metrics(admin)}")


def _summary(rounds: list[dict[str, Any]], per_sidecar: list[float]) -> dict[str, Any]:
    converged = [r["converged_s"] for r in rounds]
    cpu = [r["control_cpu_s"] for r in rounds if "control_cpu_s" in r]
    return {
        "control_cpu_per_round_s_median": statistics.median(cpu) if cpu else None,
        "rounds": len(rounds),
        "converged_p50_s": percentile(converged, 50),
        "converged_p99_s": percentile(converged, 99),
        "converged_max_s": max(converged),
        "sidecar_p50_s": percentile(per_sidecar, 50),
        "sidecar_p99_s": percentile(per_sidecar, 99),
        "acks": len(per_sidecar),
    }


def _control(work: Path, extra: list[str]) -> Any:
    from plexus.testing.procs import ManagedProcess

    return ManagedProcess.plexus(
        ["control", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-level", "warning", *extra],
        log_path=work / "control.log",
        ready_timeout=60,
    )


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_sim(args: argparse.Namespace) -> dict[str, Any]:
    import grpc

    from plexus.proto import control_pb2_grpc as pb_grpc
    from plexus.testing.procs import ManagedProcess, wait_for

    work = Path(tempfile.mkdtemp(prefix="plexus-push-bench-"))
    ctl = _control(work, ["--no-registry", "--debounce-ms", str(args.debounce_ms)])
    clients: list[ManagedProcess] = []
    try:
        stub = pb_grpc.ControlStub(grpc.insecure_channel(ctl.address("listen")))  # type: ignore[no-untyped-call]
        _apply(stub, DR, "dr.yaml")
        if args.resource == "vs":
            _apply(stub, resource_for("vs", 0), "r.yaml")
        per = [args.sidecars // args.processes + (1 if i < args.sidecars % args.processes else 0)
               for i in range(args.processes)]  # fmt: skip
        started = time.monotonic()
        for i, count in enumerate(per):
            ready = work / f"clients-{i}.ready"
            clients.append(
                ManagedProcess(
                    [
                        sys.executable,
                        __file__,
                        "clients",
                        "--control",
                        ctl.address("listen"),
                        "--count",
                        str(count),
                        "--per-connection",
                        str(args.per_connection),
                        "--prefix",
                        f"p{i}",
                        "--ready",
                        str(ready),
                        "--out",
                        str(work / f"clients-{i}.json"),
                    ],
                    log_path=work / f"clients-{i}.log",
                )
            )
        for i in range(len(clients)):
            ready_path = work / f"clients-{i}.ready"
            wait_for(ready_path.exists, timeout=600, what=f"clients {i}")
        connect_s = time.monotonic() - started
        print(f"{args.sidecars} sidecars connected in {connect_s:.1f}s", flush=True)
        time.sleep(1.0)
        rounds = []
        for r in range(1, args.rounds + 1):
            acks_before = _metrics(ctl.address("admin")).get("plexus_control_acks_total", 0)
            cpu0 = _cpu_s(ctl.pid), sum(_cpu_s(p.pid) for p in clients)
            t0 = time.time()
            version = _apply(stub, resource_for(args.resource, r), "r.yaml")
            seen = _wait_synced(ctl.address("admin"), args.sidecars, acks_before, args.round_timeout)
            cpu1 = _cpu_s(ctl.pid), sum(_cpu_s(p.pid) for p in clients)
            rounds.append(
                {
                    "round": r,
                    "version": version,
                    "t0": t0,
                    "seen_s": seen - t0,
                    "control_cpu_s": cpu1[0] - cpu0[0],
                    "clients_cpu_s": cpu1[1] - cpu0[1],
                }
            )
            print(
                f"round {r}: all {args.sidecars} SYNCED after {seen - t0:.3f}s (polled); CPU control "
                f"{cpu1[0] - cpu0[0]:.2f}s, clients {cpu1[1] - cpu0[1]:.2f}s",
                flush=True,
            )
            time.sleep(args.pause)
        rss = _rss_mb(ctl.pid)
        for proc in clients:
            proc.stop(timeout=60)
        acks: dict[int, list[float]] = defaultdict(list)
        for i in range(len(clients)):
            for v, times in json.loads((work / f"clients-{i}.json").read_text()).items():
                acks[int(v)].extend(times)
        per_sidecar: list[float] = []
        for rnd in rounds:
            times = acks.get(int(rnd["version"]), [])
            if len(times) != args.sidecars:
                raise SystemExit(f"round {rnd['round']}: {len(times)} ACKs of version {rnd['version']}")
            lat = [t - rnd["t0"] for t in times]
            rnd["converged_s"] = max(lat)
            rnd["sidecar_p50_s"] = percentile(lat, 50)
            per_sidecar.extend(lat)
            del rnd["t0"]
        return {
            "mode": "sim",
            "sidecars": args.sidecars,
            "resource": args.resource,
            "processes": args.processes,
            "per_connection": args.per_connection,
            "connections": sum((c + args.per_connection - 1) // args.per_connection for c in per),
            "debounce_ms": args.debounce_ms,
            "connect_s": connect_s,
            "control_rss_mb": rss,
            "summary": _summary(rounds, per_sidecar),
            "rounds_detail": rounds,
        }
    finally:
        for proc in clients:
            proc.stop(timeout=30)
        ctl.stop()


def run_real(args: argparse.Namespace) -> dict[str, Any]:
    import grpc

    from plexus.proto import control_pb2 as pb
    from plexus.proto import control_pb2_grpc as pb_grpc
    from plexus.testing.procs import ManagedProcess, wait_for

    work = Path(tempfile.mkdtemp(prefix="plexus-push-bench-"))
    ctl = _control(work, ["--debounce-ms", str(args.debounce_ms), "--warmup", "0"])
    sidecars: list[ManagedProcess] = []
    try:
        stub = pb_grpc.ControlStub(grpc.insecure_channel(ctl.address("listen")))  # type: ignore[no-untyped-call]
        _apply(stub, DR, "dr.yaml")
        _apply(stub, resource_for("vs", 0), "r.yaml")
        for i in range(args.sidecars):
            sidecars.append(
                ManagedProcess.plexus(
                    [
                        "sidecar",
                        "--control",
                        ctl.address("listen"),
                        "--admin",
                        "127.0.0.1:0",
                        "--api",
                        "127.0.0.1:0",
                        "--ingress",
                        "127.0.0.1:0",
                        "--egress",
                        "127.0.0.1:0",
                    ],
                    log_path=work / f"sidecar-{i}.log",
                    ready_timeout=60,
                )
            )
        for proc in sidecars:  # an app that consumes reviews, as the sidecar's local API takes it
            req = urllib.request.Request(
                f"http://{proc.address('api')}/v1/consumers/reviews", data=b"{}", method="PUT",
                headers={"content-type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(req, timeout=10):
                pass

        def statuses() -> list[Any]:
            return list(stub.ProxyStatus(pb.ProxyStatusRequest(), timeout=10).proxies)

        wait_for(
            lambda: (
                len([p for p in statuses() if p.state == "SYNCED" and "reviews" in p.node.consumes])
                >= args.sidecars
            ),
            timeout=60,
            what="every sidecar SYNCED and consuming reviews",
        )
        rounds = []
        per_sidecar: list[float] = []
        for r in range(1, args.rounds + 1):
            t0 = time.time()
            version = _apply(stub, resource_for("vs", r), "r.yaml")
            acked_at: dict[str, float] = {}
            deadline = time.monotonic() + args.round_timeout
            while len(acked_at) < args.sidecars and time.monotonic() < deadline:
                now = time.time()
                for p in statuses():
                    if p.acked_version >= version and p.node.id not in acked_at:
                        acked_at[p.node.id] = now
                time.sleep(0.005)
            if len(acked_at) < args.sidecars:
                raise SystemExit(f"round {r}: {len(acked_at)} of {args.sidecars} ACKed")
            lat = [t - t0 for t in acked_at.values()]
            per_sidecar.extend(lat)
            rounds.append({"round": r, "version": version, "converged_s": max(lat)})
            print(f"round {r}: all {args.sidecars} ACKed after {max(lat):.3f}s", flush=True)
            time.sleep(args.pause)
        return {
            "mode": "real",
            "sidecars": args.sidecars,
            "resource": "vs",
            "debounce_ms": args.debounce_ms,
            "summary": _summary(rounds, per_sidecar),
            "rounds_detail": rounds,
        }
    finally:
        for proc in sidecars:
            proc.stop()
        ctl.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("sim", "real"):
        p = sub.add_parser(name)
        p.add_argument("--sidecars", type=int, default=1000 if name == "sim" else 10)
        p.add_argument("--rounds", type=int, default=20)
        p.add_argument("--debounce-ms", type=float, default=100.0)
        p.add_argument("--pause", type=float, default=0.3, help="seconds between rounds")
        p.add_argument("--round-timeout", type=float, default=120.0)
        p.add_argument("--out", type=Path)
        if name == "sim":
            p.add_argument("--processes", type=int, default=2)
            p.add_argument("--per-connection", type=int, default=100)
            p.add_argument("--resource", choices=("vs", "shift"), default="vs")
    c = sub.add_parser("clients", help="(internal) simulated sidecars")
    c.add_argument("--control", required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--per-connection", type=int, default=100)
    c.add_argument("--prefix", required=True)
    c.add_argument("--ready", required=True)
    c.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.cmd == "clients":
        asyncio.run(_clients(args))
        return
    result = run_sim(args) if args.cmd == "sim" else run_real(args)
    result["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["cpus"] = os.cpu_count()
    s = result["summary"]
    print(
        f"{result['mode']} {result['sidecars']} sidecars ({result['resource']}): converged p50 "
        f"{s['converged_p50_s'] * 1000:.0f} ms, p99 {s['converged_p99_s'] * 1000:.0f} ms, max "
        f"{s['converged_max_s'] * 1000:.0f} ms; per sidecar p50 {s['sidecar_p50_s'] * 1000:.0f} ms, "
        f"p99 {s['sidecar_p99_s'] * 1000:.0f} ms over {s['rounds']} rounds"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(statistics.mean([r["converged_s"] for r in result["rounds_detail"]]))


if __name__ == "__main__":
    main()

"""Control plane down under traffic (TESTING.md H): sidecars serve on; on its return they resync.

    python bench/control_outage.py [--down-seconds 600] [--rate 40] [--out FILE.json]

Real processes throughout: `plexus control` (registry embedded, ``--data-dir`` in a temp dir), two HTTP apps
(``app-v1``, ``app-v2``: python's http.server serving a file ``whoami`` that names the app), each behind a
provider `plexus sidecar --control`, and a consumer `plexus sidecar --control` whose egress gets steady
traffic (``--rate`` calls/s, half with ``x-canary: 1``). Policy goes through the real CLI (`plexus apply`),
status through the control plane's ProxyStatus (polled for timing; the real `plexus proxy-status` is run to
confirm).

1. apply a VirtualService: ``x-canary: 1`` → v2, the rest 80/20 v1/v2; wait until every sidecar is SYNCED
   and the canary calls reach v2;
2. stop the control plane (SIGTERM, by PID) for ``--down-seconds``; traffic keeps going and must be served on
   the last snapshot (no errors, canary calls still all on v2); progress every ``--progress`` seconds;
3. start it again on the same address with the same ``--data-dir``; measure the time until every sidecar is
   SYNCED on the current version again (and until the consumer sees both instances again);
4. apply a change (everything to v1); measure the time until it shows in traffic (the first canary call
   after which every canary call is answered by v1) and until the consumer ACKed it;
5. print a summary and write it as JSON (``--out``).

Every call is recorded (sent, ok + which app, or error with its status and ``x-plexus-error`` reason). Each
carries ``?id=N``; the apps' access logs are the receiving side of the ledger (TESTING.md "Nothing lost"):
**lost** = sent with neither answer nor error, **duplicated** = an id an app received twice, **unrecorded** =
answered as by an app that never received that id. Every process is stopped by PID in a ``finally``, also on
Ctrl-C or SIGTERM. Exit status 0 when the run held (no failed call, nothing lost, resynced, change seen).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from plexus.clients.control import ControlClient, ControlUnavailable
from plexus.testing.procs import ManagedProcess, wait_for

ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hello}
spec:
  hosts: [hello]
  http:
  - name: canary
    match: [{headers: {x-canary: {exact: "1"}}}]
    route: [{destination: {host: hello, subset: v2}}]
  - name: split
    route:
    - {destination: {host: hello, subset: v1}, weight: 80}
    - {destination: {host: hello, subset: v2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hello}
spec:
  host: hello
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""
# the change applied after the return: the canary rule and the split both send everything to v1
ALL_TO_V1 = (
    ROUTES.replace("weight: 80", "weight: 100")
    .replace("weight: 20", "weight: 0")
    .replace("subset: v2}}]", "subset: v1}}]")
)
PORTS = ("--ingress", "127.0.0.1:0", "--egress", "127.0.0.1:0", "--api", "127.0.0.1:0",
         "--admin", "127.0.0.1:0")  # fmt: skip
CALL_TIMEOUT = 5.0  # per call; well above the sidecar's connect timeout (1 s), so an error is the sidecar's
WORKERS = 4  # callers in parallel, so one slow call does not stall the schedule
SETTLE_TIMEOUT = 60.0  # bounds for start-up and convergence (several processes share two cores)


@dataclass
class Call:
    id: int
    canary: bool
    sent: float  # time.monotonic() when sent
    done: float = 0.0
    app: str = ""  # the body: which app answered
    error: str = ""  # "<status> <x-plexus-error>" or the exception


@dataclass
class Traffic:
    """Steady calls at ``rate``/s through the consumer's egress, every one recorded."""

    egress: str
    rate: float
    calls: list[Call] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    t0: float = 0.0
    _next: int = 0
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.t0 = time.monotonic()
        for _ in range(WORKERS):
            thread = threading.Thread(target=self._worker, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _take(self) -> tuple[int, float]:
        with self._lock:
            n = self._next
            self._next += 1
        return n, self.t0 + n / self.rate

    def _worker(self) -> None:
        with httpx.Client(timeout=CALL_TIMEOUT) as client:
            while not self.stop.is_set():
                n, due = self._take()
                delay = due - time.monotonic()
                if delay > 0 and self.stop.wait(delay):
                    return
                call = Call(id=n, canary=n % 2 == 0, sent=time.monotonic())
                self.calls.append(call)
                headers = {"x-canary": "1"} if call.canary else {}
                try:
                    response = client.get(f"http://{self.egress}/whoami?id={n}", headers=headers)
                    if response.status_code == 200:
                        call.app = response.text.strip()
                    else:
                        call.error = f"{response.status_code} {response.headers.get('x-plexus-error', '-')}"
                except httpx.HTTPError as exc:
                    call.error = f"{type(exc).__name__}: {exc}"
                call.done = time.monotonic()

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(CALL_TIMEOUT + 5)

    def window(self, since: float, until: float | None = None) -> list[Call]:
        return [c for c in list(self.calls) if c.sent >= since and (until is None or c.sent < until)]


def tally(calls: list[Call]) -> dict[str, Any]:
    done = [c for c in calls if c.done]
    canary = Counter(c.app for c in done if c.canary and c.app)
    split = Counter(c.app for c in done if not c.canary and c.app)
    errors = Counter(c.error for c in done if c.error)
    return {"sent": len(calls), "ok": sum(1 for c in done if c.app), "errors": sum(errors.values()),
            "in_flight": len(calls) - len(done), "canary": dict(canary), "split": dict(split),
            "error_reasons": dict(errors.most_common(10))}  # fmt: skip


class Outage:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="plexus-outage-"))
        self.data_dir = self.work / "control-data"
        self.procs: list[ManagedProcess] = []
        self.apps: dict[str, ManagedProcess] = {}
        self.http = httpx.Client(timeout=5)
        self.result: dict[str, Any] = {"down_seconds": args.down_seconds, "rate": args.rate,
                                       "work": str(self.work)}  # fmt: skip

    # ------------------------------------------------------------------------------------------ processes
    def _plexus(self, name: str, args: list[str]) -> ManagedProcess:
        log_path = self.work / f"{name}.log"
        for n in range(2, 100):  # the restarted control plane gets its own log
            if not log_path.exists():
                break
            log_path = self.work / f"{name}-{n}.log"
        proc = ManagedProcess.plexus(args, log_path=log_path, ready_timeout=SETTLE_TIMEOUT)
        self.procs.append(proc)
        return proc

    def start_control(self, listen: str, warmup: list[str]) -> ManagedProcess:
        return self._plexus("control", ["control", "--listen", listen, "--admin", "127.0.0.1:0",
                                        "--data-dir", str(self.data_dir), *warmup])  # fmt: skip

    def start_app(self, name: str) -> int:
        folder = self.work / name
        folder.mkdir()
        (folder / "whoami").write_text(name)
        proc = ManagedProcess([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                               "--directory", str(folder)], log_path=self.work / f"{name}.log")  # fmt: skip
        self.procs.append(proc)
        self.apps[name] = proc
        found = wait_for(lambda: re.search(r"port (\d+)", proc.log()), timeout=SETTLE_TIMEOUT, what=name)
        return int(found.group(1))

    def stop_all(self) -> None:
        self.http.close()
        with ThreadPoolExecutor(max(len(self.procs), 1)) as pool:  # each waits out its own drain time
            list(pool.map(lambda proc: proc.stop(), list(self.procs)))

    # ------------------------------------------------------------------------------------------ status
    def status(self) -> tuple[int, dict[str, Any]]:
        response = ControlClient(self.control_address, timeout=5).proxy_status()
        rows = {p.node.id: {"state": p.state, "acked": p.acked_version} for p in response.proxies}
        return response.version, rows

    def all_synced(self) -> bool:
        try:
            version, rows = self.status()
        except ControlUnavailable:
            return False
        ours = [rows.get(node) for node in self.node_ids]
        # SYNCED = runs its own snapshot's latest; only the consumer's snapshot holds hello's routes, so
        # only its ACK must be of the control plane's current version
        consumer = rows.get(self.node_ids[-1])
        synced = all(r is not None and r["state"] == "SYNCED" for r in ours)
        return synced and consumer is not None and consumer["acked"] == version

    def consumer_dump(self) -> dict[str, Any]:
        dump: dict[str, Any] = self.http.get(f"http://{self.consumer.address('admin')}/config_dump").json()
        return dump

    def instances(self) -> int:
        body = self.http.get(f"http://{self.consumer.address('api')}/v1/services/hello").json()
        return len(body.get("instances", []))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "plexus", *args, "--control", self.control_address],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    def apply(self, text: str) -> subprocess.CompletedProcess[str]:
        path = self.work / "routes.yaml"
        path.write_text(text)
        done = self.cli("apply", "-f", str(path))
        if done.returncode != 0:
            raise RuntimeError(f"plexus apply failed: {done.stderr}")
        return done

    # ------------------------------------------------------------------------------------------ the run
    def setup(self) -> None:
        control = self.start_control("127.0.0.1:0", ["--warmup", "0"])
        self.control = control
        self.control_address = control.address("listen")
        with ThreadPoolExecutor(5) as pool:  # start-ups overlap: each waits for its ready file
            started = [pool.submit(self._plexus, name, ["sidecar", "--control", self.control_address, *PORTS])
                       for name in ("provider-v1", "provider-v2", "consumer")]  # fmt: skip
            ports = [pool.submit(self.start_app, f"app-{version}") for version in ("v1", "v2")]
            sidecars = [f.result() for f in started]
            app_ports = [f.result() for f in ports]
        *providers, self.consumer = sidecars
        self.node_ids = [f"sidecar-{p.address('advertise')}-{p.pid}" for p in sidecars]
        for version, provider, port in zip(("v1", "v2"), providers, app_ports, strict=True):
            body = {"port": port, "version": version}
            published = self.http.put(f"http://{provider.address('api')}/v1/providers/hello", json=body)
            published.raise_for_status()
        response = self.http.put(f"http://{self.consumer.address('api')}/v1/consumers/hello")
        response.raise_for_status()
        self.egress = response.json()["address"]
        wait_for(lambda: self.instances() == 2, timeout=SETTLE_TIMEOUT, what="the consumer seeing both apps")
        self.apply(ROUTES)
        wait_for(self.all_synced, timeout=SETTLE_TIMEOUT, what="every sidecar SYNCED")

    def run(self) -> dict[str, Any]:
        args = self.args
        self.setup()
        traffic = self.traffic = Traffic(self.egress, args.rate)
        traffic.start()
        wait_for(lambda: tally(traffic.calls)["canary"].get("app-v2", 0) >= 10, timeout=SETTLE_TIMEOUT,
                 what="canary calls reaching app-v2")  # fmt: skip
        time.sleep(args.warm_seconds)
        log(f"before the stop: {tally(traffic.calls)}")

        # --- down
        down_at = time.monotonic()
        self.control.stop()
        self.procs.remove(self.control)
        wait_for(lambda: not self.consumer_dump()["control"]["connected"], timeout=SETTLE_TIMEOUT,
                 what="the consumer noticing the control plane gone")  # fmt: skip
        self.result["noticed_s"] = time.monotonic() - down_at
        try:
            self.status()
            raise RuntimeError("the control plane still answers after being stopped")
        except ControlUnavailable:
            pass
        cpu_before = {n: cpu_s(p.pid) for n, p in self.named_sidecars().items()}
        checks: list[dict[str, Any]] = []
        up_at = down_at + args.down_seconds
        while (left := up_at - time.monotonic()) > 0:
            time.sleep(min(args.progress, left))
            seen = tally(traffic.window(down_at))
            try:
                instances, connected = self.instances(), self.consumer_dump()["control"]["connected"]
            except httpx.HTTPError as exc:  # noted, not fatal: the calls are what is measured
                instances, connected = -1, repr(exc)
            t = round(time.monotonic() - down_at, 1)
            check = {"t": t, "instances": instances, "connected": connected, **seen}
            checks.append(check)
            log(f"down {check['t']:.0f}s: sent {seen['sent']} ok {seen['ok']} errors {seen['errors']} "
                f"canary {seen['canary']} split {seen['split']} instances {check['instances']}")  # fmt: skip
        self.result["outage_cpu_s"] = {n: round(cpu_s(p.pid) - cpu_before[n], 2)
                                       for n, p in self.named_sidecars().items()}  # fmt: skip
        self.result["during_outage"] = tally(traffic.window(down_at, time.monotonic()))
        self.result["outage_checks"] = checks

        # --- back, same address, same data dir (default warm-up: the registry's sets do not shrink meanwhile)
        back_at = time.monotonic()
        warmup = [] if args.restart_warmup is None else ["--warmup", str(args.restart_warmup)]
        self.control = self.start_control(self.control_address, warmup)
        self.result["restart_ready_s"] = time.monotonic() - back_at
        connected = wait_until(lambda: self.consumer_dump()["control"]["connected"], "consumer reconnected")
        self.result["consumer_reconnected_s"] = connected - back_at
        synced = wait_until(self.all_synced, "every sidecar SYNCED again")
        self.result["resync_s"] = synced - back_at
        self.result["proxy_status"] = json.loads(self.cli("proxy-status", "-o", "json").stdout)
        rows = [(p["status"], p["acked_version"]) for p in self.result["proxy_status"]["proxies"]]
        log(f"resynced {self.result['resync_s']:.2f}s after the restart; proxy-status: {rows}")
        both = wait_until(lambda: self.instances() == 2, "consumer seeing both apps")
        self.result["instances_after_s"] = both - back_at

        # --- a change after the return
        time.sleep(1.0)  # a little traffic on the old routes after the resync
        change_at = time.monotonic()
        applied = self.apply(ALL_TO_V1)
        self.result["apply_cli_s"] = time.monotonic() - change_at
        self.result["apply_output"] = applied.stdout.strip()
        version, _ = self.status()
        consumer_id = self.node_ids[-1]
        acked = wait_until(lambda: self.status()[1].get(consumer_id, {}).get("acked", 0) >= version,
                           "the consumer ACKing the change")  # fmt: skip
        self.result["change_to_ack_s"] = acked - change_at

        def effective() -> float | None:  # the first canary call after which every canary call went to v1
            canary = [c for c in traffic.window(change_at) if c.canary and c.done]
            first = None
            for call in canary:
                if call.app != "app-v1":
                    first = None
                elif first is None:
                    first = call.sent
            later = [c for c in canary if first is not None and c.sent >= first]
            return first if first is not None and len(later) >= 20 else None

        effect = wait_for(effective, timeout=SETTLE_TIMEOUT, what="the change in traffic")
        self.result["change_to_effect_s"] = effect - change_at
        time.sleep(args.after_seconds)
        traffic.finish()
        self.result["after_change"] = tally(traffic.window(effect))
        self.result["all"] = self.ledger()
        return self.result

    def named_sidecars(self) -> dict[str, ManagedProcess]:
        return {p.log_path.stem: p for p in self.procs if p.log_path.stem.startswith(("provider", "cons"))}

    def ledger(self) -> dict[str, Any]:
        calls = self.traffic.calls
        received: dict[str, Counter[int]] = {}
        for name, proc in self.apps.items():
            ids = re.findall(r'"GET /whoami\?id=(\d+) ', proc.log_path.read_text(errors="replace"))
            received[name] = Counter(int(i) for i in ids)
        everywhere: Counter[int] = Counter()
        for counts in received.values():
            everywhere.update(counts)
        total = tally(calls)
        total["lost"] = sum(1 for c in calls if not c.app and not c.error)
        total["duplicated"] = sum(1 for n in everywhere.values() if n > 1)
        total["unrecorded"] = sum(1 for c in calls if c.app and received.get(c.app, Counter())[c.id] == 0)
        return total


def wait_until(predicate: Callable[[], Any], what: str) -> float:
    """Poll every 20 ms; the time.monotonic() at which ``predicate`` first held."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        try:
            if predicate():
                return time.monotonic()
        except (httpx.HTTPError, ControlUnavailable):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {SETTLE_TIMEOUT}s waiting for {what}")
        time.sleep(0.02)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def verdict(result: dict[str, Any]) -> dict[str, bool]:
    total, down = result["all"], result["during_outage"]
    return {
        "zero_failed_calls": total["errors"] == 0 and total["lost"] == 0,
        "served_on_last_snapshot": down["errors"] == 0
        and set(down["canary"]) == {"app-v2"}
        and down["ok"] > 0,
        "resynced": result.get("resync_s") is not None,
        "change_took_effect": result.get("change_to_effect_s") is not None
        and set(result["after_change"]["canary"]) == {"app-v1"}
        and set(result["after_change"]["split"]) <= {"app-v1"},
    }


def summary_line(result: dict[str, Any]) -> str:
    total = result["all"]
    return (f"sent={total['sent']} ok={total['ok']} errors={total['errors']} lost={total['lost']} "
            f"duplicated={total['duplicated']} unrecorded={total['unrecorded']} "
            f"resync_s={result['resync_s']:.2f} change_to_effect_s={result['change_to_effect_s']:.2f} "
            f"change_to_ack_s={result['change_to_ack_s']:.2f}")  # fmt: skip


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--down-seconds", type=float, default=600.0, help="seconds the control plane is down")
    parser.add_argument("--rate", type=float, default=40.0, help="calls per second through the consumer")
    parser.add_argument("--warm-seconds", type=float, default=5.0, help="traffic before the stop")
    parser.add_argument("--after-seconds", type=float, default=5.0, help="traffic after the change shows")
    parser.add_argument("--progress", type=float, default=30.0, help="seconds between checks while down")
    parser.add_argument(
        "--restart-warmup",
        type=float,
        help="--warmup of the restarted control plane (default: its own default, lease-grace + 2 s)",
    )
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a shell starting us with & ignores it
        signal.signal(sig, _interrupt)
    outage = Outage(args)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        result = outage.run()
    except KeyboardInterrupt:
        log("interrupted: stopping every process")
        raise SystemExit(130) from None
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        if hasattr(outage, "traffic"):
            outage.traffic.finish()
        outage.stop_all()
    result["when"] = started
    result["cpus"] = os.cpu_count()
    result["load_average"] = os.getloadavg()
    result["verdict"] = verdict(result)
    line = summary_line(result)
    print(f"summary: {line}")
    print(f"verdict: {result['verdict']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    raise SystemExit(0 if all(result["verdict"].values()) else 1)


if __name__ == "__main__":
    main()

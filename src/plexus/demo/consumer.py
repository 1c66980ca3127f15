"""A sample consumer app written with the SDK: ``python -m plexus.demo.consumer --service echo --name c1``.

It calls each service in turn at ``--rate`` calls a second and keeps a ledger per request id: sent, answered
(by the provider that echoes the id back) or failed. ``--service`` goes over HTTP through
``client.http_client(service)``, ``--grpc-service`` over gRPC through ``client.grpc_channel(service)``, and
``--bolt-service`` (mesh mode) over SOFA Bolt to the sidecar's egress port for it (``client.egress``). Every
``--report-interval`` seconds, and once more when it stops (SIGTERM/SIGINT), it prints one JSON line on
stdout:

    {"type": "stats", "consumer": "c1", "mode": "mesh", "sent": 120, "ok": 120, "errors": 0,
     "misdelivered": 0, "lost": 0, "paths": {"mesh → direct": {"calls": 60, ...},
     "grpc mesh → mesh": {...}}, "final": false}

``lost`` counts requests sent with neither an answer nor an error (0 unless the process is killed mid-call);
``misdelivered`` counts answers that carry another request's id. With ``--ledger PATH`` every request is also
written there as it happens: ``sent ID``, then ``ok ID PROVIDER`` or ``error ID``, one per line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import IO, Any, Protocol

import httpx

from plexus import sdk
from plexus.core.ready_file import write_ready_file
from plexus.demo.provider import REQUEST_ID_HEADER
from plexus.demo.stats import PathStats, path_name

ERROR_SAMPLES = 10  # the last few error messages travel with each report, for diagnosis
CALL_TIMEOUT = 5.0


class CallFailed(Exception):
    """A call got no answer from a provider: the message says what happened instead."""


class Caller(Protocol):
    protocol: str
    service: str

    def call(self, request_id: str) -> dict[str, Any]:
        """The provider's JSON answer; CallFailed when there is none."""
        ...


class HttpCaller:
    protocol = "http"

    def __init__(self, service: str, http: httpx.Client) -> None:
        self.service = service
        self.http = http

    def call(self, request_id: str) -> dict[str, Any]:
        try:
            response = self.http.get(f"/call/{request_id}", headers={REQUEST_ID_HEADER: request_id})
            if response.status_code != 200:
                reason = response.headers.get("x-plexus-error", "")
                raise CallFailed(f"HTTP {response.status_code} {reason} {response.text[:120]!r}")
            return _json_object(response.content)
        except (httpx.HTTPError, ValueError) as exc:
            raise CallFailed(f"{type(exc).__name__}: {exc}") from None


class GrpcCaller:
    protocol = "grpc"

    def __init__(self, service: str, client: sdk.Client) -> None:
        import grpc

        from plexus.demo.grpc_echo import caller

        self.service = service
        self._errors: type[Exception] = grpc.RpcError
        self._call = caller(client.grpc_channel(service))

    def call(self, request_id: str) -> dict[str, Any]:
        try:
            return _json_object(self._call(request_id.encode(), CALL_TIMEOUT))
        except self._errors as exc:
            code, details = getattr(exc, "code", None), getattr(exc, "details", None)
            what = f"{code().name} {details()}" if callable(code) and callable(details) else repr(exc)
            raise CallFailed(f"gRPC {what}") from None
        except ValueError as exc:
            raise CallFailed(f"bad answer: {exc}") from None


class BoltCaller:
    protocol = "bolt"

    def __init__(self, service: str, client: sdk.Client) -> None:
        from plexus.demo.bolt_echo import BoltConsumer

        self.service = service
        self.consumer = BoltConsumer(client.egress(service), service, CALL_TIMEOUT)

    def call(self, request_id: str) -> dict[str, Any]:
        from plexus.demo.bolt_echo import BoltCallError

        try:
            return _json_object(self.consumer.call(request_id.encode()))
        except (BoltCallError, ValueError) as exc:
            raise CallFailed(f"bolt {exc}") from None


def _json_object(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object: {raw[:120]!r}")
    return value


class Ledger:
    def __init__(self, name: str, mode: str, journal: IO[str] | None = None) -> None:
        self.name = name
        self.journal = journal
        self.mode = mode
        self.sent = 0
        self.ok = 0
        self.errors = 0
        self.misdelivered = 0
        self.in_flight: set[str] = set()
        self.paths: dict[str, PathStats] = {}
        self.error_samples: deque[str] = deque(maxlen=ERROR_SAMPLES)
        self.lock = threading.Lock()

    def call(self, caller: Caller, seq: int) -> None:
        request_id = f"{self.name}-{seq}"
        with self.lock:
            self.sent += 1
            self.in_flight.add(request_id)
            if self.journal is not None:
                self.journal.write(f"sent {request_id}\n")
        started = time.perf_counter()
        provider: str | None = None
        provider_mode: str | None = None
        ok = False
        error = ""
        try:
            body = caller.call(request_id)
            provider, provider_mode = body.get("provider"), body.get("mode")
            if body.get("request_id") == request_id:
                ok = True
            else:
                with self.lock:
                    self.misdelivered += 1
                error = f"misdelivered: asked {request_id}, got {body.get('request_id')!r}"
        except CallFailed as exc:
            error = f"{caller.protocol} {caller.service}: {exc}"
        except Exception as exc:  # a bug in a caller is a failed call in the table, not a dead consumer
            error = f"{caller.protocol} {caller.service}: unexpected {type(exc).__name__}: {exc}"
        latency_ms = (time.perf_counter() - started) * 1000
        with self.lock:
            self.in_flight.discard(request_id)
            if ok:
                self.ok += 1
            else:
                self.errors += 1
                self.error_samples.append(f"{request_id} {error}")
            if self.journal is not None:
                self.journal.write(f"ok {request_id} {provider}\n" if ok else f"error {request_id}\n")
            key = path_name(self.mode, provider_mode, caller.protocol)
            self.paths.setdefault(key, PathStats()).record(ok, latency_ms, provider)

    def report(self, final: bool) -> dict[str, Any]:
        with self.lock:
            return {
                "type": "stats", "consumer": self.name, "mode": self.mode, "sent": self.sent, "ok": self.ok,
                "errors": self.errors, "misdelivered": self.misdelivered, "lost": len(self.in_flight),
                "paths": {k: v.to_json() for k, v in sorted(self.paths.items())},
                "error_samples": list(self.error_samples), "final": final,
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plexus.demo.consumer", description=__doc__)
    parser.add_argument("--service", action="append", default=[], help="call over HTTP; repeat for several")
    parser.add_argument("--grpc-service", action="append", default=[], help="call over gRPC; repeatable")
    parser.add_argument("--bolt-service", action="append", default=[],
                        help="call over SOFA Bolt through the sidecar (mesh mode); repeatable")
    parser.add_argument("--name", required=True)
    parser.add_argument("--mode", choices=["auto", "mesh", "direct"], default="auto")
    parser.add_argument("--sidecar-api", default=None)
    parser.add_argument("--registry", default=None)
    parser.add_argument("--rate", type=float, default=20.0, help="calls per second (0: as fast as it can)")
    parser.add_argument("--report-interval", type=float, default=0.5)
    parser.add_argument("--wait-instances", type=int, default=1, help="wait for this many per service first")
    parser.add_argument("--ledger", default=None, help="write sent/ok/error per request id here")
    parser.add_argument("--ready-file", default=None)
    args = parser.parse_args(argv)
    if not (args.service or args.grpc_service or args.bolt_service):
        parser.error("name at least one --service, --grpc-service or --bolt-service")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    client = sdk.connect(None if args.mode == "auto" else args.mode,
                         sidecar_api=args.sidecar_api, registry=args.registry)
    journal = open(args.ledger, "a", buffering=1) if args.ledger else None  # noqa: SIM115 - closed below
    ledger = Ledger(args.name, client.mode, journal)
    if args.bolt_service and client.mode != "mesh":
        parser.error("--bolt-service needs a sidecar (mesh mode): the SDK has no Bolt client of its own")
    wanted = ([(s, "http") for s in args.service] + [(s, "grpc") for s in args.grpc_service]
              + [(s, "bolt") for s in args.bolt_service])
    callers: list[Caller] = []
    try:
        for service, protocol in wanted:
            subscription = client.subscribe(service, protocol=protocol)
            if not subscription.wait_for_instances(args.wait_instances, timeout=15.0):
                print(f"consumer {args.name}: {service} has no {protocol} instances", file=sys.stderr)
        makers: dict[str, Callable[[str], Caller]] = {
            "http": lambda s: HttpCaller(s, client.http_client(s, timeout=CALL_TIMEOUT)),
            "grpc": lambda s: GrpcCaller(s, client),
            "bolt": lambda s: BoltCaller(s, client),
        }
        callers = [makers[protocol](service) for service, protocol in wanted]
        if args.ready_file:
            write_ready_file(args.ready_file, {"name": args.name, "mode": client.mode})
        _run(ledger, callers, args.rate, args.report_interval, stop)
    finally:
        _emit(ledger.report(final=True))
        client.close(grace=0)
        for caller in callers:
            if isinstance(caller, BoltCaller):
                caller.consumer.close()
        if journal is not None:
            journal.close()
    return 0


def _run(ledger: Ledger, callers: list[Caller], rate: float, report_interval: float,
         stop: threading.Event) -> None:
    interval = 1.0 / rate if rate > 0 else 0.0
    next_call = next_report = time.monotonic()
    seq = 0
    while not stop.is_set():
        ledger.call(callers[seq % len(callers)], seq)
        seq += 1
        now = time.monotonic()
        if now >= next_report:
            _emit(ledger.report(final=False))
            next_report = now + report_interval
        next_call += interval
        delay = next_call - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        elif delay < -1.0:
            next_call = time.monotonic()  # fell far behind: do not burst to catch up


def _emit(report: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())

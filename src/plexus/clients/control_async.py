"""The sidecar's control-plane client: one ``Control/Stream`` over ``grpc_h2`` (no grpcio, no threads).

Protocol (plexus/proto/control.proto): Hello first, and again whenever what ``node()`` returns changes
(``node_changed``); every Snapshot is installed through the ``install`` callback, one at a time, in the order
received, and answered with an Ack: accepted when ``install`` returned, a NACK carrying the exception's text
when it raised (the caller keeps serving what it had). A Snapshot older than the applied version is not
installed: it is answered with accepted = false and an error saying so, as control.proto asks. The same
version as the applied one (a resend after a reconnect) is ACKed without installing again. Reports of
``traffic()`` go out every ``report_interval_ms`` of the last Snapshot.

The control plane being away changes nothing that is installed: the client reconnects with exponential
backoff and jitter between ``reconnect_min`` and ``reconnect_max``, and its Hello then carries the applied
version so the control plane can skip a resend. Every method except ``aclose`` is synchronous and must be
called on the loop; callbacks run on the loop.

Observability (``observed``, an ``Observed``: the sidecar's telemetry): each Report also carries what
``observed.fill_report`` adds (edges, paths, TCP, active connections). A TapStart opens a tap there and,
while any tap is open, the lines waiting are sent as TapLines every TAP_FLUSH; a TapStop closes it, and so
does the end of the stream (the control plane opens them again on the next one if the tap still runs). An
ExplainQuery is answered at once with ``observed.explain(request_id)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from plexus.clients.grpc_h2 import (
    KEEPALIVE,
    KEEPALIVE_TIMEOUT,
    UNAVAILABLE,
    Call,
    Channel,
    GrpcStatus,
)
from plexus.clients.reconnect import keep_connected
from plexus.core.address import parse_host_port
from plexus.proto import control_pb2 as pb

log = logging.getLogger("plexus.clients.control")

STREAM_PATH: Final = "/plexus.control.v1.Control/Stream"
CONNECT_TIMEOUT: Final = 2.0  # a control plane that accepts no TCP connection in this long is treated as down
RECONNECT_MIN: Final = 0.2
RECONNECT_MAX: Final = 3.0  # "a few seconds": a returning control plane is found again quickly
ERROR_LIMIT: Final = 4000  # characters of an install error sent in a NACK (a file with hundreds of problems)
TAP_FLUSH: Final = 0.1  # seconds between TapLines while a tap is open (control.proto: every 100 ms)
MAX_TAPS: Final = 64  # taps open at once on one sidecar; more TapStarts are ignored (each costs per request)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the sidecar says of itself in Hello (``applied_version`` is added by the client)."""

    id: str
    workload: str = ""
    zone: str = ""
    unit: str = ""
    sidecar_version: str = ""
    consumes: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotIn:
    version: int
    nonce: str
    policy_json: str
    report_interval_ms: int


@dataclass(frozen=True, slots=True)
class Traffic:
    """One service and direction's cumulative counters, as a Report carries them."""

    service: str
    direction: str  # "inbound" | "outbound"
    requests: int
    errors: int
    duration_buckets: tuple[int, ...] = ()
    duration_sum_ms: float = 0.0


@dataclass(slots=True)
class Nack:
    version: int
    nonce: str
    error: str
    at: float = field(default_factory=time.time)


Installer = Callable[[SnapshotIn], Awaitable[None]]


class Observed(Protocol):
    """The sidecar's telemetry as the control stream needs it (``plexus.sidecar.policy.PolicyAgent``)."""

    def fill_report(self, report: pb.Report) -> None:
        """Add edges, paths, TCP summaries and active connections to ``report``."""

    def open_tap(self, tap_id: str, service: str) -> None: ...

    def close_tap(self, tap_id: str) -> None: ...

    def take_tap_lines(self) -> list[pb.TapLines]:
        """The lines waiting in every open tap (and how many were dropped), emptied; none when idle."""
        ...

    def explain(self, request_id: str) -> list[pb.RequestLine]: ...


class AsyncControlClient:
    def __init__(
        self,
        address: str,
        node: Callable[[], NodeInfo],
        install: Installer,
        traffic: Callable[[], Sequence[Traffic]] = tuple,
        *,
        observed: Observed | None = None,
        reconnect_min: float = RECONNECT_MIN,
        reconnect_max: float = RECONNECT_MAX,
        keepalive: float = KEEPALIVE,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        self.address = address
        self._host, self._port = parse_host_port(address, "control")
        self._node = node
        self._install = install
        self._traffic = traffic
        self._observed = observed
        self._taps: set[str] = set()  # opened on this stream
        self._tap_flusher: asyncio.Task[None] | None = None
        self._reconnect_min = reconnect_min
        self._reconnect_max = max(reconnect_max, reconnect_min)
        self._keepalive = keepalive
        self._keepalive_timeout = keepalive_timeout
        self.applied_version = 0
        self.applied_nonce = ""
        self.last_nack: Nack | None = None
        self.snapshots_received = 0
        self.snapshots_nacked = 0  # refused: the last good snapshot kept serving
        self.connects = 0
        self.report_interval_ms = 0
        self._sent_node: NodeInfo | None = None
        self._sent_applied = -1
        self._call: Call | None = None
        self._channel: Channel | None = None
        self._inbox: asyncio.Queue[SnapshotIn] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._hello_pending = False
        self._report_seq = 0
        self._started = time.monotonic()
        self._changed = asyncio.Event()  # replaced after each answered snapshot (for wait_applied)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Connect in the background; never raises while the control plane is down."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._run(), name="plexus-control-client")
            self._worker = loop.create_task(self._work(), name="plexus-control-install")

    async def aclose(self, timeout: float = 2.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._call is not None:
            self._call.close_send()
        if self._channel is not None:
            self._channel.close(GrpcStatus(UNAVAILABLE, "client closed"))
        self._close_taps()
        for task in (self._reporter, self._worker):
            if task is not None:
                task.cancel()
        for task in (self._task, self._worker, self._reporter):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, timeout)
        self._task = self._worker = self._reporter = None

    @property
    def connected(self) -> bool:
        """The stream is open on a live connection."""
        call, channel = self._call, self._channel
        return call is not None and channel is not None and channel.is_open and not call.finished

    def node_changed(self) -> None:
        """What ``node()`` returns may have changed: send a new Hello (coalesced; nothing when unchanged)."""
        if not self._hello_pending:
            self._hello_pending = True
            asyncio.get_running_loop().call_soon(self._maybe_hello)

    async def wait_answered(self, version: int, timeout: float) -> bool:
        """Wait until a Snapshot of at least ``version`` was applied or NACKed (tests, start-up)."""
        deadline = time.monotonic() + timeout

        def answered() -> bool:
            nack = self.last_nack
            return self.applied_version >= version or (nack is not None and nack.version >= version)

        while not answered():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def view(self) -> dict[str, Any]:
        nack = self.last_nack
        return {
            "address": self.address,
            "connected": self.connected,
            "applied_version": self.applied_version,
            "applied_nonce": self.applied_nonce,
            "snapshots_received": self.snapshots_received,
            "connects": self.connects,
            "report_interval_ms": self.report_interval_ms,
            "last_nack": None
            if nack is None
            else {"version": nack.version, "nonce": nack.nonce, "error": nack.error, "at": nack.at},
        }

    # ------------------------------------------------------------------ sending
    def _maybe_hello(self) -> None:
        self._hello_pending = False
        node = self._node()
        if node != self._sent_node or self.applied_version != self._sent_applied:
            self._send_hello(node)

    def _send_hello(self, node: NodeInfo) -> None:
        call = self._call
        if call is None or call.finished:
            return
        hello = pb.Node(
            id=node.id,
            workload=node.workload,
            zone=node.zone,
            unit=node.unit,
            sidecar_version=node.sidecar_version,
            consumes=sorted(node.consumes),
            provides=sorted(node.provides),
            applied_version=self.applied_version,
            addresses=list(node.addresses),
        )
        call.send(pb.SidecarMessage(hello=hello).SerializeToString())
        self._sent_node = node
        self._sent_applied = self.applied_version

    def _send_ack(self, version: int, nonce: str, error: str | None) -> None:
        call = self._call
        if call is None or call.finished:
            return  # the control plane learns the applied version from the next Hello
        ack = pb.Ack(version=version, nonce=nonce, accepted=error is None, error=error or "")
        call.send(pb.SidecarMessage(ack=ack).SerializeToString())

    def _send_report(self) -> None:
        call = self._call
        if call is None or call.finished:
            return
        self._report_seq += 1
        report = pb.Report(sequence=self._report_seq, uptime_seconds=time.monotonic() - self._started)
        for t in self._traffic():
            report.traffic.add(
                service=t.service,
                direction=t.direction,
                requests=t.requests,
                errors=t.errors,
                duration_buckets=list(t.duration_buckets),
                duration_sum_ms=t.duration_sum_ms,
            )
        if self._observed is not None:
            self._observed.fill_report(report)
        call.send(pb.SidecarMessage(report=report).SerializeToString())

    # ------------------------------------------------------------------ taps and explain
    def _on_observe(self, message: pb.ControlMessage, kind: str | None) -> None:
        observed = self._observed
        if observed is None:
            return  # nothing to tap or explain: ignored, as an unknown message
        if kind == "explain":
            query = message.explain
            answer = pb.ExplainAnswer(query_id=query.query_id, hops=observed.explain(query.request_id))
            self._send(pb.SidecarMessage(explain=answer))
        elif kind == "tap_start":
            tap_id = message.tap_start.tap_id
            if tap_id in self._taps or len(self._taps) >= MAX_TAPS:
                return
            observed.open_tap(tap_id, message.tap_start.service)
            self._taps.add(tap_id)
            if self._tap_flusher is None or self._tap_flusher.done():
                self._tap_flusher = asyncio.get_running_loop().create_task(
                    self._flush_taps(), name="plexus-control-tap"
                )
        elif kind == "tap_stop":
            tap_id = message.tap_stop.tap_id
            if tap_id in self._taps:  # lines still waiting in it are dropped: the control plane ended the tap
                self._taps.discard(tap_id)
                observed.close_tap(tap_id)

    def _send(self, message: pb.SidecarMessage) -> None:
        call = self._call
        if call is not None and not call.finished:
            call.send(message.SerializeToString())

    def _flush_tap_lines(self) -> None:
        if self._observed is None:
            return
        for batch in self._observed.take_tap_lines():
            if batch.tap_id in self._taps:
                self._send(pb.SidecarMessage(tap=batch))

    async def _flush_taps(self) -> None:
        while self._taps:
            await asyncio.sleep(TAP_FLUSH)
            try:
                self._flush_tap_lines()
            except Exception:  # best effort: the next flush carries what is waiting then
                log.exception("control %s: tap lines not sent", self.address)

    def _close_taps(self) -> None:
        """The stream ended (or the client closes): no tap outlives it."""
        observed = self._observed
        for tap_id in list(self._taps):
            self._taps.discard(tap_id)
            if observed is not None:
                observed.close_tap(tap_id)
        if self._tap_flusher is not None:
            self._tap_flusher.cancel()
            self._tap_flusher = None

    # ------------------------------------------------------------------ receiving
    def _on_message(self, payload: bytes) -> None:
        message = pb.ControlMessage.FromString(payload)
        kind = message.WhichOneof("kind")
        if kind != "snapshot":
            try:
                self._on_observe(message, kind)  # tap and explain; a newer message this client does not know
            except Exception:  # telemetry must never break the policy stream
                log.exception("control %s: %s not handled", self.address, kind)
            return
        snap = message.snapshot
        self.snapshots_received += 1
        self._inbox.put_nowait(
            SnapshotIn(snap.version, snap.nonce, snap.policy_json, snap.report_interval_ms)
        )

    async def _work(self) -> None:
        """Install snapshots one at a time, in order; answer each."""
        while True:
            snap = await self._inbox.get()
            self._set_report_interval(snap.report_interval_ms)
            if snap.version < self.applied_version:
                error = (
                    f"snapshot version {snap.version} is older than the applied version "
                    f"{self.applied_version}; ignored"
                )
                log.info("control %s: %s", self.address, error)
                self._send_ack(snap.version, snap.nonce, error)
            elif snap.version == self.applied_version and snap.version > 0:
                self.applied_nonce = snap.nonce  # a resend of what runs: nothing to install
                self._send_ack(snap.version, snap.nonce, None)
            else:
                try:
                    await self._install(snap)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # every failure is a NACK; what was installed keeps serving
                    error = (str(exc) or repr(exc))[:ERROR_LIMIT]
                    self.last_nack = Nack(snap.version, snap.nonce, error)
                    self.snapshots_nacked += 1
                    log.error("control %s: snapshot %d refused: %s", self.address, snap.version, error)
                    self._send_ack(snap.version, snap.nonce, error)
                else:
                    self.applied_version = snap.version
                    self.applied_nonce = snap.nonce
                    log.info("control %s: snapshot %d applied", self.address, snap.version)
                    self._send_ack(snap.version, snap.nonce, None)
                    self._sent_applied = snap.version  # the Ack told it; no Hello needed for that
            self._changed.set()
            self._changed = asyncio.Event()

    def _set_report_interval(self, interval_ms: int) -> None:
        if interval_ms == self.report_interval_ms and (interval_ms == 0 or self._reporter is not None):
            return
        self.report_interval_ms = interval_ms
        if self._reporter is not None:
            self._reporter.cancel()
            self._reporter = None
        if interval_ms > 0 and not self._stopping:
            self._reporter = asyncio.get_running_loop().create_task(
                self._report_loop(interval_ms / 1000.0), name="plexus-control-report"
            )

    async def _report_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self._send_report()
            except Exception:  # a report is best effort; the next one carries the same cumulative counters
                log.exception("control %s: report failed", self.address)

    # ------------------------------------------------------------------ connection
    async def _run(self) -> None:
        await keep_connected(
            self._session,
            stopping=lambda: self._stopping,
            wake=self._wake,
            reconnect_min=self._reconnect_min,
            reconnect_max=self._reconnect_max,
            what=f"control {self.address}",
            log=log,
        )

    async def _session(self) -> bool:
        """One connection and stream; True when the control plane answered (headers or a message)."""
        channel = await Channel.connect(
            self._host,
            self._port,
            timeout=CONNECT_TIMEOUT,
            keepalive=self._keepalive,
            keepalive_timeout=self._keepalive_timeout,
        )
        self._channel = channel
        received_before = self.snapshots_received
        try:
            call = self._call = channel.open(STREAM_PATH, self._on_message)
            self.connects += 1
            self._send_hello(self._node())
            log.info("control %s: stream open (applied version %d)", self.address, self.applied_version)
            woken = asyncio.ensure_future(self._wake.wait())
            waits: list[asyncio.Future[Any]] = [woken, call.done, channel.closed]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            headers = call.headers
            answered = headers.done() and not headers.cancelled() and headers.exception() is None
            answered = answered or self.snapshots_received > received_before
            if not self._stopping:
                why = call.done.result() if call.done.done() else channel.closed.result()
                log.info("control %s: stream ended: %s", self.address, why)
            return answered
        finally:
            self._close_taps()
            self._call = None
            self._channel = None
            self._sent_node = None
            self._sent_applied = -1
            channel.close()

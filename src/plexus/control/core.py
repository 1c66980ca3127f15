"""The control plane's core: stored resources, the compiled policy, sidecar streams and the push driver.

``ControlCore`` performs the I/O around ``plexus.push.policy_push.PolicyPushState`` (read it for versions,
nonces, debounce and ACK/NACK): it validates and stores resources (``apply``, ``delete``), renders each
sidecar's scoped payload (``PolicySet.scoped(...).to_json()`` and the report interval, cached per scope), runs
a timer that ticks the state machine at its deadlines, and hands each ``Send`` to the stream it names.

Also the API of the single-machine stress test (``plexus.control.stress``): ``policy``, ``set_stress``,
``set_report_interval`` and ``nodes``; and of observability: ``observer`` (``plexus.control.observe``: every
Hello and Report goes to it; Stat and Info read it), ``explain`` (asks every connected sidecar for the hops of
a request id) and ``tap`` (opens a tap on every connected sidecar, and on those that connect meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Hashable
from dataclasses import dataclass
from typing import Any, Final, cast

from plexus.config.resources import (
    ALL_KINDS,
    DEFAULT_NAMESPACE,
    PolicySet,
    RawResource,
    ResourceRef,
    StressShare,
    parse_resources,
    split_resources,
)
from plexus.config.route_config import RouteConfigError
from plexus.control.observe import MeshObserver, order_hops, verdict
from plexus.control.parsing import Chunk, parse_chunks, source_of
from plexus.proto import control_pb2 as pb
from plexus.push.policy_push import Clock, PolicyPushState, Send, SidecarStatus
from plexus.stores.policy_store import PolicyStore, StoredResource

log = logging.getLogger("plexus.control")

MAX_NODE_ID: Final = 256
MAX_SCOPE_NAMES: Final = 10_000  # services one sidecar consumes or provides; more is a bug or an attack
EXPLAIN_WAIT: Final = 1.0  # seconds Explain waits for sidecars' answers when the request says 0
MAX_EXPLAIN_WAIT: Final = 30.0  # a longer wait only holds the caller; every live sidecar answers at once
MAX_EXPLAIN_HOPS: Final = 1000  # hops kept per query: one request id seen by many sidecars, or reused ids
TAP_QUEUE: Final = 10_000  # lines waiting for a slow tap client; more are dropped (and counted)


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time_us(self) -> int:
        return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class Payload:
    """What one sidecar is sent (compared whole: a change of either is pushed)."""

    policy_json: str
    report_interval_ms: int


Scope = tuple[tuple[str, ...], tuple[str, ...]]  # (consumes, provides), sorted


@dataclass(frozen=True, slots=True)
class NodeView:
    node: pb.Node
    report: pb.Report | None
    report_time: float  # monotonic; 0.0 without a report
    acked_version: int
    sent_version: int


@dataclass(frozen=True, slots=True)
class _Entry:
    raw: RawResource  # the document as applied, and where it came from
    version: int  # the policy version that last changed it


class StartupError(Exception):
    """The resources of --config-dir or --data-dir are invalid; ``problems`` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Query:
    """One Explain in flight: the sidecars asked, those that answered, the hops they sent."""

    def __init__(self, asked: set[str]) -> None:
        self.asked = asked
        self.answered: set[str] = set()
        self.hops: list[pb.RequestLine] = []
        self.done = asyncio.Event()


class _Tap:
    """One Tap RPC: its service and the lines waiting for the client."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.lines: asyncio.Queue[pb.RequestLine] = asyncio.Queue(TAP_QUEUE)
        self.dropped = 0


class ControlStream:
    """One sidecar's open stream: its session and the messages waiting to be written to it."""

    def __init__(self, node: pb.Node) -> None:
        self.node = node
        self.session = 0
        self.queue: asyncio.Queue[pb.ControlMessage | None] = asyncio.Queue()  # None: the reader ended
        self.opened = time.monotonic()


def canonical_kind(kind: str) -> str | None:
    """A kind as users type it (``virtualservice``, ``VirtualServices``) → its canonical name."""
    wanted = kind.lower()
    for known in ALL_KINDS:
        if wanted in (known.lower(), known.lower() + "s"):
            return known
    return None


def _chunk(raw: RawResource) -> Chunk:
    file_name, line = source_of(raw.source)
    return Chunk(raw.text, file_name, line)


def _scope(node: pb.Node) -> Scope:
    return (tuple(sorted(set(node.consumes))), tuple(sorted(set(node.provides))))


class ControlCore:
    def __init__(
        self,
        store: PolicyStore,
        *,
        clock: Clock | None = None,
        debounce: float = 0.1,
        max_debounce: float = 10.0,
        report_interval_ms: int = 0,
    ) -> None:
        self._store = store
        self._clock: Clock = clock or SystemClock()
        self._debounce = debounce
        self._max_debounce = max_debounce
        self._entries: dict[ResourceRef, _Entry] = {}
        self._policy = PolicySet()
        self._stress: tuple[StressShare, ...] = ()
        self._report_interval_ms = report_interval_ms
        self._render_cache: dict[Hashable, Payload] = {}
        self._push: PolicyPushState[Payload] = PolicyPushState(
            clock=self._clock, render=self._render, debounce=debounce, max_debounce=max_debounce
        )
        self._streams: dict[str, ControlStream] = {}
        self._nodes: dict[str, pb.Node] = {}
        self._reports: dict[str, tuple[pb.Report, float]] = {}
        self.observer = MeshObserver(self._clock.monotonic, policy_version=lambda: self._push.version)
        self._queries: dict[str, _Query] = {}
        self._taps: dict[str, _Tap] = {}
        self._lock = asyncio.Lock()  # one resource change at a time, validated against the current set
        self._wake = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._closing = False

    # ---------------------------------------------------------------- lifecycle

    async def load(self) -> None:
        """Read the store (before serving). Raises StartupError when stored resources no longer validate."""
        stored = await self._store.load()
        if stored is None:
            return
        entries: dict[ResourceRef, _Entry] = {}
        for res in stored.resources:
            ref = ResourceRef(res.kind, res.namespace, res.name)
            entries[ref] = _Entry(RawResource(ref, res.yaml, res.source), res.version)
        try:
            policy = parse_chunks([_chunk(e.raw) for e in entries.values()])
        except RouteConfigError as exc:
            where = self._store.path
            raise StartupError(
                [f"{where}: stored resource no longer valid: {p}" for p in exc.problems]
            ) from None
        self._entries = entries
        self._policy = policy
        self._invalidate()
        # versions only grow, also across restarts: start past the stored one (and at least at the wall clock)
        self._push.version = max(self._push.version, stored.version + 1)

    async def start(self) -> None:
        self._driver = asyncio.get_running_loop().create_task(self._drive(), name="control-driver")

    async def close(self) -> None:
        self._closing = True
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver

    # ---------------------------------------------------------------- the stress test's API

    @property
    def policy(self) -> PolicySet:
        return self._policy

    @property
    def version(self) -> int:
        return self._push.version

    @property
    def stress(self) -> tuple[StressShare, ...]:
        return self._stress

    @property
    def report_interval_ms(self) -> int:
        return self._report_interval_ms

    def set_stress(self, shares: tuple[StressShare, ...]) -> None:
        """Replace the running stress shares (not persisted), recompile and push."""
        if shares == self._stress:
            return
        self._stress = tuple(shares)
        self._changed()

    def set_report_interval(self, ms: int) -> None:
        ms = max(int(ms), 0)
        if ms == self._report_interval_ms:
            return
        self._report_interval_ms = ms
        self._changed()

    def nodes(self) -> list[NodeView]:
        """Every connected sidecar with its last Hello, last Report and versions."""
        out: list[NodeView] = []
        for node_id, stream in self._streams.items():
            status = self._push.status(node_id)
            report = self._reports.get(node_id)
            out.append(
                NodeView(
                    node=stream.node,
                    report=report[0] if report else None,
                    report_time=report[1] if report else 0.0,
                    acked_version=status.acked_version if status else 0,
                    sent_version=status.sent_version if status else 0,
                )
            )
        return out

    # ---------------------------------------------------------------- resources

    async def apply(self, file_name: str, text: str, dry_run: bool = False) -> pb.ApplyResponse:
        file_name = file_name or "<apply>"
        async with self._lock:
            try:
                raws = split_resources(text, file_name)
            except RouteConfigError as split_error:  # not YAML, or a document without kind or name
                try:
                    parse_resources(text, file_name)  # says everything that is wrong, not only that
                except RouteConfigError as exc:
                    return pb.ApplyResponse(problems=[str(p) for p in exc.problems], version=self.version)
                return pb.ApplyResponse(problems=[str(p) for p in split_error.problems], version=self.version)
            applied = {raw.ref for raw in raws}
            others = [e.raw for ref, e in self._entries.items() if ref not in applied]
            try:
                # the stored set and this file as one: a route here may name a subset defined elsewhere
                merged = parse_chunks([*map(_chunk, others), Chunk(text, file_name)])
            except RouteConfigError as exc:
                return pb.ApplyResponse(problems=[str(p) for p in exc.problems], version=self.version)
            entries = dict(self._entries)
            changes: list[pb.ResourceChange] = []
            changed: list[ResourceRef] = []
            for raw in raws:
                old = entries.get(raw.ref)
                if old is not None and old.raw.text == raw.text:
                    action = "unchanged"
                else:
                    action = "created" if old is None else "configured"
                    entries[raw.ref] = _Entry(raw, 0)
                    changed.append(raw.ref)
                msg = pb.ResourceRef(kind=raw.ref.kind, name=raw.ref.name, namespace=raw.ref.namespace)
                changes.append(pb.ResourceChange(ref=msg, action=action))
            if dry_run or not changed:
                return pb.ApplyResponse(changes=changes, version=self.version)
            version = self._push.change()
            for ref in changed:
                entries[ref] = dataclasses.replace(entries[ref], version=version)
            try:
                await self._save(entries, version)
            except OSError as exc:
                return pb.ApplyResponse(
                    problems=[f"{self._store.path}: cannot store the change: {exc.strerror}"],
                    version=self.version,
                )
            self._commit(entries, merged)
            log.info("applied %s: %d resources changed, version %d", file_name, len(changed), version)
            return pb.ApplyResponse(changes=changes, version=version)

    def get(self, kind: str = "", name: str = "", namespace: str = "") -> list[pb.Resource]:
        wanted = canonical_kind(kind) if kind else None
        if kind and wanted is None:
            return []
        out = []
        for entry in self._ordered():
            ref = entry.raw.ref
            if wanted and ref.kind != wanted:
                continue
            if name and ref.name != name:
                continue
            if namespace and ref.namespace != namespace:
                continue
            out.append(
                pb.Resource(
                    ref=pb.ResourceRef(kind=ref.kind, name=ref.name, namespace=ref.namespace),
                    yaml=entry.raw.text,
                    source=entry.raw.source,
                    version=entry.version,
                )
            )
        return out

    async def delete(self, kind: str, name: str, namespace: str = "") -> pb.DeleteResponse:
        async with self._lock:
            ref = ResourceRef(canonical_kind(kind) or kind, namespace or DEFAULT_NAMESPACE, name)
            if ref not in self._entries:
                return pb.DeleteResponse(deleted=False, version=self.version)
            entries = {k: e for k, e in self._entries.items() if k != ref}
            merged = self._policy.without(ref)
            problems = merged.check()
            if problems:
                return pb.DeleteResponse(
                    deleted=False,
                    version=self.version,
                    problems=[f"cannot delete {ref}: {p}" for p in problems],
                )
            version = self._push.change()
            try:
                await self._save(entries, version)
            except OSError as exc:
                return pb.DeleteResponse(
                    deleted=False,
                    version=self.version,
                    problems=[f"{self._store.path}: cannot store the change: {exc.strerror}"],
                )
            self._commit(entries, merged)
            log.info("deleted %s, version %d", ref, version)
            return pb.DeleteResponse(deleted=True, version=version)

    def resources_json(self) -> list[dict[str, Any]]:
        return [
            {
                "kind": e.raw.ref.kind,
                "namespace": e.raw.ref.namespace,
                "name": e.raw.ref.name,
                "source": e.raw.source,
                "version": e.version,
                "yaml": e.raw.text,
            }
            for e in self._ordered()
        ]

    # ---------------------------------------------------------------- streams

    def open_stream(self, node: pb.Node) -> ControlStream:
        stream = ControlStream(node)
        self._nodes[node.id] = node
        session, sends = self._push.connect(node.id, _scope(node), node.applied_version)
        stream.session = session
        self._streams[node.id] = stream
        self.observer.connected(node)
        self._dispatch(sends)
        for tap_id, tap in self._taps.items():  # a tap open now covers sidecars that connect during it
            start = pb.TapStart(tap_id=tap_id, service=tap.service)
            stream.queue.put_nowait(pb.ControlMessage(tap_start=start))
        return stream

    def hello(self, stream: ControlStream, node: pb.Node) -> None:
        stream.node = node
        self._nodes[node.id] = node
        if self._streams.get(node.id) is stream:
            self.observer.connected(node)
        self._dispatch(self._push.hello(node.id, stream.session, _scope(node)))

    def answered(self, stream: ControlStream, ack: pb.Ack) -> None:
        if not ack.accepted:
            log.warning("sidecar %s refused version %d: %s", stream.node.id, ack.version, ack.error)
        sends = self._push.answered(
            stream.node.id, stream.session, ack.version, ack.nonce, ack.accepted, ack.error
        )
        self._dispatch(sends)

    def report(self, stream: ControlStream, report: pb.Report) -> None:
        self._reports[stream.node.id] = (report, self._clock.monotonic())
        self.observer.report(stream.node.id, report)

    def close_stream(self, stream: ControlStream) -> None:
        self._push.disconnected(stream.node.id, stream.session)
        if self._streams.get(stream.node.id) is stream:
            del self._streams[stream.node.id]
            self._reports.pop(stream.node.id, None)
            self.observer.disconnected(stream.node.id)
        for query in self._queries.values():  # a sidecar that went will not answer: do not wait for it
            query.asked.discard(stream.node.id)
            if query.asked <= query.answered:
                query.done.set()

    # ---------------------------------------------------------------- explain and tap

    async def explain(self, request_id: str, wait: float = 0.0) -> pb.ExplainResponse:
        """Ask every connected sidecar for the hops of ``request_id``; answer when all did or at ``wait``."""
        wait = EXPLAIN_WAIT if wait <= 0 else min(wait, MAX_EXPLAIN_WAIT)
        query_id = uuid.uuid4().hex
        streams = list(self._streams.values())
        query = self._queries[query_id] = _Query({s.node.id for s in streams})
        message = pb.ControlMessage(explain=pb.ExplainQuery(query_id=query_id, request_id=request_id))
        for stream in streams:
            stream.queue.put_nowait(message)
        asked = len(query.asked)
        try:
            if query.asked:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await query.done.wait()
        finally:
            del self._queries[query_id]
        hops = order_hops(query.hops)
        return pb.ExplainResponse(
            hops=hops,
            sidecars_asked=asked,
            sidecars_answered=len(query.answered),
            verdict=verdict(hops),
        )

    def explain_answer(self, stream: ControlStream, answer: pb.ExplainAnswer) -> None:
        query = self._queries.get(answer.query_id)
        node_id = stream.node.id
        if query is None or node_id in query.answered:
            return  # late (the Explain already answered) or repeated
        query.answered.add(node_id)
        for hop in answer.hops[: max(MAX_EXPLAIN_HOPS - len(query.hops), 0)]:
            if not hop.sidecar_id:
                hop.sidecar_id = node_id
            if not hop.workload:
                hop.workload = stream.node.workload
            query.hops.append(hop)
        if query.asked <= query.answered:
            query.done.set()

    async def tap(self, service: str = "", count: int = 0) -> AsyncGenerator[pb.RequestLine, None]:
        """Lines of ``service`` ("" = every one) from every sidecar as they come, ``count`` of them (0: until
        the caller stops iterating); the taps are stopped on every sidecar when it ends."""
        tap_id = uuid.uuid4().hex
        tap = self._taps[tap_id] = _Tap(service)
        start = pb.ControlMessage(tap_start=pb.TapStart(tap_id=tap_id, service=service))
        for stream in self._streams.values():
            stream.queue.put_nowait(start)
        sent = 0
        try:
            while count <= 0 or sent < count:
                yield await tap.lines.get()
                sent += 1
        finally:
            del self._taps[tap_id]
            stop = pb.ControlMessage(tap_stop=pb.TapStop(tap_id=tap_id))
            for stream in self._streams.values():
                stream.queue.put_nowait(stop)
            if tap.dropped:
                log.info("tap %s: %d lines dropped for a slow client", tap_id, tap.dropped)

    def tap_lines(self, stream: ControlStream, lines: pb.TapLines) -> None:
        tap = self._taps.get(lines.tap_id)
        if tap is None:  # a tap that ended (its stop crossed these lines): make sure the sidecar stops it
            stream.queue.put_nowait(pb.ControlMessage(tap_stop=pb.TapStop(tap_id=lines.tap_id)))
            return
        for line in lines.lines:
            if not line.sidecar_id:
                line.sidecar_id = stream.node.id
            if not line.workload:
                line.workload = stream.node.workload
            try:
                tap.lines.put_nowait(line)
            except asyncio.QueueFull:
                tap.dropped += 1
        tap.dropped += lines.dropped

    @property
    def connected(self) -> int:
        return len(self._streams)

    def statuses(self) -> list[SidecarStatus]:
        return list(self._push.statuses())

    def proxy_status(self) -> pb.ProxyStatusResponse:
        now = self._clock.monotonic()
        proxies = []
        for st in self._push.statuses():
            node = self._nodes.get(st.sidecar) or pb.Node(id=st.sidecar)
            proxies.append(
                pb.ProxyStatus(
                    node=node,
                    sent_version=st.sent_version,
                    acked_version=st.acked_version,
                    state=st.state.value,
                    last_error=st.last_error,
                    nacked_version=st.nacked_version,
                    connected_seconds=max(now - st.connected_at, 0.0) if st.connected else 0.0,
                )
            )
        return pb.ProxyStatusResponse(version=self.version, proxies=proxies)

    @property
    def push_state(self) -> PolicyPushState[Payload]:
        return self._push

    # ---------------------------------------------------------------- internals

    def _ordered(self, entries: dict[ResourceRef, _Entry] | None = None) -> list[_Entry]:
        source = self._entries if entries is None else entries
        order = {kind: i for i, kind in enumerate(ALL_KINDS)}
        return [
            source[r]
            for r in sorted(
                source, key=lambda r: (order.get(r.kind, len(order)), r.kind, r.namespace, r.name)
            )
        ]

    async def _save(self, entries: dict[ResourceRef, _Entry], version: int) -> None:
        await self._store.save(
            version,
            [
                StoredResource(
                    e.raw.ref.kind, e.raw.ref.namespace, e.raw.ref.name, e.raw.text, e.raw.source, e.version
                )
                for e in self._ordered(entries)
            ],
        )

    def _commit(self, entries: dict[ResourceRef, _Entry], merged: PolicySet) -> None:
        self._entries = entries
        self._policy = merged
        self._invalidate()
        self._wake.set()

    def _changed(self) -> None:
        self._push.change()
        self._invalidate()
        self._wake.set()

    def _invalidate(self) -> None:
        self._render_cache.clear()

    def _render(self, scope: Hashable) -> Payload:
        cached = self._render_cache.get(scope)
        if cached is not None:
            return cached
        consumes, provides = cast(Scope, scope)
        policy = self._policy if not self._stress else dataclasses.replace(self._policy, stress=self._stress)
        payload = Payload(policy.scoped(consumes, provides).to_json(), self._report_interval_ms)
        self._render_cache[scope] = payload
        return payload

    def _dispatch(self, sends: list[Send[Payload]]) -> None:
        # sidecars of one scope get the same version, nonce and payload in a flush: one message for them all
        built: dict[tuple[int, str, Payload], pb.ControlMessage] = {}
        for send in sends:
            stream = self._streams.get(send.sidecar)
            if stream is None or stream.session != send.session:
                continue
            key = (send.version, send.nonce, send.payload)
            message = built.get(key)
            if message is None:
                snapshot = pb.Snapshot(
                    version=send.version,
                    nonce=send.nonce,
                    policy_json=send.payload.policy_json,
                    report_interval_ms=send.payload.report_interval_ms,
                )
                message = built[key] = pb.ControlMessage(snapshot=snapshot)
            stream.queue.put_nowait(message)

    async def _drive(self) -> None:
        while not self._closing:
            deadline = self._push.next_deadline()
            timeout = None if deadline is None else max(deadline - self._clock.monotonic(), 0.0)
            # asyncio.timeout, not wait_for: see plexus.registry.server (a cancel racing the wake-up)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            try:
                self._dispatch(self._push.tick())
            except Exception:  # keep ticking: one bad render must not freeze every push
                log.exception("control tick failed")

"""Span export (``--trace-export``): sampled requests become OpenTelemetry spans, exported off the loop.

A sampled request that ends lands in ``Telemetry.spans`` (only while an exporter runs: ``exporting_spans``),
as its entry or its journal tuple; the worker makes the entries.
Every ``EXPORT_INTERVAL`` a timer on the sidecar's loop swaps that list for an empty one and hands the batch
to a worker thread, through a bounded queue (``MAX_QUEUED_BATCHES``; a full queue drops the batch, counted in
``Telemetry.spans_dropped``). The thread builds the OpenTelemetry SDK's ``ReadableSpan``s and calls the
exporter's ``export``, so neither building nor a slow collector ever blocks the data plane; this is what the
SDK's ``BatchSpanProcessor`` does, minus its per-span ``on_end`` call on the hot path.

Exporters (``SPEC``):
- ``file:PATH``: OTLP-shaped JSON, one span per line (``traceId``, ``spanId``, ``parentSpanId``, ``name``,
  ``kind``, ``startTimeUnixNano``, ``endTimeUnixNano``, ``attributes``, ``status``, ``resource``), appended.
- ``otlp:http://HOST:PORT[/PATH]``: OTLP/HTTP protobuf (opentelemetry-exporter-otlp-proto-http) to a
  collector; ``/v1/traces`` when no path is given.
- ``none``, the default of a bare ``plexus sidecar``: spans are not kept (the sampling decision still travels
  to the next hop, which may export). A file appearing in the working directory of every sidecar that was
  not asked for one would surprise more than it helps; ``plexus demo`` writes its sidecars' spans into its
  work dir.

One span per hop, as Envoy makes them: CLIENT on a sidecar's outbound side, SERVER on its inbound side; the
next hop's span is the child (``parentSpanId``) of the one that forwarded the request (plexus.proxy.tracing).
The OpenTelemetry SDK is imported only when the first batch of spans is exported (in the worker thread), so a
sidecar that exports none (no exporter, or no sampled request yet) never maps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any, Final

from plexus.config.sidecar_settings import parse_trace_export
from plexus.core.errors import PlexusError
from plexus.proxy.telemetry import INBOUND, Queued, RequestEntry, Telemetry, entry_of, response_flag

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("plexus.sidecar.trace_export")

EXPORT_INTERVAL: Final = 1.0  # seconds between two hand-overs to the worker (the SDK's batch delay is 5 s)
MAX_QUEUED_BATCHES: Final = 16  # batches waiting for a slow exporter; more are dropped (memory stays capped)
CLOSE_TIMEOUT: Final = 3.0  # seconds the last export may take on stop (a collector that is down)
OTLP_TIMEOUT: Final = 5.0  # seconds per OTLP/HTTP request (the exporter's own default is 10)
DEFAULT_EXPORT: Final = "none"
SCOPE_NAME: Final = "plexus.sidecar"
_OTLP_MODULE: Final = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


class TraceExportError(PlexusError):
    """The span exporter cannot start: the message names ``--trace-export`` and why."""


def span_name(entry: RequestEntry) -> str:
    """Low-cardinality, as OpenTelemetry asks: the RPC path for gRPC (/pkg.Service/Method), else the verb
    (or RPC method) and the service (a raw HTTP path may carry ids)."""
    if entry.protocol == "grpc":
        return entry.path.lstrip("/") or entry.service
    if entry.protocol in _RPC_SYSTEMS and entry.path:
        return f"{entry.path}/{entry.method}"  # OpenTelemetry's $service/$method, the interface's name
    return f"{entry.method} {entry.service}"


# OpenTelemetry's ``rpc.system`` of the RPC protocols the sidecar proxies (Dubbo's is its registered value;
# SOFA RPC has none registered, so the framework's name).
_RPC_SYSTEMS: Final = {"bolt": "sofarpc", "dubbo": "apache_dubbo"}


def span_attributes(entry: RequestEntry, telemetry: Telemetry) -> dict[str, str | int]:
    """The span's attributes: OpenTelemetry's HTTP/RPC names where they exist, Envoy's tag names for the
    proxy's own (``guid:x-request-id``, ``response_flags``, ``upstream_address``), ``plexus.*`` for the
    rest."""
    attributes: dict[str, str | int] = {
        "http.method": entry.method,
        "http.target": entry.path,
        "url.path": entry.path,
        "http.status_code": entry.status,
        "response_flags": entry.flags or response_flag(entry.reason),
        "plexus.service": entry.service,
        "plexus.workload": telemetry.workload,
        "plexus.peer_workload": entry.peer_workload,
        "plexus.protocol": entry.protocol,
        "plexus.attempts": entry.attempts,
        "http.request_content_length": entry.request_bytes,
        "http.response_content_length": entry.response_bytes,
    }
    if entry.upstream:
        attributes["upstream_address"] = entry.upstream
    if entry.request_id:
        attributes["guid:x-request-id"] = entry.request_id
    if entry.authority:
        attributes["http.host"] = entry.authority
    if entry.user_agent:
        attributes["user_agent.original"] = entry.user_agent
    if entry.reason:
        attributes["plexus.reason"] = entry.reason
    system = _RPC_SYSTEMS.get(entry.protocol)
    if system is not None:
        attributes["rpc.system"] = system
        attributes["rpc.service"] = entry.path
        attributes["rpc.method"] = entry.method
    if entry.grpc_status:
        attributes["rpc.system"] = "grpc"
        with contextlib.suppress(ValueError):
            attributes["rpc.grpc.status_code"] = int(entry.grpc_status)
    return attributes


def make_resource(telemetry: Telemetry) -> Resource:
    """The sidecar as OpenTelemetry's resource (made once: it carries a random service.instance.id)."""
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": telemetry.workload, "service.namespace": telemetry.namespace})


def build_spans(
    entries: Sequence[RequestEntry], telemetry: Telemetry, resource: Resource | None = None
) -> list[ReadableSpan]:
    """OpenTelemetry SDK spans for sampled entries (in the worker thread: the SDK is not cheap)."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
    from opentelemetry.trace.status import Status, StatusCode

    if resource is None:
        resource = make_resource(telemetry)
    scope = InstrumentationScope(SCOPE_NAME)
    sampled = TraceFlags(TraceFlags.SAMPLED)
    spans: list[ReadableSpan] = []
    for entry in entries:
        if not entry.trace_id or not entry.span_id:
            continue  # a transport that did not trace the request: nothing to link it to
        trace_id = int(entry.trace_id, 16)
        context = SpanContext(trace_id, int(entry.span_id, 16), is_remote=False, trace_flags=sampled)
        parent = (
            SpanContext(trace_id, int(entry.parent_span_id, 16), is_remote=True, trace_flags=sampled)
            if entry.parent_span_id
            else None
        )
        start_ns = int(telemetry.wall(entry.start) * 1e9)
        spans.append(
            ReadableSpan(
                name=span_name(entry),
                context=context,
                parent=parent,
                resource=resource,
                attributes=span_attributes(entry, telemetry),
                kind=SpanKind.SERVER if entry.direction == INBOUND else SpanKind.CLIENT,
                status=Status(StatusCode.ERROR, entry.reason or None) if entry.failed else Status(),
                start_time=start_ns,
                end_time=start_ns + int(entry.duration_ms * 1e6),
                instrumentation_scope=scope,
            )
        )
    return spans


def span_json(span: ReadableSpan) -> dict[str, Any]:
    """One span as OTLP's JSON mapping names it (ids in hex, times in nanoseconds as strings)."""
    context = span.context
    assert context is not None  # build_spans always sets one
    parent = span.parent
    status = span.status
    return {
        "traceId": f"{context.trace_id:032x}",
        "spanId": f"{context.span_id:016x}",
        "parentSpanId": f"{parent.span_id:016x}" if parent is not None else "",
        "name": span.name,
        "kind": span.kind.name,
        "startTimeUnixNano": str(span.start_time),
        "endTimeUnixNano": str(span.end_time),
        "attributes": dict(span.attributes or {}),
        "status": {"code": status.status_code.name, "message": status.description or ""},
        "resource": dict(span.resource.attributes),
        "scope": span.instrumentation_scope.name if span.instrumentation_scope is not None else "",
    }


def make_exporter(kind: str, target: str) -> tuple[Callable[[], SpanExporter], Callable[[], None]]:
    """What makes the SDK exporter for a parsed ``--trace-export`` (in the worker thread, at the first
    batch: OpenTelemetry is imported only once there is a span to export, so an idle sidecar never maps it),
    and what releases what it holds if it is never made. What can be checked without OpenTelemetry is
    checked now: raises TraceExportError when the file cannot be opened or the OTLP exporter is not
    installed."""
    if kind == "otlp":
        if importlib.util.find_spec(_OTLP_MODULE) is None:  # (imports its parent packages only)
            raise TraceExportError(f"--trace-export otlp:{target}: {_OTLP_MODULE} is not installed")

        def otlp() -> SpanExporter:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(endpoint=target, timeout=OTLP_TIMEOUT)

        return otlp, _nothing
    if kind == "file":
        try:
            stream = open(target, "ab")  # noqa: SIM115 - held until the exporter's shutdown
        except OSError as exc:
            raise TraceExportError(
                f"--trace-export file:{target}: cannot open for writing: {exc.strerror or exc}"
            ) from None
        return (lambda: _json_file_exporter(stream)), stream.close
    raise TraceExportError(f"--trace-export: no exporter for {kind!r}")


def _nothing() -> None:
    pass


def _json_file_exporter(stream: IO[bytes]) -> SpanExporter:
    import orjson
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesSpanExporter(SpanExporter):
        """OTLP-shaped JSON, one span per line, appended to a file."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            try:
                stream.write(b"".join(orjson.dumps(span_json(span)) + b"\n" for span in spans))
                stream.flush()
            except (OSError, ValueError):
                return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            stream.close()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return JsonLinesSpanExporter()


class SpanExport:
    """Drains ``Telemetry.spans`` on a timer and exports them from a worker thread."""

    def __init__(
        self,
        telemetry: Telemetry,
        exporter: tuple[Callable[[], SpanExporter], Callable[[], None]],
        spec: str,
    ) -> None:
        self.telemetry = telemetry
        self._make, self._discard = exporter  # (make_exporter)
        self.exporter: SpanExporter | None = None  # made by the worker at the first batch
        self.spec = spec
        self._queue: queue.Queue[list[Queued] | None] = queue.Queue(MAX_QUEUED_BATCHES)
        self._thread = threading.Thread(target=self._work, name="plexus-span-export", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failing = False

    @classmethod
    def open(cls, spec: str | None, telemetry: Telemetry) -> SpanExport | None:
        """The exporter ``spec`` names (None: DEFAULT_EXPORT), or None for ``none``. Raises
        TraceExportError naming the flag."""
        try:
            kind, target = parse_trace_export(spec or DEFAULT_EXPORT)
        except ValueError as exc:
            raise TraceExportError(f"--trace-export: {exc}") from None
        if kind == "none":
            return None
        return cls(telemetry, make_exporter(kind, target), f"{kind}:{target}")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.telemetry.exporting_spans = True
        self._thread.start()
        self._timer = loop.call_later(EXPORT_INTERVAL, self._tick)

    def _tick(self) -> None:
        self.hand_over()
        if self._loop is not None:
            self._timer = self._loop.call_later(EXPORT_INTERVAL, self._tick)

    def hand_over(self) -> int:
        """Give what is queued now to the worker; returns the number of entries handed over."""
        telemetry = self.telemetry
        batch = telemetry.spans
        if not batch:
            return 0
        telemetry.spans = []
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            telemetry.spans_dropped += len(batch)
            return 0
        return len(batch)

    def _work(self) -> None:
        telemetry = self.telemetry
        resource: Resource | None = None
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            try:
                from opentelemetry.sdk.trace.export import SpanExportResult

                if self.exporter is None:
                    self.exporter = self._make()
                    resource = make_resource(telemetry)
                spans = build_spans(list(map(entry_of, batch)), telemetry, resource)
                result = self.exporter.export(spans)
                ok = result is SpanExportResult.SUCCESS
            except Exception:  # an exporter bug must not end the thread: count and go on
                log.exception("span export to %s raised", self.spec)
                spans, ok = [], False
            if ok:
                telemetry.spans_exported += len(spans)
                self._failing = False
            else:
                telemetry.spans_failed += len(batch)
                if not self._failing:
                    log.error("span export to %s failed; spans are lost until it works", self.spec)
                self._failing = True

    async def aclose(self) -> None:
        """Stop the timer, export what is left (waiting up to CLOSE_TIMEOUT), shut the exporter down."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
        self.telemetry.exporting_spans = False
        if not self._thread.is_alive():
            return
        self.hand_over()
        await asyncio.get_running_loop().run_in_executor(None, self._finish)

    def _finish(self) -> None:
        """In a thread: the end mark after the last batch, then wait for the worker (both bounded)."""
        try:
            self._queue.put(None, timeout=CLOSE_TIMEOUT)
        except queue.Full:
            log.error("span export to %s: still busy on stop; the last spans are lost", self.spec)
            return
        self._thread.join(CLOSE_TIMEOUT)
        if not self._thread.is_alive():
            if self.exporter is not None:
                self.exporter.shutdown()
            else:
                self._discard()

"""The access log (``--access-log PATH`` or ``-`` for stdout): one JSON line per request, Envoy's fields.

Off the hot path: a finished request only lands in ``Telemetry.access_log`` (a list; see
``plexus.proxy.telemetry``). A timer on the sidecar's loop swaps that list for an empty one every
``FLUSH_INTERVAL`` and formats and writes the batch at once (one ``write`` per batch; a file write of a batch
is short enough for the loop). ``close`` writes what is left. A write that fails (disk full, closed pipe)
loses that batch, counted in ``Telemetry.access_log_failed`` and logged once; the next batch tries again.

Fields, as Envoy's default access-log format names them in JSON (``start_time``, ``method``, ``path``,
``protocol``, ``response_code``, ``response_flags``, ``response_code_details``, ``bytes_received``,
``bytes_sent``, ``duration``, ``upstream_host``, ``upstream_cluster``, ``authority``, ``user_agent``,
``request_id``), plus the trace id, the direction and Plexus's own (``service``, ``workload``,
``peer_workload``, ``attempts``, ``grpc_status``, ``duration_ms``). A value the request did not have is null.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import IO, Any, Final

import orjson

from plexus.core.errors import PlexusError
from plexus.proxy.telemetry import NO_FLAGS, RequestEntry, Telemetry

log = logging.getLogger("plexus.sidecar.access_log")

FLUSH_INTERVAL: Final = 0.1  # seconds: lines appear within this; a batch per tick keeps writes few
STDOUT: Final = "-"

# Envoy's request protocol strings (%PROTOCOL%); Bolt and Dubbo keep their own names.
PROTOCOL_NAMES: Final = {"http": "HTTP/1.1", "grpc": "HTTP/2", "bolt": "bolt", "dubbo": "dubbo"}


class AccessLogError(PlexusError):
    """The access log cannot be opened: the message names ``--access-log`` and the path."""


def start_time(wall: float) -> str:
    """ISO 8601 in UTC with milliseconds, as Envoy writes %START_TIME%: 2026-11-26T04:18:00.123Z."""
    seconds = int(wall)
    return f"{_second(seconds)}.{int((wall - seconds) * 1000):03d}Z"


_seconds_cache: dict[int, str] = {}
_SECONDS_CACHED: Final = 64  # a batch spans 0.1 s: a few seconds at most; the cache is emptied past this


def _second(seconds: int) -> str:
    """The date and time of a whole second, formatted once per second (a batch shares a few)."""
    text = _seconds_cache.get(seconds)
    if text is None:
        if len(_seconds_cache) >= _SECONDS_CACHED:
            _seconds_cache.clear()
        text = _seconds_cache[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return text


def protocol_name(entry: RequestEntry) -> str:
    """Envoy's %PROTOCOL% (HTTP/1.1, HTTP/2), or the RPC protocol's own name (bolt, dubbo)."""
    if entry.http_version == "2":
        return "HTTP/2"
    return PROTOCOL_NAMES.get(entry.protocol, entry.protocol)


def response_code_details(entry: RequestEntry) -> str:
    """Envoy's %RESPONSE_CODE_DETAILS%: the Plexus reason when this hop failed or limited the request,
    ``downstream_remote_disconnect`` when the client left, else ``via_upstream``."""
    if entry.reason:
        return entry.reason
    if entry.status == 0:
        return "downstream_remote_disconnect"
    return "via_upstream"


def entry_record(entry: RequestEntry, telemetry: Telemetry) -> dict[str, Any]:
    """One request as an access-log object (what ``AccessLogWriter`` writes as a line)."""
    wall = entry.start + telemetry.loop_clock_offset  # Telemetry.wall, inlined: once per line
    seconds = int(wall)
    reason = entry.reason
    status = entry.status
    duration_ms = entry.duration_ms
    direction = entry.direction
    service = entry.service
    protocol = entry.protocol
    return {
        "start_time": f"{_second(seconds)}.{int((wall - seconds) * 1000):03d}Z",
        "method": entry.method,
        "path": entry.path,
        "protocol": "HTTP/2"
        if entry.http_version == "2"
        else PROTOCOL_NAMES.get(protocol, protocol),  # protocol_name(entry)
        "response_code": status,
        "response_flags": entry.flags or NO_FLAGS,
        # response_code_details(entry), inlined
        "response_code_details": reason or ("via_upstream" if status else "downstream_remote_disconnect"),
        "bytes_received": entry.request_bytes,
        "bytes_sent": entry.response_bytes,
        "duration": round(duration_ms),
        "upstream_host": entry.upstream or None,
        # Istio's cluster names read direction|port||host; Plexus's clusters are per service, not per port.
        "upstream_cluster": f"{direction}|||{service}",
        "authority": entry.authority or None,
        "user_agent": entry.user_agent or None,
        "request_id": entry.request_id or None,
        "trace_id": entry.trace_id or None,
        "direction": direction,
        "service": service,
        "workload": telemetry.workload,
        "peer_workload": entry.peer_workload,
        "attempts": entry.attempts,
        "grpc_status": entry.grpc_status or None,
        "duration_ms": round(duration_ms, 3),
    }


class AccessLogWriter:
    """Drains ``Telemetry.access_log`` into a file or stdout on a timer; ``open``, ``start``, ``close``."""

    def __init__(self, telemetry: Telemetry, target: str, stream: IO[bytes], owned: bool) -> None:
        self.telemetry = telemetry
        self.target = target
        self._stream = stream
        self._owned = owned  # a file we opened (closed by close); stdout is left open
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False

    @classmethod
    def open(cls, target: str, telemetry: Telemetry) -> AccessLogWriter:
        """Open ``target`` for appending (``-``: stdout). Raises AccessLogError naming the flag and path."""
        if target == STDOUT:
            return cls(telemetry, target, sys.stdout.buffer, owned=False)
        try:
            stream = open(target, "ab")  # noqa: SIM115 - held for the sidecar's life, closed by close
        except OSError as exc:
            raise AccessLogError(
                f"--access-log {target}: cannot open for writing: {exc.strerror or exc}"
            ) from None
        return cls(telemetry, target, stream, owned=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Turn the queue on and flush it every FLUSH_INTERVAL on ``loop``."""
        self._loop = loop
        if self.telemetry.access_log is None:
            self.telemetry.access_log = []
        self._timer = loop.call_later(FLUSH_INTERVAL, self._tick)

    def _tick(self) -> None:
        self.flush()
        if self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self._tick)

    def flush(self) -> int:
        """Write what is queued now; returns the number of lines written."""
        telemetry = self.telemetry
        batch = telemetry.access_log
        if not batch:
            return 0
        telemetry.access_log = []
        dumps = orjson.dumps
        data = b"\n".join([dumps(entry_record(entry, telemetry)) for entry in batch]) + b"\n"
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            telemetry.access_log_failed += len(batch)
            if not self._failing:
                log.error("access log %s: write failed, lines are lost until it works: %s", self.target, exc)
            self._failing = True
            return 0
        self._failing = False
        telemetry.access_log_written += len(batch)
        return len(batch)

    def close(self) -> None:
        """Stop the timer, write what is left, stop queueing, close the file."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
        self.flush()
        self.telemetry.access_log = None
        if self._owned:
            self._stream.close()

"""Access-log lines: one JSON object per request, Envoy's fields, formatted sans-IO (the writer in
``plexus.sidecar.access_log`` only joins and writes them).

Two ways in. ``entry_line`` formats any ``RequestEntry`` (HTTP/2, gRPC, Bolt, Dubbo); the writer calls it for
the entries it finds queued. ``http1_line`` formats an HTTP/1.1 request from the raw bytes its exchange
still holds, at the moment it ends, as Envoy formats its lines on the worker that served the request: the
bytes are hot in the CPU caches then, nothing needs decoding, and the queue holds bytes (which the garbage
collector never scans) instead of keeping every entry alive until the next flush. Both build a line from
parts that repeat from request to request (the request line, the outcome, the client, the upstream with its
route and peer), formatted once with orjson and then looked up: what varies per request is only numbers,
the start time and the ids. An HTTP/1.1 line is queued as its pieces (the parts, one formatted piece of
numbers, the ids sliced from the trace lines), which the writer joins with all the others in one call.
bench/RESULTS.md has what a line costs.

Fields, named as Envoy's default JSON access-log format names them: ``start_time``, ``method``, ``path``,
``protocol``, ``response_code``, ``response_flags``, ``response_code_details``, ``bytes_received``,
``bytes_sent``, ``duration``, ``authority``, ``user_agent``, ``request_id``, ``trace_id``,
``upstream_host``, ``upstream_cluster``; and Plexus's: ``duration_ms``, ``direction``, ``service``,
``workload``, ``peer_workload``, ``attempts``, ``grpc_status``. A value the request did not have is null.
The order keeps the parts that repeat from request to request together.
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson

from plexus.proxy.telemetry import NO_FLAGS, RequestEntry, Telemetry

# Envoy's request protocol strings (%PROTOCOL%); Bolt and Dubbo keep their own names.
PROTOCOL_NAMES: Final = {"http": "HTTP/1.1", "grpc": "HTTP/2", "bolt": "bolt", "dubbo": "dubbo"}
VIA_UPSTREAM: Final = "via_upstream"  # Envoy's %RESPONSE_CODE_DETAILS% when the upstream answered
DOWNSTREAM_DISCONNECT_DETAILS: Final = "downstream_remote_disconnect"

_seconds_cache: dict[int, str] = {}
_SECONDS_CACHED: Final = 64  # a flush spans 0.1 s: a few seconds at most; the cache is emptied past this


def second_text(seconds: int) -> str:
    """The date and time of a whole Unix second, as %START_TIME% starts: 2026-11-26T04:18:00. Formatted
    once per second (every line of that second shares it)."""
    text = _seconds_cache.get(seconds)
    if text is None:
        if len(_seconds_cache) >= _SECONDS_CACHED:
            _seconds_cache.clear()
        text = _seconds_cache[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return text


_seconds_bytes: dict[int, bytes] = {}


def _second_bytes(seconds: int) -> bytes:
    text = _seconds_bytes.get(seconds)
    if text is None:
        if len(_seconds_bytes) >= _SECONDS_CACHED:
            _seconds_bytes.clear()
        text = _seconds_bytes[seconds] = second_text(seconds).encode()
    return text


# Parts of a line that repeat from request to request, each formatted once (orjson: always valid JSON) and
# then found by its key. A cache is emptied when it reaches _PARTS_CACHED (paths can be many; the rest few).
_outcome_parts: dict[OutcomeKey, bytes] = {}
_PARTS_CACHED: Final = 4096


def _remember(cache: dict[Any, bytes], key: Any, part: bytes) -> bytes:
    if len(cache) >= _PARTS_CACHED:
        cache.clear()
    cache[key] = part
    return part


def request_part(method: str, path: str, protocol: str, authority: str, user_agent: str) -> bytes:
    """``"method":..,"path":..,"protocol":..,"authority":..,"user_agent":..,``."""
    fields = {
        "method": method or None,
        "path": path or None,
        "protocol": protocol,
        "authority": authority or None,
        "user_agent": user_agent or None,
    }
    return orjson.dumps(fields)[1:-1] + b","


OutcomeKey = tuple[int, str, str, int, str, str, str, str, str]


def outcome_key(entry: RequestEntry, workload: str) -> OutcomeKey:
    """What outcome_part formats for ``entry``, in its parameters' order (and its cache's key)."""
    return (
        entry.status,
        entry.flags,
        entry.reason,
        entry.attempts,
        entry.upstream,
        entry.direction,
        entry.service,
        workload,
        entry.peer_workload,
    )


def outcome_part(
    status: int,
    flags: str,
    reason: str,
    attempts: int,
    upstream: str,
    direction: str,
    service: str,
    workload: str,
    peer: str,
) -> bytes:
    """``"response_code":..,"response_flags":..,"response_code_details":..,"attempts":..,"upstream_host":..,
    "upstream_cluster":..,"direction":..,"service":..,"workload":..,"peer_workload":..,``: how the request
    ended and where it went (a sidecar sees few of these: 200 via_upstream to each upstream, a handful of
    statuses and reasons), remembered. Istio names clusters direction|port||host; Plexus's clusters are per
    service, not per port."""
    key = (status, flags, reason, attempts, upstream, direction, service, workload, peer)
    part = _outcome_parts.get(key)
    if part is None:
        fields = {
            "response_code": status,
            "response_flags": flags or NO_FLAGS,
            "response_code_details": reason or (VIA_UPSTREAM if status else DOWNSTREAM_DISCONNECT_DETAILS),
            "attempts": attempts,
            "upstream_host": upstream or None,
            "upstream_cluster": f"{direction}|||{service}",
            "direction": direction,
            "service": service,
            "workload": workload,
            "peer_workload": peer,
        }
        part = _remember(_outcome_parts, key, orjson.dumps(fields)[1:-1] + b",")
    return part


def entry_line(entry: RequestEntry, telemetry: Telemetry) -> str:
    """Any request entry as one access-log line (JSON, no newline)."""
    wall = entry.start + telemetry.loop_clock_offset  # Telemetry.wall, inlined: once per line
    seconds = int(wall)
    duration_ms = entry.duration_ms
    protocol = entry.protocol
    grpc_status = entry.grpc_status
    request = request_part(
        entry.method,
        entry.path,
        "HTTP/2" if entry.http_version == "2" else PROTOCOL_NAMES.get(protocol, protocol),
        entry.authority,
        entry.user_agent,
    )
    outcome = outcome_part(*outcome_key(entry, telemetry.workload))
    ids = {"request_id": entry.request_id or None, "trace_id": entry.trace_id or None}
    return "".join(
        (
            '{"start_time":"',
            second_text(seconds),
            f'.{int((wall - seconds) * 1000):03d}Z",',
            request.decode(),
            outcome.decode(),
            f'"bytes_received":{entry.request_bytes},"bytes_sent":{entry.response_bytes},',
            f'"duration":{round(duration_ms)},"duration_ms":{duration_ms:.3f},',
            orjson.dumps(ids)[1:-1].decode(),
            ',"grpc_status":',
            f'"{grpc_status}"' if grpc_status else "null",
            "}",
        )
    )


_REQUEST_ID_START: Final = len(b"x-request-id: ")
_TRACE_LINES_TAIL: Final = len(b"traceparent: 00-") + 32 + 1 + 16 + 1 + 2 + 2  # (tracing.fresh_lines' shape)
# A line is queued as pieces (http1_line), joined by the writer with every other queued line at once: no
# bytes object per line (a line is over pymalloc's 512 bytes: each would be a malloc and a free), and only its
# numbers are formatted per request. (``duration`` is Envoy's whole milliseconds: %d of the float + 0.5
# rounds it without an int() call.)
_NUMBERS: Final = b'"bytes_received":%d,"bytes_sent":%d,"duration":%d,"duration_ms":%.3f,"request_id":"'
_NUMBERS_JSON: Final = _NUMBERS[:-1]  # (then the id as JSON: null, or a string with its escapes)
_TRACE_ID: Final = b'","trace_id":"'
_TAIL: Final = b'","grpc_status":null}\n'
_TRACE_ID_JSON: Final = b',"trace_id":'
_TAIL_JSON: Final = b',"grpc_status":null}\n'
# The last line's start: its loop time, its Unix milliseconds and their piece (requests that end in one turn
# of the loop share the first; those of one millisecond the second).
_last_start: list[Any] = [-1.0, 0, b""]


def _http1_part(key: tuple[Any, ...], entry: RequestEntry, telemetry: Telemetry) -> bytes:
    """An HTTP/1.1 line's request and outcome parts together (request_part + outcome_part), remembered in
    ``telemetry.http1_parts`` (per sidecar: the workload is in the part, not in the key)."""
    method, path, host, agent = key[:4]
    request = request_part(
        method.decode("latin-1"),
        path.decode("latin-1"),
        "HTTP/1.1",
        host.decode("latin-1") if host is not None else "",
        agent.decode("latin-1") if agent is not None else "",
    )
    outcome = outcome_part(*outcome_key(entry, telemetry.workload))
    return _remember(telemetry.http1_parts, key, request + outcome)


def http1_line(
    telemetry: Telemetry,
    entry: RequestEntry,
    method: bytes,
    path: bytes,
    host: bytes | None,
    user_agent: bytes | None,
    trace_lines: bytes,
    request_id: str | None,
    trace_id: str | None,
) -> tuple[bytes, ...]:
    """An HTTP/1.1 request's line, newline included, as pieces to join (``Telemetry.observe`` queues them),
    from its raw bytes (``entry`` holds the rest; none of its lazy fields is read). The ids come from
    ``trace_lines`` (the block tracing.fresh_lines/follow_lines wrote: ids that need no escaping) unless
    ``request_id``/``trace_id`` are given (a request whose trace began on the general path)."""
    last = _last_start
    started = entry.start
    if started == last[0]:
        start = last[2]
    else:  # a new turn of the loop: to the millisecond, which it often shares with the last line
        millis = int((started + telemetry.loop_clock_offset) * 1000)
        if millis == last[1]:
            start = last[2]
        else:
            seconds, ms = divmod(millis, 1000)
            start = b'{"start_time":"%b.%03dZ",' % (_second_bytes(seconds), ms)
        last[:] = (started, millis, start)
    # Everything but numbers, the start and the ids, found by one key.
    key = (
        method,
        path,
        host,
        user_agent,
        entry.status,
        entry.reason,
        entry.flags,
        entry.upstream,
        entry.peer_workload,
        entry.attempts,
        entry.service,
        entry.direction,
    )
    parts = telemetry.http1_parts.get(key) or _http1_part(key, entry, telemetry)
    duration_ms = entry.duration_ms
    if request_id is None and trace_lines:
        return (
            start,
            parts,
            _NUMBERS % (entry.request_bytes, entry.response_bytes, duration_ms + 0.5, duration_ms),
            trace_lines[_REQUEST_ID_START : -_TRACE_LINES_TAIL - 2],
            _TRACE_ID,
            trace_lines[-54:-22],
            _TAIL,
        )
    return (
        start,
        parts,
        _NUMBERS_JSON % (entry.request_bytes, entry.response_bytes, duration_ms + 0.5, duration_ms),
        orjson.dumps(request_id or None),
        _TRACE_ID_JSON,
        orjson.dumps(trace_id or None),
        _TAIL_JSON,
    )

"""Access-log lines: one JSON object per request, Envoy's fields, formatted sans-IO (the writer in
``plexus.sidecar.access_log`` only joins and writes them).

Two ways in. ``entry_line`` formats any ``RequestEntry`` (HTTP/2, gRPC, Bolt, Dubbo, and HTTP/1.1 requests
with text that needs escaping); the writer calls it for the entries it finds queued. ``http1_line`` formats
an HTTP/1.1 request from the raw bytes its exchange still holds, at the moment it ends, as Envoy formats
its lines on the worker that served the request: the bytes are hot in the CPU caches then, nothing needs
decoding, and the queue holds a bytes object (which the garbage collector never scans) instead of keeping
every entry alive until the next flush. Measured on the two-hop in-process harness, a deferred line cost
about 56,000 instructions (filling the entry's lazy fields, a dict, orjson, cold objects); see
bench/RESULTS.md for what the direct one costs.

Fields, named as Envoy's default JSON access-log format names them: ``start_time``, ``method``, ``path``,
``protocol``, ``response_code``, ``response_flags``, ``response_code_details``, ``bytes_received``,
``bytes_sent``, ``duration``, ``authority``, ``user_agent``, ``request_id``, ``trace_id``,
``upstream_host``, ``upstream_cluster``; and Plexus's: ``duration_ms``, ``direction``, ``service``,
``workload``, ``peer_workload``, ``attempts``, ``grpc_status``. A value the request did not have is null.
The order keeps the parts that repeat from request to request (an outcome; an upstream with its route and
peer) together, so each is formatted once and reused.
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


def _json_text(value: str) -> str:
    """``value`` as a JSON string ("" -> null): quoted as it is when it is printable ASCII without quotes or
    backslashes (paths, hosts, ids nearly always are), else through orjson."""
    if not value:
        return "null"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return orjson.dumps(value).decode()


def entry_line(entry: RequestEntry, telemetry: Telemetry) -> str:
    """Any request entry as one access-log line (JSON, no newline)."""
    wall = entry.start + telemetry.loop_clock_offset  # Telemetry.wall, inlined: once per line
    seconds = int(wall)
    duration_ms = entry.duration_ms
    protocol = entry.protocol
    grpc_status = entry.grpc_status
    return "".join(
        (
            '{"start_time":"',
            second_text(seconds),
            f".{int((wall - seconds) * 1000):03d}Z",
            '","method":',
            _json_text(entry.method),
            ',"path":',
            _json_text(entry.path),
            ',"protocol":"',
            "HTTP/2" if entry.http_version == "2" else PROTOCOL_NAMES.get(protocol, protocol),
            '",',
            outcome_part(entry.status, entry.flags, entry.reason).decode(),
            '"bytes_received":',
            str(entry.request_bytes),
            ',"bytes_sent":',
            str(entry.response_bytes),
            ',"duration":',
            str(round(duration_ms)),
            ',"duration_ms":',
            f"{duration_ms:.3f}",
            ',"authority":',
            _json_text(entry.authority),
            ',"user_agent":',
            _json_text(entry.user_agent),
            ',"request_id":',
            _json_text(entry.request_id),
            ',"trace_id":',
            _json_text(entry.trace_id),
            ",",
            upstream_part(
                entry.upstream, entry.direction, entry.service, telemetry.workload, entry.peer_workload
            ).decode(),
            '"attempts":',
            str(entry.attempts),
            ',"grpc_status":',
            f'"{grpc_status}"' if grpc_status else "null",
            "}",
        )
    )


_outcome_parts: dict[tuple[int, str, str], bytes] = {}
_upstream_parts: dict[tuple[str, str, str, str, str], bytes] = {}
_PARTS_CACHED: Final = 4096  # distinct outcomes, or upstreams x peers; a cache is emptied past this


def outcome_part(status: int, flags: str, reason: str) -> bytes:
    """``"response_code":..,"response_flags":..,"response_code_details":..,`` for one outcome, formatted once
    (a sidecar sees few: 200 via_upstream, a handful of statuses and reasons)."""
    key = (status, flags, reason)
    part = _outcome_parts.get(key)
    if part is None:
        if len(_outcome_parts) >= _PARTS_CACHED:
            _outcome_parts.clear()
        fields = {
            "response_code": status,
            "response_flags": flags or NO_FLAGS,
            "response_code_details": reason or (VIA_UPSTREAM if status else DOWNSTREAM_DISCONNECT_DETAILS),
        }
        part = _outcome_parts[key] = orjson.dumps(fields)[1:-1] + b","
    return part


def upstream_part(upstream: str, direction: str, service: str, workload: str, peer: str) -> bytes:
    """``"upstream_host":..,"upstream_cluster":..,"direction":..,"service":..,"workload":..,
    "peer_workload":..,`` for one route, upstream and peer, formatted once. Istio names clusters
    direction|port||host; Plexus's clusters are per service, not per port."""
    key = (upstream, direction, service, workload, peer)
    part = _upstream_parts.get(key)
    if part is None:
        if len(_upstream_parts) >= _PARTS_CACHED:
            _upstream_parts.clear()
        fields = {
            "upstream_host": upstream or None,
            "upstream_cluster": f"{direction}|||{service}",
            "direction": direction,
            "service": service,
            "workload": workload,
            "peer_workload": peer,
        }
        part = _upstream_parts[key] = orjson.dumps(fields)[1:-1] + b","
    return part


# The bytes a JSON string holds as they are: printable ASCII but the quote and the backslash. A request
# whose text has any other byte (a control, a quote, a backslash, or Latin-1 that JSON must carry as UTF-8)
# gets its line the entry_line way.
_PLAIN: Final = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\')
_REQUEST_ID_START: Final = len(b"x-request-id: ")
_TRACE_LINES_TAIL: Final = len(b"traceparent: 00-") + 32 + 1 + 16 + 1 + 2 + 2  # (tracing.fresh_lines' shape)
# One formatting operation per line (every slot a plain value or a ready-made JSON text).
_LINE: Final = (
    b'{"start_time":"%bZ","method":"%b","path":"%b","protocol":"HTTP/1.1",%b"bytes_received":%d,'
    b'"bytes_sent":%d,"duration":%d,"duration_ms":%.3f,"authority":%b,"user_agent":%b,"request_id":%b,'
    b'"trace_id":%b,%b"attempts":%d,"grpc_status":null}'
)
_NULL: Final = b"null"
_last_start: list[Any] = [0, b""]  # (Unix milliseconds, their start_time text): the last line's


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
) -> bytes | None:
    """An HTTP/1.1 request's line from its raw bytes (``entry`` holds the rest; none of its lazy fields is
    read); None when a value needs escaping (then the entry goes to the queue instead). The ids come from
    ``trace_lines`` (the block tracing.fresh_lines/follow_lines wrote) unless ``request_id``/``trace_id``
    are given (a request whose trace began on the general path)."""
    if request_id is not None:
        rid = request_id.encode()
        tid = (trace_id or "").encode()
    elif trace_lines:
        rid = trace_lines[_REQUEST_ID_START : -_TRACE_LINES_TAIL - 2]
        tid = trace_lines[-54:-22]
    else:
        rid = tid = b""
    if b"".join((method, path, rid, host or b"", user_agent or b"")).translate(None, _PLAIN):
        return None
    # The start time to the millisecond: requests that share one (several, under load) share its text.
    millis = int((entry.start + telemetry.loop_clock_offset) * 1000)
    if millis == _last_start[0]:
        start = _last_start[1]
    else:
        seconds, ms = divmod(millis, 1000)
        start = b"%b.%03d" % (_second_bytes(seconds), ms)
        _last_start[:] = (millis, start)
    duration_ms = entry.duration_ms
    outcome = _outcome_parts.get((entry.status, entry.flags, entry.reason))
    if outcome is None:
        outcome = outcome_part(entry.status, entry.flags, entry.reason)
    route = (entry.upstream, entry.direction, entry.service, telemetry.workload, entry.peer_workload)
    upstream = _upstream_parts.get(route)
    if upstream is None:
        upstream = upstream_part(*route)
    return _LINE % (
        start,
        method,
        path,
        outcome,
        entry.request_bytes,
        entry.response_bytes,
        int(duration_ms + 0.5),
        duration_ms,
        b'"' + host + b'"' if host else _NULL,
        b'"' + user_agent + b'"' if user_agent else _NULL,
        b'"' + rid + b'"' if rid else _NULL,
        b'"' + tid + b'"' if tid else _NULL,
        upstream,
        entry.attempts,
    )

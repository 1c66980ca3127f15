"""Access-log lines: one JSON object per request, Envoy's fields, formatted sans-IO by ``format_batch``,
which the writer in ``plexus.sidecar.access_log`` calls on its timer, off the hot path, for every request
queued since its last run (then it only writes the bytes).

Two kinds of queued request. A ``RequestEntry`` (Bolt, Dubbo, and a request that a sink needed as an entry
at once: a failure, a tapped one, an exported span) is formatted by ``entry_line``. An HTTP/1.1, HTTP/2 or
gRPC request is its recent-ring tuple (plexus.proxy.outcomes): the way it ended (its ``Outcome``) and its
numbers, nothing decoded. Both build a line from parts that repeat from request to request (the request
line, the outcome, the client, the upstream with its route and peer), formatted once with orjson and then
looked up; for a tuple, what varies per line is only the start time, the duration's piece (looked up by its
microseconds) and the ids, sliced from the trace lines block its exchange forwarded (or taken from its
TraceStart). The lines' pieces are joined in one call. bench/RESULTS.md has what a line costs.

Fields, named as Envoy's default JSON access-log format names them: ``start_time``, ``method``, ``path``,
``protocol``, ``response_code``, ``response_flags``, ``response_code_details``, ``bytes_received``,
``bytes_sent``, ``duration``, ``authority``, ``user_agent``, ``request_id``, ``trace_id``,
``upstream_host``, ``upstream_cluster``; and Plexus's: ``workload``, ``peer_workload``, ``attempts``,
``grpc_status``. A value the request did not have is null. The order keeps the parts that repeat from request
to request together.

What is left out, because a line costs the sidecar in proportion to its bytes (bench/RESULTS.md: the file's
writes, not the formatting, are most of the access log's cost): the hop's direction and service, which
``upstream_cluster`` already says in Istio's form (``outbound|||reviews``: its first and last parts, as
``plexus explain --log`` reads them), and a duration finer than Envoy's whole milliseconds, which the loop's
clock does not have (uvloop's ``loop.time()`` counts milliseconds).

A TCP connection is one entry too, written when it closes (as Envoy's TCP proxy logs one): protocol
``tcp``, response_code 0, no method, path or ids, the duration and bytes of the whole connection, and
``response_code_details`` null unless no upstream took it (then the reason, with UF or UH).
"""

from __future__ import annotations

import struct
import time
from typing import Any, Final

import orjson

from plexus.core import speedups
from plexus.proxy.telemetry import NO_FLAGS, RequestEntry, Telemetry
from plexus.proxy.tracing import TraceStart

# Envoy's request protocol strings (%PROTOCOL%); Bolt and Dubbo keep their own names.
PROTOCOL_NAMES: Final = {"http": "HTTP/1.1", "grpc": "HTTP/2", "bolt": "bolt", "dubbo": "dubbo", "tcp": "tcp"}
TCP: Final = "tcp"  # a TCP connection's entry: one line per connection (plexus.transport.tcp_proxy)
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
    "upstream_cluster":..,"workload":..,"peer_workload":..,``: how the request
    ended and where it went (a sidecar sees few of these: 200 via_upstream to each upstream, a handful of
    statuses and reasons), remembered. Istio names clusters direction|port||host; Plexus's clusters are per
    service, not per port."""
    key = (status, flags, reason, attempts, upstream, direction, service, workload, peer)
    part = _outcome_parts.get(key)
    if part is None:
        details = reason or (VIA_UPSTREAM if status else DOWNSTREAM_DISCONNECT_DETAILS)
        part = _remember(_outcome_parts, key, _outcome_json(key, details))
    return part


def _outcome_json(key: OutcomeKey, details: str | None) -> bytes:
    """outcome_part's JSON for ``key`` (outcome_key's fields), with ``details`` for its reason."""
    status, flags, _, attempts, upstream, direction, service, workload, peer = key
    fields = {
        "response_code": status,
        "response_flags": flags or NO_FLAGS,
        "response_code_details": details,
        "attempts": attempts,
        "upstream_host": upstream or None,
        "upstream_cluster": f"{direction}|||{service}",
        "workload": workload,
        "peer_workload": peer,
    }
    return orjson.dumps(fields)[1:-1] + b","


def _connection_outcome_part(entry: RequestEntry, workload: str) -> bytes:
    """outcome_part for a TCP connection's entry (plexus.transport.tcp_proxy): no response, so no
    response_code_details but a reason (UF, UH). Not remembered: connections are few next to requests."""
    return _outcome_json(outcome_key(entry, workload), entry.reason or None)


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
    if protocol == TCP:
        outcome = _connection_outcome_part(entry, telemetry.workload)
    else:
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
            duration_piece(duration_ms)[: -len(b'"request_id":"')].decode(),
            orjson.dumps(ids)[1:-1].decode(),
            ',"grpc_status":',
            f'"{grpc_status}"' if grpc_status else "null",
            "}",
        )
    )


# Where the ids are in a block of trace lines (tracing.fresh_lines' shape:
# "x-request-id: ID\r\ntraceparent: 00-TRACE-SPAN-FLAGS\r\n").
_REQUEST_ID_AT: Final = slice(len(b"x-request-id: "), -len(b"\r\ntraceparent: 00-") - 32 - 1 - 16 - 1 - 2 - 2)
_TRACE_ID_AT: Final = slice(-(32 + 1 + 16 + 1 + 2 + 2), -(1 + 16 + 1 + 2 + 2))
# An HTTP/1.1 line is pieces, joined with every other line of the batch at once: no bytes object per line (a
# line is over pymalloc's 512 bytes: each would be a malloc and a free). What varies per request is looked
# up, not formatted, where it repeats: the sizes after the parts (``with_sizes``: a way of ending usually has
# one response size), the duration by its whole microseconds (``duration_piece``).
_SIZES: Final = b'"bytes_received":%d,"bytes_sent":%d,'
_DURATION: Final = b'"duration":%d,"request_id":"'
_DURATIONS_KEPT: Final = 5000  # microseconds: a hop within 5 ms finds its piece made
_duration_pieces: list[bytes | None] = [None] * _DURATIONS_KEPT
_ms_pieces: dict[int, bytes] = {}
_TRACE_ID: Final = b'","trace_id":"'
_TRACE_ID_JSON: Final = b',"trace_id":'


def with_sizes(parts: bytes, request_bytes: int, response_bytes: int) -> bytes:
    """``parts`` (request_parts) followed by ``"bytes_received":..,"bytes_sent":..,``."""
    return parts + _SIZES % (request_bytes, response_bytes)


def duration_piece(duration_ms: float) -> bytes:
    """``"duration":..,"request_id":"``: Envoy's whole milliseconds (rounded half up, from the whole
    microseconds), remembered per microsecond below _DURATIONS_KEPT."""
    us = int(duration_ms * 1000.0 + 0.5)
    if 0 <= us < _DURATIONS_KEPT:
        piece = _duration_pieces[us]
        if piece is None:  # (one piece per millisecond, shared by its microseconds' slots)
            ms = (us + 500) // 1000
            piece = _duration_pieces[us] = _ms_pieces.setdefault(ms, _DURATION % ms)
        return piece
    return _DURATION % ((us + 500) // 1000)


def request_parts(
    method: bytes,
    path: bytes,
    authority: bytes | None,
    user_agent: bytes | None,
    protocol: str,
    outcome: OutcomeKey,
) -> bytes:
    """A line's request and outcome parts together (request_part + outcome_part), from the raw bytes of the
    request: what every line of one way of ending shares (kept by plexus.proxy.outcomes). ``protocol``:
    Envoy's %PROTOCOL% (PROTOCOL_NAMES)."""
    request = request_part(
        method.decode("latin-1"),
        path.decode("latin-1"),
        protocol,
        authority.decode("latin-1") if authority is not None else "",
        user_agent.decode("latin-1") if user_agent is not None else "",
    )
    return request + outcome_part(*outcome)


def line_tails(grpc_status: str) -> tuple[bytes, bytes]:
    """A line's last piece after a trace id written as is, and after one written as JSON: the gRPC status,
    then the end of the object and the newline."""
    value = orjson.dumps(grpc_status or None)
    return b'","grpc_status":%b}\n' % value, b',"grpc_status":%b}\n' % value


def format_batch(telemetry: Telemetry, batch: list[RequestEntry | tuple[Any, ...]]) -> bytes:
    """The access log's queued requests as lines, newlines included: entries (entry_line), and requests
    queued as their ring tuples (``(outcome, started, duration_ms, request_bytes, response_bytes, wire,
    sampled)``, plexus.proxy.outcomes), formatted from what their outcome keeps (``_tuple_lines``). A batch
    of tuples only (the usual one) is formatted at once; entries split a batch into runs of tuples."""
    try:
        return _tuple_lines(telemetry, batch)  # type: ignore[arg-type]
    except _NotTuples:
        pass
    out: list[bytes] = []
    run: list[tuple[Any, ...]] = []
    for item in batch:
        if isinstance(item, RequestEntry):
            if run:
                out.append(_tuple_lines(telemetry, run))
                run = []
            out.append(entry_line(item, telemetry).encode() + b"\n")
        else:
            run.append(item)
    if run:
        out.append(_tuple_lines(telemetry, run))
    return b"".join(out)


class _NotTuples(Exception):
    """A batch holds entries too (format_batch splits it into runs)."""


# A line's pieces that repeat from line to line are worked out once per change, not per line: the start (per
# millisecond, from the second's part and the millisecond's), the parts with the sizes (per outcome), the
# duration's piece (duration_piece's table), the tail (the same for every HTTP/1.1 outcome). (Joining a line's
# repeating pieces into one head per change, or caching starts per clock value, costs more than it saves when
# the start changes from line to line, as under load.)
_MILLIS: Final = [b'%03dZ",' % ms for ms in range(1000)]  # a start's end: ".mmmZ", after the second's part
_NOT_A_TIME: Final = float("-inf")  # "no previous value" (a start or a duration compares unequal to it)
# The ids of trace lines blocks of one shape (fresh_lines; follow_lines with request ids of one length), taken
# by one struct.unpack per run of blocks: the request id and the trace id of each, and no slice per line.
_IDS_FORMAT: Final = "14x%ds18x32s22x"  # "x-request-id: " ID "\r\ntraceparent: 00-" TRACE "-SPAN-FLAGS\r\n"
_BLOCK_FIXED: Final = 14 + 18 + 32 + 22  # a block's length but its request id
_IDS_CHUNK: Final = 256  # blocks per unpack (its struct, and those of the powers of two below it, are kept)
_ids_structs: dict[tuple[int, int], struct.Struct] = {}
_IDS_STRUCTS_KEPT: Final = 64


def _ids_struct(id_length: int, blocks: int) -> struct.Struct:
    key = (id_length, blocks)
    unpacker = _ids_structs.get(key)
    if unpacker is None:
        if len(_ids_structs) >= _IDS_STRUCTS_KEPT:
            _ids_structs.clear()
        unpacker = _ids_structs[key] = struct.Struct((_IDS_FORMAT % id_length) * blocks)
    return unpacker


def _block_ids(blob: bytes, id_length: int, blocks: int) -> list[bytes]:
    """[request id, trace id, ...] of ``blocks`` joined blocks of one shape: chunks, then powers of two."""
    flat: list[bytes] = []
    width = _BLOCK_FIXED + id_length
    at = 0
    left = blocks
    while left:
        count = _IDS_CHUNK if left >= _IDS_CHUNK else 1 << (left.bit_length() - 1)
        flat += _ids_struct(id_length, count).unpack_from(blob, at)
        at += count * width
        left -= count
    return flat


def _tuple_lines(telemetry: Telemetry, items: list[tuple[Any, ...]]) -> bytes:
    """Ring tuples as lines (see format_batch). Raises _NotTuples when ``items`` holds an entry."""
    if _native_lines is not None:  # (C: the same lines, for batches of tuples with trace lines blocks)
        lines = _native_lines(items, telemetry.loop_clock_offset, _second_bytes)
        if lines is not None:
            return lines
    return _tuple_lines_py(telemetry, items)


_native_lines = speedups.access_lines


def _tuple_lines_py(telemetry: Telemetry, items: list[tuple[Any, ...]]) -> bytes:
    """_tuple_lines in Python: the reference, and every batch the C version leaves (an entry among the
    tuples, a TraceStart or no trace lines)."""
    starts: list[bytes] = []
    add_start = starts.append
    parts: list[bytes] = []
    add_parts = parts.append
    durations: list[bytes] = []
    add_duration = durations.append
    ids: list[Any] = []
    add_ids = ids.append
    offset = telemetry.loop_clock_offset
    table = _duration_pieces
    kept = _DURATIONS_KEPT
    millis_end = _MILLIS
    last_started = last_duration = _NOT_A_TIME
    last_millis: int | None = None
    last_seconds: int | None = None
    last_outcome: Any = None
    start = second = duration = tail = b""
    one_tail = True  # every line's outcome has the first line's tail
    try:
        for outcome, started, duration_ms, request_bytes, response_bytes, wire, _ in items:
            if started != last_started:
                last_started = started
                millis = int((started + offset) * 1000)
                if millis != last_millis:
                    last_millis = millis
                    seconds = millis // 1000
                    if seconds != last_seconds:
                        last_seconds = seconds
                        second = b'{"start_time":"%b.' % _second_bytes(seconds)
                    start = second + millis_end[millis - seconds * 1000]
            if duration_ms != last_duration:
                last_duration = duration_ms
                us = int(duration_ms * 1000.0 + 0.5)  # duration_piece, inlined for the usual case
                duration = (table[us] if 0 <= us < kept else None) or duration_piece(duration_ms)
            if outcome is not last_outcome:
                if last_outcome is None:
                    tail = outcome.tail
                elif outcome.tail != tail:
                    one_tail = False
                last_outcome = outcome
            add_start(start)
            add_parts(
                outcome.sized_parts
                if request_bytes == outcome.sized_request and response_bytes == outcome.sized_response
                else outcome.parts_sized(request_bytes, response_bytes)
            )
            add_duration(duration)
            add_ids(wire[2])
    except TypeError:
        if any(item.__class__ is not tuple for item in items):
            raise _NotTuples from None
        raise
    count = len(ids)
    if not count:
        return b""
    # Per line: start, parts with sizes, duration, request id, _TRACE_ID, trace id, tail.
    out = [_TRACE_ID] * (7 * count)
    out[0::7] = starts
    out[1::7] = parts
    out[2::7] = durations
    out[6::7] = [tail] * count if one_tail else [item[0].tail for item in items]
    for i in _place_ids(out, ids):  # a TraceStart or no ids: the ids as JSON (null, or strings with escapes)
        trace = ids[i] if isinstance(ids[i], TraceStart) else None
        at = 7 * i
        out[at + 2] = out[at + 2][:-1]  # (the duration's piece ends with '"request_id":"')
        out[at + 3] = orjson.dumps(trace.request_id or None if trace is not None else None)
        out[at + 4] = _TRACE_ID_JSON
        out[at + 5] = orjson.dumps(trace.trace_id or None if trace is not None else None)
        out[at + 6] = items[i][0].tail_json
    return b"".join(out)


def _place_ids(out: list[bytes], ids: list[Any]) -> list[int]:
    """Put each line's request id and trace id into ``out`` (sliced from its trace lines block); returns the
    lines whose ids are not such a block (a TraceStart, b"", None), left for the caller."""
    count = len(ids)
    try:
        blob = b"".join(ids)
    except TypeError:  # a TraceStart or None among them
        blob = b""
    width = len(ids[0]) if ids[0].__class__ is bytes else 0
    id_length = width - _BLOCK_FIXED
    if id_length >= 0 and len(blob) == count * width:
        # Every block has two CRs (request ids are printable, the rest hex): all 2 * count at the places of
        # blocks of one width means every block has that width and its request id that length.
        crs = b"\r" * count
        if blob[14 + id_length :: width] == crs and blob[width - 2 :: width] == crs:
            flat = _block_ids(blob, id_length, count)
            out[3::7] = flat[0::2]
            out[5::7] = flat[1::2]
            return []
    odd: list[int] = []
    request_ids: list[bytes] = []
    trace_ids: list[bytes] = []
    for i, block in enumerate(ids):
        if block.__class__ is bytes and block:
            request_ids.append(block[_REQUEST_ID_AT])
            trace_ids.append(block[_TRACE_ID_AT])
        else:
            request_ids.append(b"")
            trace_ids.append(b"")
            odd.append(i)
    out[3::7] = request_ids
    out[5::7] = trace_ids
    return odd

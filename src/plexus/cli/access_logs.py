"""`plexus explain --log FILE`: a request's hops read from sidecars' access logs, and the verdict on them.

Input: JSON lines as sidecars write them with ``--access-log`` (Envoy's / Istio's JSON access-log fields plus
Plexus's own). The fields read, each optional but ``request_id``:

- ``request_id`` (x-request-id), ``start_time`` (RFC 3339 like ``2026-11-26T04:30:00.123Z``, or Unix seconds),
  ``duration_ms`` (else Envoy's ``duration``, whole milliseconds);
- ``response_code`` (0: no response), ``grpc_status``, ``response_flags`` (Envoy's: ``UF``, ``UH,URX``;
  ``-`` none), ``response_code_details`` (Plexus's reason code, e.g. ``local_app_unavailable``; Envoy's
  ``via_upstream`` and ``downstream_remote_disconnect`` mean none);
- ``workload`` (the sidecar's), ``direction`` (``inbound`` | ``outbound``), ``service`` (else
  ``destination_service``), ``upstream_host``, ``peer_workload``, ``sidecar_id``; without ``direction`` or a
  service, ``upstream_cluster`` in Istio's form (``outbound|9080||reviews.default.svc.cluster.local``, or
  Plexus's ``outbound|||reviews``) gives them: its first and last parts;
- ``method``, ``path``, ``protocol``, ``authority``, ``bytes_received``, ``bytes_sent``, ``trace_id``,
  ``attempts``.

(``plexus.sidecar.access_log`` writes them.) Lines that are not JSON objects are skipped (a log may hold other
output); the count is reported. Hops are returned as ``RequestLine`` messages in path order (``path_order``:
callers before callees, not just by the sidecars' clocks), the shape the control plane's Explain answers with,
so one renderer and one verdict (``plexus.control.observe``) serve both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from plexus.control.observe import order_hops
from plexus.proto import control_pb2 as pb

NO_FLAGS: Final = "-"
INBOUND: Final = "inbound"
OUTBOUND: Final = "outbound"
UNKNOWN: Final = "unknown"  # a peer the hop could not know (Istio's word)
# response_code_details that are no Plexus reason: "via_upstream" (the upstream answered) and
# "downstream_remote_disconnect" (the client left; response_flags says DC) are Envoy's own words
NO_REASON: Final = frozenset({"", "-", "via_upstream", "downstream_remote_disconnect"})


@dataclass(frozen=True, slots=True)
class LogHops:
    hops: list[pb.RequestLine]  # oldest first
    lines_read: int
    lines_skipped: int  # not JSON objects


class LogReadError(Exception):
    """A log file cannot be read (missing, unreadable): names the file."""


def read_hops(paths: Sequence[Path], request_id: str) -> LogHops:
    """Every hop of ``request_id`` in the files, oldest first."""
    hops: list[pb.RequestLine] = []
    read = skipped = 0
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise LogReadError(f"cannot read access log {path}: {exc.strerror or exc}") from None
        for raw in text.splitlines():
            if not raw.strip():
                continue
            read += 1
            try:
                record = json.loads(raw)
            except ValueError:
                skipped += 1
                continue
            if not isinstance(record, dict):
                skipped += 1
                continue
            if str(record.get("request_id") or "") == request_id:
                hops.append(hop_from_record(record))
    return LogHops(path_order(hops), read, skipped)


def hop_from_record(record: dict[str, Any]) -> pb.RequestLine:
    """One access-log record as a ``RequestLine`` (missing or malformed fields left empty)."""
    details = _text(record, "response_code_details", "reason")
    cluster_direction, cluster_service = _cluster_parts(_text(record, "upstream_cluster"))
    return pb.RequestLine(
        start_unix=_start(record.get("start_time")),
        sidecar_id=_text(record, "sidecar_id", "node_id"),
        workload=_text(record, "workload", "source_workload"),
        direction=_text(record, "direction") or cluster_direction,
        service=_text(record, "service", "destination_service") or cluster_service,
        protocol=_text(record, "protocol", "request_protocol"),
        method=_text(record, "method"),
        path=_text(record, "path"),
        authority=_text(record, "authority"),
        status=_int(record.get("response_code")),
        grpc_status=_text(record, "grpc_status"),
        response_flags=_text(record, "response_flags") or NO_FLAGS,
        reason="" if details in NO_REASON else details,
        duration_ms=_float(record.get("duration_ms", record.get("duration"))),
        request_bytes=_int(record.get("bytes_received")),
        response_bytes=_int(record.get("bytes_sent")),
        upstream=_text(record, "upstream_host"),
        request_id=_text(record, "request_id"),
        trace_id=_text(record, "trace_id"),
        peer_workload=_text(record, "peer_workload"),
        attempts=_int(record.get("attempts")),
    )


def _cluster_parts(cluster: str) -> tuple[str, str]:
    """(direction, service) of an upstream cluster named as Istio names them, ``direction|port|subset|host``
    (Plexus: ``direction|||service``); ("", cluster) for a name of another form (the cluster as the
    service, as before)."""
    parts = cluster.split("|")
    if len(parts) == 4 and parts[0] in (INBOUND, OUTBOUND):
        return parts[0], parts[3]
    return "", cluster


def path_order(hops: Sequence[pb.RequestLine]) -> list[pb.RequestLine]:
    """The hops in the order the request went through them (``plexus.control.observe.order_hops``)."""
    return order_hops(hops)


def verdict(hops: Sequence[pb.RequestLine]) -> str:
    """The control plane's verdict (``plexus.control.observe.verdict``) on hops in path order: the same line
    whether the hops came from the sidecars or from their access logs."""
    from plexus.control.observe import verdict as control_verdict

    return control_verdict(path_order(hops))


def _text(record: dict[str, Any], *keys: str) -> str:
    for key in keys:
        value = record.get(key)
        if value not in (None, ""):
            return str(value)
    return ""


def _int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return number if number >= 0 else 0


def _float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number >= 0 else 0.0


def _start(value: Any) -> float:
    """Unix seconds from RFC 3339 text (``Z`` or an offset) or a number; 0 when neither."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return _float(value)
    return 0.0

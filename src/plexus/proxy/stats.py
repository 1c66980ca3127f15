"""Data-plane counters: plain ints and fixed-bucket histograms, rendered as Prometheus text on demand."""

from __future__ import annotations

import bisect
from typing import Final

# Request duration buckets in milliseconds (Istio's istio_request_duration_milliseconds buckets).
DURATION_BUCKETS_MS: Final = (
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
)


MAX_LABEL_SETS: Final = 1000  # distinct (reason, service) pairs kept before the rest count as "other"


class ServiceStats:
    """Per service and direction: requests by status class and a duration histogram."""

    __slots__ = ("buckets", "by_class", "direction", "duration_sum_ms", "service")

    def __init__(self, service: str, direction: str) -> None:
        self.service = service
        self.direction = direction  # "egress" or "ingress"
        self.by_class = [0, 0, 0, 0, 0, 0]  # index status // 100 (0 for a response never given)
        self.buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)  # last one is +Inf
        self.duration_sum_ms = 0.0

    def record(self, status: int, duration_ms: float) -> None:
        cls = status // 100
        self.by_class[cls if 0 < cls < 6 else 0] += 1
        self.buckets[bisect.bisect_left(DURATION_BUCKETS_MS, duration_ms)] += 1
        self.duration_sum_ms += duration_ms


class TcpStats:
    __slots__ = ("active", "bytes_received", "bytes_sent", "connections", "direction", "service")

    def __init__(self, service: str, direction: str) -> None:
        self.service = service
        self.direction = direction
        self.connections = 0
        self.active = 0
        self.bytes_received = 0  # from the downstream
        self.bytes_sent = 0  # to the downstream


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class DataPlaneStats:
    """Every data-plane counter of one sidecar."""

    def __init__(self) -> None:
        self.services: dict[tuple[str, str], ServiceStats] = {}
        self.tcp: dict[tuple[str, str], TcpStats] = {}
        self.local_replies: dict[tuple[str, str], int] = {}  # (reason, service)
        self.downstream_rejects: dict[str, int] = {}  # reason
        self.downstream_cx_total = 0
        self.downstream_cx_active = 0
        self.upstream_cx_total = 0
        self.upstream_cx_active = 0
        self.upstream_cx_connect_fail = 0
        self.upstream_rq_retry = 0

    def service(self, service: str, direction: str) -> ServiceStats:
        stats = self.services.get((service, direction))
        if stats is None:
            stats = self.services[(service, direction)] = ServiceStats(service, direction)
        return stats

    def tcp_service(self, service: str, direction: str) -> TcpStats:
        stats = self.tcp.get((service, direction))
        if stats is None:
            stats = self.tcp[(service, direction)] = TcpStats(service, direction)
        return stats

    def local_reply(self, reason: str, service: str) -> None:
        key = (reason, service)
        if key not in self.local_replies and len(self.local_replies) >= MAX_LABEL_SETS:
            key = (reason, "other")  # the Host of an unknown service is the client's choice: bound the labels
        self.local_replies[key] = self.local_replies.get(key, 0) + 1

    def downstream_reject(self, reason: str) -> None:
        self.downstream_rejects[reason] = self.downstream_rejects.get(reason, 0) + 1

    def render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("plexus_requests_total", "counter", "HTTP requests by service, direction and status class")
        for s in self.services.values():
            for cls, count in enumerate(s.by_class):
                if count:
                    code = f"{cls}xx" if cls else "none"
                    out.append(
                        f"plexus_requests_total"
                        f"{_labels(service=s.service, direction=s.direction, code_class=code)} {count}"
                    )
        family("plexus_request_duration_milliseconds", "histogram", "HTTP request duration")
        for s in self.services.values():
            running = 0
            for bound, count in zip((*DURATION_BUCKETS_MS, float("inf")), s.buckets, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(
                    f"plexus_request_duration_milliseconds_bucket"
                    f"{_labels(service=s.service, direction=s.direction, le=le)} {running}"
                )
            base = _labels(service=s.service, direction=s.direction)
            out.append(f"plexus_request_duration_milliseconds_sum{base} {s.duration_sum_ms:.3f}")
            out.append(f"plexus_request_duration_milliseconds_count{base} {running}")
        family("plexus_local_replies_total", "counter", "Responses the sidecar wrote itself, by reason")
        for (reason, service), count in sorted(self.local_replies.items()):
            out.append(f"plexus_local_replies_total{_labels(reason=reason, service=service)} {count}")
        family(
            "plexus_downstream_rejects_total", "counter", "Malformed downstream requests refused, by reason"
        )
        for reason, count in sorted(self.downstream_rejects.items()):
            out.append(f"plexus_downstream_rejects_total{_labels(reason=reason)} {count}")
        for name, value, help_text in (
            ("plexus_downstream_cx_total", self.downstream_cx_total, "Downstream connections accepted"),
            ("plexus_upstream_cx_total", self.upstream_cx_total, "Upstream connections opened"),
            (
                "plexus_upstream_cx_connect_fail_total",
                self.upstream_cx_connect_fail,
                "Upstream connects failed",
            ),
            (
                "plexus_upstream_rq_retry_total",
                self.upstream_rq_retry,
                "Requests retried on another endpoint",
            ),
        ):
            family(name, "counter", help_text)
            out.append(f"{name} {value}")
        for name, value, help_text in (
            ("plexus_downstream_cx_active", self.downstream_cx_active, "Downstream connections open"),
            ("plexus_upstream_cx_active", self.upstream_cx_active, "Upstream connections open"),
        ):
            family(name, "gauge", help_text)
            out.append(f"{name} {value}")
        family("plexus_tcp_connections_total", "counter", "Proxied TCP connections")
        for t in self.tcp.values():
            out.append(
                f"plexus_tcp_connections_total"
                f"{_labels(service=t.service, direction=t.direction)} {t.connections}"
            )
        family("plexus_tcp_received_bytes_total", "counter", "TCP bytes from the downstream")
        for t in self.tcp.values():
            out.append(
                f"plexus_tcp_received_bytes_total"
                f"{_labels(service=t.service, direction=t.direction)} {t.bytes_received}"
            )
        family("plexus_tcp_sent_bytes_total", "counter", "TCP bytes to the downstream")
        for t in self.tcp.values():
            out.append(
                f"plexus_tcp_sent_bytes_total"
                f"{_labels(service=t.service, direction=t.direction)} {t.bytes_sent}"
            )
        return "\n".join(out) + "\n"

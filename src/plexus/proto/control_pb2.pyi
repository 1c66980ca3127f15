from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Node(_message.Message):
    __slots__ = ("id", "workload", "zone", "unit", "sidecar_version", "consumes", "provides", "applied_version", "addresses")
    ID_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    SIDECAR_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONSUMES_FIELD_NUMBER: _ClassVar[int]
    PROVIDES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    id: str
    workload: str
    zone: str
    unit: str
    sidecar_version: str
    consumes: _containers.RepeatedScalarFieldContainer[str]
    provides: _containers.RepeatedScalarFieldContainer[str]
    applied_version: int
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., workload: _Optional[str] = ..., zone: _Optional[str] = ..., unit: _Optional[str] = ..., sidecar_version: _Optional[str] = ..., consumes: _Optional[_Iterable[str]] = ..., provides: _Optional[_Iterable[str]] = ..., applied_version: _Optional[int] = ..., addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("version", "nonce", "accepted", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: int
    nonce: str
    accepted: bool
    error: str
    def __init__(self, version: _Optional[int] = ..., nonce: _Optional[str] = ..., accepted: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class TrafficSummary(_message.Message):
    __slots__ = ("service", "direction", "requests", "errors", "duration_buckets", "duration_sum_ms")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    DURATION_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SUM_MS_FIELD_NUMBER: _ClassVar[int]
    service: str
    direction: str
    requests: int
    errors: int
    duration_buckets: _containers.RepeatedScalarFieldContainer[int]
    duration_sum_ms: float
    def __init__(self, service: _Optional[str] = ..., direction: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., duration_buckets: _Optional[_Iterable[int]] = ..., duration_sum_ms: _Optional[float] = ...) -> None: ...

class EdgeSummary(_message.Message):
    __slots__ = ("direction", "source_workload", "destination_service", "destination_workload", "protocol", "requests", "errors", "duration_buckets", "duration_sum_ms", "mtls")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    DURATION_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SUM_MS_FIELD_NUMBER: _ClassVar[int]
    MTLS_FIELD_NUMBER: _ClassVar[int]
    direction: str
    source_workload: str
    destination_service: str
    destination_workload: str
    protocol: str
    requests: int
    errors: int
    duration_buckets: _containers.RepeatedScalarFieldContainer[int]
    duration_sum_ms: float
    mtls: bool
    def __init__(self, direction: _Optional[str] = ..., source_workload: _Optional[str] = ..., destination_service: _Optional[str] = ..., destination_workload: _Optional[str] = ..., protocol: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., duration_buckets: _Optional[_Iterable[int]] = ..., duration_sum_ms: _Optional[float] = ..., mtls: _Optional[bool] = ...) -> None: ...

class PathSummary(_message.Message):
    __slots__ = ("service", "direction", "method", "path", "requests", "errors", "duration_buckets", "duration_sum_ms")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    DURATION_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SUM_MS_FIELD_NUMBER: _ClassVar[int]
    service: str
    direction: str
    method: str
    path: str
    requests: int
    errors: int
    duration_buckets: _containers.RepeatedScalarFieldContainer[int]
    duration_sum_ms: float
    def __init__(self, service: _Optional[str] = ..., direction: _Optional[str] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., duration_buckets: _Optional[_Iterable[int]] = ..., duration_sum_ms: _Optional[float] = ...) -> None: ...

class TcpSummary(_message.Message):
    __slots__ = ("service", "direction", "opened", "closed", "active", "bytes_received", "bytes_sent")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    service: str
    direction: str
    opened: int
    closed: int
    active: int
    bytes_received: int
    bytes_sent: int
    def __init__(self, service: _Optional[str] = ..., direction: _Optional[str] = ..., opened: _Optional[int] = ..., closed: _Optional[int] = ..., active: _Optional[int] = ..., bytes_received: _Optional[int] = ..., bytes_sent: _Optional[int] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("sequence", "uptime_seconds", "traffic", "edges", "paths", "tcp", "active_connections")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    uptime_seconds: float
    traffic: _containers.RepeatedCompositeFieldContainer[TrafficSummary]
    edges: _containers.RepeatedCompositeFieldContainer[EdgeSummary]
    paths: _containers.RepeatedCompositeFieldContainer[PathSummary]
    tcp: _containers.RepeatedCompositeFieldContainer[TcpSummary]
    active_connections: int
    def __init__(self, sequence: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., traffic: _Optional[_Iterable[_Union[TrafficSummary, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[EdgeSummary, _Mapping]]] = ..., paths: _Optional[_Iterable[_Union[PathSummary, _Mapping]]] = ..., tcp: _Optional[_Iterable[_Union[TcpSummary, _Mapping]]] = ..., active_connections: _Optional[int] = ...) -> None: ...

class RequestLine(_message.Message):
    __slots__ = ("start_unix", "sidecar_id", "workload", "direction", "service", "protocol", "method", "path", "authority", "status", "grpc_status", "response_flags", "reason", "duration_ms", "request_bytes", "response_bytes", "upstream", "request_id", "trace_id", "peer_workload", "attempts")
    START_UNIX_FIELD_NUMBER: _ClassVar[int]
    SIDECAR_ID_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FLAGS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    start_unix: float
    sidecar_id: str
    workload: str
    direction: str
    service: str
    protocol: str
    method: str
    path: str
    authority: str
    status: int
    grpc_status: str
    response_flags: str
    reason: str
    duration_ms: float
    request_bytes: int
    response_bytes: int
    upstream: str
    request_id: str
    trace_id: str
    peer_workload: str
    attempts: int
    def __init__(self, start_unix: _Optional[float] = ..., sidecar_id: _Optional[str] = ..., workload: _Optional[str] = ..., direction: _Optional[str] = ..., service: _Optional[str] = ..., protocol: _Optional[str] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., authority: _Optional[str] = ..., status: _Optional[int] = ..., grpc_status: _Optional[str] = ..., response_flags: _Optional[str] = ..., reason: _Optional[str] = ..., duration_ms: _Optional[float] = ..., request_bytes: _Optional[int] = ..., response_bytes: _Optional[int] = ..., upstream: _Optional[str] = ..., request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., peer_workload: _Optional[str] = ..., attempts: _Optional[int] = ...) -> None: ...

class TapStart(_message.Message):
    __slots__ = ("tap_id", "service")
    TAP_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    tap_id: str
    service: str
    def __init__(self, tap_id: _Optional[str] = ..., service: _Optional[str] = ...) -> None: ...

class TapStop(_message.Message):
    __slots__ = ("tap_id",)
    TAP_ID_FIELD_NUMBER: _ClassVar[int]
    tap_id: str
    def __init__(self, tap_id: _Optional[str] = ...) -> None: ...

class TapLines(_message.Message):
    __slots__ = ("tap_id", "lines", "dropped")
    TAP_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    tap_id: str
    lines: _containers.RepeatedCompositeFieldContainer[RequestLine]
    dropped: int
    def __init__(self, tap_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[RequestLine, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class ExplainQuery(_message.Message):
    __slots__ = ("query_id", "request_id")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    request_id: str
    def __init__(self, query_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ExplainAnswer(_message.Message):
    __slots__ = ("query_id", "hops")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    hops: _containers.RepeatedCompositeFieldContainer[RequestLine]
    def __init__(self, query_id: _Optional[str] = ..., hops: _Optional[_Iterable[_Union[RequestLine, _Mapping]]] = ...) -> None: ...

class SidecarMessage(_message.Message):
    __slots__ = ("hello", "ack", "report", "tap", "explain")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    TAP_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    hello: Node
    ack: Ack
    report: Report
    tap: TapLines
    explain: ExplainAnswer
    def __init__(self, hello: _Optional[_Union[Node, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., report: _Optional[_Union[Report, _Mapping]] = ..., tap: _Optional[_Union[TapLines, _Mapping]] = ..., explain: _Optional[_Union[ExplainAnswer, _Mapping]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("version", "nonce", "policy_json", "report_interval_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    version: int
    nonce: str
    policy_json: str
    report_interval_ms: int
    def __init__(self, version: _Optional[int] = ..., nonce: _Optional[str] = ..., policy_json: _Optional[str] = ..., report_interval_ms: _Optional[int] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("snapshot", "tap_start", "tap_stop", "explain")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    TAP_START_FIELD_NUMBER: _ClassVar[int]
    TAP_STOP_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    tap_start: TapStart
    tap_stop: TapStop
    explain: ExplainQuery
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., tap_start: _Optional[_Union[TapStart, _Mapping]] = ..., tap_stop: _Optional[_Union[TapStop, _Mapping]] = ..., explain: _Optional[_Union[ExplainQuery, _Mapping]] = ...) -> None: ...

class ResourceRef(_message.Message):
    __slots__ = ("kind", "name", "namespace")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    namespace: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("file_name", "text", "dry_run")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    text: str
    dry_run: bool
    def __init__(self, file_name: _Optional[str] = ..., text: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ResourceChange(_message.Message):
    __slots__ = ("ref", "action")
    REF_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ref: ResourceRef
    action: str
    def __init__(self, ref: _Optional[_Union[ResourceRef, _Mapping]] = ..., action: _Optional[str] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("problems", "changes", "version")
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    problems: _containers.RepeatedScalarFieldContainer[str]
    changes: _containers.RepeatedCompositeFieldContainer[ResourceChange]
    version: int
    def __init__(self, problems: _Optional[_Iterable[str]] = ..., changes: _Optional[_Iterable[_Union[ResourceChange, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("kind", "name", "namespace")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    namespace: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("ref", "yaml", "source", "version")
    REF_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ref: ResourceRef
    yaml: str
    source: str
    version: int
    def __init__(self, ref: _Optional[_Union[ResourceRef, _Mapping]] = ..., yaml: _Optional[str] = ..., source: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("resources",)
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    resources: _containers.RepeatedCompositeFieldContainer[Resource]
    def __init__(self, resources: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: ResourceRef
    def __init__(self, ref: _Optional[_Union[ResourceRef, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "version", "problems")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    version: int
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[bool] = ..., version: _Optional[int] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class ProxyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProxyStatus(_message.Message):
    __slots__ = ("node", "sent_version", "acked_version", "state", "last_error", "nacked_version", "connected_seconds")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node: Node
    sent_version: int
    acked_version: int
    state: str
    last_error: str
    nacked_version: int
    connected_seconds: float
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., sent_version: _Optional[int] = ..., acked_version: _Optional[int] = ..., state: _Optional[str] = ..., last_error: _Optional[str] = ..., nacked_version: _Optional[int] = ..., connected_seconds: _Optional[float] = ...) -> None: ...

class ProxyStatusResponse(_message.Message):
    __slots__ = ("version", "proxies")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROXIES_FIELD_NUMBER: _ClassVar[int]
    version: int
    proxies: _containers.RepeatedCompositeFieldContainer[ProxyStatus]
    def __init__(self, version: _Optional[int] = ..., proxies: _Optional[_Iterable[_Union[ProxyStatus, _Mapping]]] = ...) -> None: ...

class StressTestRequest(_message.Message):
    __slots__ = ("service", "instance", "max_p99_ms", "max_error_rate", "step_seconds", "start_share", "step_share", "max_share")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    START_SHARE_FIELD_NUMBER: _ClassVar[int]
    STEP_SHARE_FIELD_NUMBER: _ClassVar[int]
    MAX_SHARE_FIELD_NUMBER: _ClassVar[int]
    service: str
    instance: str
    max_p99_ms: float
    max_error_rate: float
    step_seconds: float
    start_share: float
    step_share: float
    max_share: float
    def __init__(self, service: _Optional[str] = ..., instance: _Optional[str] = ..., max_p99_ms: _Optional[float] = ..., max_error_rate: _Optional[float] = ..., step_seconds: _Optional[float] = ..., start_share: _Optional[float] = ..., step_share: _Optional[float] = ..., max_share: _Optional[float] = ...) -> None: ...

class StressTestProgress(_message.Message):
    __slots__ = ("share", "rate", "p99_ms", "error_rate", "done", "stopped_because", "held_rate")
    SHARE_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    STOPPED_BECAUSE_FIELD_NUMBER: _ClassVar[int]
    HELD_RATE_FIELD_NUMBER: _ClassVar[int]
    share: float
    rate: float
    p99_ms: float
    error_rate: float
    done: bool
    stopped_because: str
    held_rate: float
    def __init__(self, share: _Optional[float] = ..., rate: _Optional[float] = ..., p99_ms: _Optional[float] = ..., error_rate: _Optional[float] = ..., done: _Optional[bool] = ..., stopped_because: _Optional[str] = ..., held_rate: _Optional[float] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("service", "window_seconds")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    service: str
    window_seconds: float
    def __init__(self, service: _Optional[str] = ..., window_seconds: _Optional[float] = ...) -> None: ...

class ServiceStat(_message.Message):
    __slots__ = ("service", "meshed", "instances", "success_rate", "rps", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "tcp_connections", "requests", "protocol")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    MESHED_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    RPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    TCP_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    service: str
    meshed: int
    instances: int
    success_rate: float
    rps: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    tcp_connections: int
    requests: int
    protocol: str
    def __init__(self, service: _Optional[str] = ..., meshed: _Optional[int] = ..., instances: _Optional[int] = ..., success_rate: _Optional[float] = ..., rps: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., tcp_connections: _Optional[int] = ..., requests: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...

class PathStat(_message.Message):
    __slots__ = ("service", "method", "path", "rps", "success_rate", "latency_p50_ms", "latency_p99_ms", "requests")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    RPS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    service: str
    method: str
    path: str
    rps: float
    success_rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    requests: int
    def __init__(self, service: _Optional[str] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., rps: _Optional[float] = ..., success_rate: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., requests: _Optional[int] = ...) -> None: ...

class EdgeStat(_message.Message):
    __slots__ = ("source_workload", "destination_service", "destination_workload", "rps", "success_rate", "latency_p50_ms", "latency_p99_ms", "requests", "mtls")
    SOURCE_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    RPS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MTLS_FIELD_NUMBER: _ClassVar[int]
    source_workload: str
    destination_service: str
    destination_workload: str
    rps: float
    success_rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    requests: int
    mtls: bool
    def __init__(self, source_workload: _Optional[str] = ..., destination_service: _Optional[str] = ..., destination_workload: _Optional[str] = ..., rps: _Optional[float] = ..., success_rate: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., requests: _Optional[int] = ..., mtls: _Optional[bool] = ...) -> None: ...

class StatResponse(_message.Message):
    __slots__ = ("window_seconds", "services", "paths", "edges")
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    window_seconds: float
    services: _containers.RepeatedCompositeFieldContainer[ServiceStat]
    paths: _containers.RepeatedCompositeFieldContainer[PathStat]
    edges: _containers.RepeatedCompositeFieldContainer[EdgeStat]
    def __init__(self, window_seconds: _Optional[float] = ..., services: _Optional[_Iterable[_Union[ServiceStat, _Mapping]]] = ..., paths: _Optional[_Iterable[_Union[PathStat, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[EdgeStat, _Mapping]]] = ...) -> None: ...

class TapRequest(_message.Message):
    __slots__ = ("service", "count")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    service: str
    count: int
    def __init__(self, service: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("request_id", "wait_seconds")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    wait_seconds: float
    def __init__(self, request_id: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("hops", "sidecars_asked", "sidecars_answered", "verdict")
    HOPS_FIELD_NUMBER: _ClassVar[int]
    SIDECARS_ASKED_FIELD_NUMBER: _ClassVar[int]
    SIDECARS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    hops: _containers.RepeatedCompositeFieldContainer[RequestLine]
    sidecars_asked: int
    sidecars_answered: int
    verdict: str
    def __init__(self, hops: _Optional[_Iterable[_Union[RequestLine, _Mapping]]] = ..., sidecars_asked: _Optional[int] = ..., sidecars_answered: _Optional[int] = ..., verdict: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("version", "admin_url", "registry_embedded", "policy_version", "sidecars", "uptime_seconds")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADMIN_URL_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIDECARS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    version: str
    admin_url: str
    registry_embedded: bool
    policy_version: int
    sidecars: int
    uptime_seconds: float
    def __init__(self, version: _Optional[str] = ..., admin_url: _Optional[str] = ..., registry_embedded: _Optional[bool] = ..., policy_version: _Optional[int] = ..., sidecars: _Optional[int] = ..., uptime_seconds: _Optional[float] = ...) -> None: ...

class AcquireRequest(_message.Message):
    __slots__ = ("node_id", "policy", "rule", "key", "tokens")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    policy: str
    rule: str
    key: str
    tokens: int
    def __init__(self, node_id: _Optional[str] = ..., policy: _Optional[str] = ..., rule: _Optional[str] = ..., key: _Optional[str] = ..., tokens: _Optional[int] = ...) -> None: ...

class AcquireResponse(_message.Message):
    __slots__ = ("granted", "valid_ms")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    VALID_MS_FIELD_NUMBER: _ClassVar[int]
    granted: int
    valid_ms: int
    def __init__(self, granted: _Optional[int] = ..., valid_ms: _Optional[int] = ...) -> None: ...

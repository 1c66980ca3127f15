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

class Report(_message.Message):
    __slots__ = ("sequence", "uptime_seconds", "traffic")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    uptime_seconds: float
    traffic: _containers.RepeatedCompositeFieldContainer[TrafficSummary]
    def __init__(self, sequence: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., traffic: _Optional[_Iterable[_Union[TrafficSummary, _Mapping]]] = ...) -> None: ...

class SidecarMessage(_message.Message):
    __slots__ = ("hello", "ack", "report")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    hello: Node
    ack: Ack
    report: Report
    def __init__(self, hello: _Optional[_Union[Node, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., report: _Optional[_Union[Report, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

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

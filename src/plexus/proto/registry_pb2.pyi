from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Instance(_message.Message):
    __slots__ = ("service", "address", "protocol", "version", "labels", "zone", "unit", "weight", "identity", "mtls", "workload", "meshed")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    MTLS_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    MESHED_FIELD_NUMBER: _ClassVar[int]
    service: str
    address: str
    protocol: str
    version: str
    labels: _containers.ScalarMap[str, str]
    zone: str
    unit: str
    weight: int
    identity: str
    mtls: bool
    workload: str
    meshed: bool
    def __init__(self, service: _Optional[str] = ..., address: _Optional[str] = ..., protocol: _Optional[str] = ..., version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., zone: _Optional[str] = ..., unit: _Optional[str] = ..., weight: _Optional[int] = ..., identity: _Optional[str] = ..., mtls: _Optional[bool] = ..., workload: _Optional[str] = ..., meshed: _Optional[bool] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("publisher_id", "instances")
    PUBLISHER_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    publisher_id: str
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    def __init__(self, publisher_id: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("accepted", "errors")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    errors: _containers.RepeatedCompositeFieldContainer[PublishError]
    def __init__(self, accepted: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[PublishError, _Mapping]]] = ...) -> None: ...

class PublishError(_message.Message):
    __slots__ = ("index", "field", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    field: str
    message: str
    def __init__(self, index: _Optional[int] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("add", "remove")
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    add: _containers.RepeatedScalarFieldContainer[str]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, add: _Optional[_Iterable[str]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class ServiceUpdate(_message.Message):
    __slots__ = ("service", "version", "instances", "state")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        LIVE: _ClassVar[ServiceUpdate.State]
        RESTORED: _ClassVar[ServiceUpdate.State]
    LIVE: ServiceUpdate.State
    RESTORED: ServiceUpdate.State
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    service: str
    version: int
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    state: ServiceUpdate.State
    def __init__(self, service: _Optional[str] = ..., version: _Optional[int] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., state: _Optional[_Union[ServiceUpdate.State, str]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceUpdate]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceUpdate, _Mapping]]] = ...) -> None: ...

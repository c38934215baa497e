from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProduceRequest(_message.Message):
    __slots__ = ("route", "params", "value", "tombstone")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_FIELD_NUMBER: _ClassVar[int]
    route: str
    params: _containers.ScalarMap[str, str]
    value: bytes
    tombstone: bool
    def __init__(self, route: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., value: _Optional[bytes] = ..., tombstone: _Optional[bool] = ...) -> None: ...

class ProduceReply(_message.Message):
    __slots__ = ("topic", "partition", "offset", "correlation_id")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    offset: int
    correlation_id: str
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., correlation_id: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("route", "params", "start")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    route: str
    params: _containers.ScalarMap[str, str]
    start: str
    def __init__(self, route: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., start: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("kind", "id", "key", "value", "partition", "offset", "timestamp_ms", "reason")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RECORD: _ClassVar[Event.Kind]
        MARKER: _ClassVar[Event.Kind]
        SNAPSHOT: _ClassVar[Event.Kind]
        RESET: _ClassVar[Event.Kind]
        DELETE: _ClassVar[Event.Kind]
    RECORD: Event.Kind
    MARKER: Event.Kind
    SNAPSHOT: Event.Kind
    RESET: Event.Kind
    DELETE: Event.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    kind: Event.Kind
    id: str
    key: bytes
    value: bytes
    partition: int
    offset: int
    timestamp_ms: int
    reason: str
    def __init__(self, kind: _Optional[_Union[Event.Kind, str]] = ..., id: _Optional[str] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("value", "headers", "status")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    headers: _containers.ScalarMap[str, str]
    status: int
    def __init__(self, value: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., status: _Optional[int] = ...) -> None: ...

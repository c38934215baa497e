"""MQTT application messages <-> Kafka records: which headers carry what, both ways.

A PUBLISH becomes a record of its route (key and headers from the route's templates, plus audit
headers, see :func:`bridge.edge.record_builder.build_message`) with the MQTT details as headers:

================================  ===============================================================
``mqtt-topic``                    the concrete MQTT topic (a catch-all route keys by it too)
``mqtt-qos``                      the publish QoS (delivered QoS = min(this, granted))
``mqtt-client``                   publisher client id (MQTT 5 No Local)
``mqtt-retain``                   ``1`` if published retained (MQTT 5 Retain As Published)
``mqtt-expires-at``               epoch ms after which the message is not delivered (expiry)
``mqtt-payload-format``           ``1`` for UTF-8 text
``mqtt-response-topic``           MQTT 5 response topic
``mqtt-correlation-data``         MQTT 5 correlation data (raw bytes)
``content-type``                  MQTT 5 content type (or the route's)
anything else                     MQTT 5 user properties, as plain headers (names may repeat)
================================  ===============================================================

Records written by plain Kafka clients have none of these and are delivered with QoS 1 at most
(their QoS is unknown; the subscriber's grant decides) and no properties.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from bridge.edge.audit import is_audit_header
from bridge.model.config import Route
from bridge.model.message import Message

from .wire.packets import EMPTY_PROPERTIES, Properties, Publish

TOPIC = "mqtt-topic"
QOS = "mqtt-qos"
CLIENT = "mqtt-client"
EXPIRES_AT = "mqtt-expires-at"
PAYLOAD_FORMAT = "mqtt-payload-format"
RESPONSE_TOPIC = "mqtt-response-topic"
CORRELATION_DATA = "mqtt-correlation-data"
CONTENT_TYPE = "content-type"
RETAIN = "mqtt-retain"
_RESERVED = frozenset(
    {
        TOPIC,
        QOS,
        CLIENT,
        EXPIRES_AT,
        PAYLOAD_FORMAT,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        CONTENT_TYPE,
        RETAIN,
    }
)
QOS_BYTES = (b"0", b"1", b"2")


def publish_headers(
    publish: Publish, topic: str, client_id: str, now: float | None = None
) -> list[tuple[str, bytes]]:
    """The MQTT headers of a record produced for ``publish`` (topic alias already resolved)."""
    return [
        (TOPIC, topic.encode()),
        (QOS, QOS_BYTES[publish.qos]),
        (CLIENT, client_id.encode()),
        *publish_headers_tail(publish, now),
    ]


_NO_HEADERS: tuple[tuple[str, bytes], ...] = ()
_RETAINED = ((RETAIN, b"1"),)


def publish_headers_tail(publish: Publish, now: float | None = None) -> Sequence[tuple[str, bytes]]:
    """The headers of :func:`publish_headers` after ``mqtt-client``: retain and MQTT 5
    properties (the part that varies between publishes of one topic by one client)."""
    props = publish.properties
    if props is EMPTY_PROPERTIES:
        return _RETAINED if publish.retain else _NO_HEADERS
    headers = [(RETAIN, b"1")] if publish.retain else []
    if props.message_expiry_interval is not None:
        expires = int(((now or time.time()) + props.message_expiry_interval) * 1000)
        headers.append((EXPIRES_AT, str(expires).encode()))
    if props.payload_format_indicator:
        headers.append((PAYLOAD_FORMAT, b"1"))
    if props.content_type is not None:
        headers.append((CONTENT_TYPE, props.content_type.encode()))
    if props.response_topic is not None:
        headers.append((RESPONSE_TOPIC, props.response_topic.encode()))
    if props.correlation_data is not None:
        headers.append((CORRELATION_DATA, props.correlation_data))
    headers.extend((name, value.encode()) for name, value in props.user_properties)
    return headers


def record_qos(record: Message) -> int:
    """The QoS a record was published with (1 for records from plain Kafka producers)."""
    raw = record.header(QOS)
    if raw in QOS_BYTES:
        return QOS_BYTES.index(raw)
    return 1


def expired(record: Message, now_ms: int) -> bool:
    raw = record.header(EXPIRES_AT)
    return raw is not None and raw.isdigit() and int(raw) <= now_ms


def delivery_properties(record: Message, route: Route, now_ms: int) -> Properties:
    """MQTT 5 properties for delivering ``record`` (subscription ids are added per subscriber)."""
    expiry: int | None = None
    fmt: int | None = None
    content_type = response = None
    correlation: bytes | None = None
    user: list[tuple[str, str]] = []
    route_headers = route.headers
    for name, value in record.headers:
        if name in _RESERVED:
            if name == EXPIRES_AT and value.isdigit():
                expiry = max(1, (int(value) - now_ms + 999) // 1000)
            elif name == PAYLOAD_FORMAT:
                fmt = 1
            elif name == CONTENT_TYPE:
                content_type = value.decode("utf-8", "replace")
            elif name == RESPONSE_TOPIC:
                response = value.decode("utf-8", "replace")
            elif name == CORRELATION_DATA:
                correlation = value
            continue
        if name in route_headers or is_audit_header(name, route.audit):
            continue
        user.append((name, value.decode("utf-8", "replace")))
    if expiry is fmt is content_type is response is correlation is None and not user:
        return EMPTY_PROPERTIES
    return Properties(
        payload_format_indicator=fmt,
        message_expiry_interval=expiry,
        content_type=content_type,
        response_topic=response,
        correlation_data=correlation,
        user_properties=tuple(user),
    )


def publisher_of(record: Message) -> bytes | None:
    return record.header(CLIENT)


def retained_record(
    topic_name: str,
    retained_topic: str,
    publish: Publish,
    headers: Sequence[tuple[str, bytes]],
    value: bytes | None = None,
) -> Message:
    """The record for the retained-messages table: key = MQTT topic; empty payload clears.
    ``value``: the record's value when it is not the payload (a route's transform made it)."""
    value = (value or publish.payload) if publish.payload else None
    return Message(
        retained_topic, topic_name.encode(), value, tuple(headers) if value is not None else ()
    )

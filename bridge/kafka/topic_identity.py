"""Which incarnation of a topic is this? Kafka's topic ids (KIP-516), asked for directly.

A topic deleted and created again under the same name starts its offsets at 0 again, so an offset
alone cannot tell "record 20 of the topic you were reading" from "record 20 of a new topic". Kafka
(2.8+) gives every topic a UUID, returned by Metadata v10 and later, which a recreated topic does
not share. aiokafka speaks Metadata up to v5 only, so this module adds the v12 request (its schema
from the Kafka protocol guide) and sends it through aiokafka's client like any other request.

A broker without topic ids (older Kafka) answers with no id; callers then know nothing of
incarnations (epoch 0) and behave as before. The embedded broker (Tansu) gives ids, and a new id
for a recreated topic (docs/tansu-behaviour.md).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import IncompatibleBrokerVersion
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    AbstractType,
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

METADATA_API_KEY = 3
UNKNOWN_TOPIC_OR_PARTITION = 3
NO_ID = bytes(16)


class Uuid(AbstractType[bytes]):
    """Kafka's ``uuid`` type: 16 raw bytes; all zeros means "none"."""

    @classmethod
    def encode(cls, value: bytes | None) -> bytes:
        return value or NO_ID

    @classmethod
    def decode(cls, data: BytesIO) -> bytes:
        return data.read(16)


class MetadataResponse_v12(Response):
    API_KEY = METADATA_API_KEY
    API_VERSION = 12
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class MetadataRequest_v12(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = METADATA_API_KEY
    API_VERSION = 12
    RESPONSE_TYPE = MetadataResponse_v12
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic_id", Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields)
            ),
        ),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class _TopicIdsRequest(Request[MetadataRequest_v12]):
    API_KEY = METADATA_API_KEY

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics

    def build(self, request_struct_class: type[MetadataRequest_v12]) -> MetadataRequest_v12:
        return request_struct_class([(None, t, {}) for t in self.topics], False, False, {})


async def topic_ids(client: AIOKafkaClient, topics: list[str]) -> dict[str, bytes | None]:
    """Each topic's id: 16 bytes, ``None`` if the topic does not exist, ``b""`` if the cluster
    gives no ids (too old). Raises aiokafka's errors when Kafka does not answer."""
    if not topics:
        return {}
    try:
        response: Any = await client.send(client.get_random_node(), _TopicIdsRequest(topics))
    except (IncompatibleBrokerVersion, NotImplementedError):  # no Metadata v12 on this cluster
        return dict.fromkeys(topics, b"")
    found: dict[str, bytes | None] = {}
    for error_code, name, topic_id, *_ in response.topics:
        if error_code == UNKNOWN_TOPIC_OR_PARTITION:
            found[name] = None
        else:
            found[name] = b"" if topic_id == NO_ID else topic_id
    return found

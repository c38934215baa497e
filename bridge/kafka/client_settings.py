"""Settings shared by every aiokafka client the bridge makes (producer, consumers, admin)."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord

from bridge.model.config import KafkaSettings
from bridge.model.message import Message


def client_options(settings: KafkaSettings, bootstrap: str, role: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": f"{settings.client_id}-{role}",
        "request_timeout_ms": settings.request_timeout_ms,
    }
    options.update(settings.security)
    return options


def consumer_options(settings: KafkaSettings, bootstrap: str, role: str) -> dict[str, Any]:
    """Options for a group-less consumer that is assigned partitions by hand."""
    return {
        **client_options(settings, bootstrap, role),
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        # Tansu holds every fetch for the whole wait, so this is the floor of live latency.
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }


def to_message(record: ConsumerRecord[bytes, bytes]) -> Message:
    headers = tuple((name, value if value is not None else b"") for name, value in record.headers)
    return Message(
        topic=record.topic,
        key=record.key,
        value=record.value,
        headers=headers,
        timestamp_ms=record.timestamp,
        partition=record.partition,
        offset=record.offset,
    )

"""OwnedTables against the real broker: a share is owned and loaded, and an assignment that
reaches the rebalance listener after stop() (the group coordinator finishing a join while the
bridge is shutting down) is declined instead of failing inside aiokafka."""

from __future__ import annotations

import uuid
from typing import Any

from aiokafka.structs import TopicPartition

from bridge.kafka.owned_table import OwnedTables, _Listener
from bridge.kafka.producer import Producer
from bridge.model.config import KafkaSettings


async def test_assignment_after_stop_is_declined(
    kafka_bootstrap: str, kafka_settings: KafkaSettings, new_topic: Any
) -> None:
    topic = await new_topic(partitions=2, compact=True, prefix="owned")
    producer = Producer(kafka_settings, kafka_bootstrap)
    await producer.start()
    tables: OwnedTables[dict[bytes, bytes]] = OwnedTables(
        producer,
        kafka_settings,
        kafka_bootstrap,
        topic,
        group=f"owned-{uuid.uuid4().hex[:8]}",
        address="127.0.0.1:1",
        new_table=lambda _: {},
        session_timeout_ms=1000,
    )
    try:
        await tables.start(ready_timeout_s=30)
        assert set(tables.owned()) == {0, 1}
        assert tables.local(0) == {}
        await tables.stop()
        await _Listener(tables).on_partitions_assigned([TopicPartition(topic, 0)])
        assert tables.owned() == {}
        assert tables.local(0) is None
    finally:
        await tables.stop()
        await producer.stop()

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


async def test_a_restarted_instance_takes_over_its_crashed_membership(
    kafka_bootstrap: str, kafka_settings: KafkaSettings, new_topic: Any
) -> None:
    """An instance that crashed (no LeaveGroup, its session still live) and starts again at the
    same address rejoins as the same member, so the group does not wait out the old session
    (the default 6 s) before it gets its partitions back."""
    topic = await new_topic(partitions=2, compact=True, prefix="owned")
    group = f"owned-{uuid.uuid4().hex[:8]}"
    producer = Producer(kafka_settings, kafka_bootstrap)
    await producer.start()

    def instance() -> OwnedTables[dict[bytes, bytes]]:
        return OwnedTables(
            producer,
            kafka_settings,
            kafka_bootstrap,
            topic,
            group=group,
            address="127.0.0.1:7",
            new_table=lambda _: {},
            session_timeout_ms=6000,
        )

    first, second = instance(), instance()
    try:
        await first.start(ready_timeout_s=30)
        assert set(first.owned()) == {0, 1}
        assert first._consumer is not None
        old_member = first._consumer._coordinator.member_id
        await first.stop()  # like a crash: no LeaveGroup (LEAVE_GROUP is False)
        await second.start(ready_timeout_s=20)
        assert second._consumer is not None
        assert second._consumer._coordinator.member_id == old_member
        assert set(second.owned()) == {0, 1}
    finally:
        await first.stop()
        await second.stop()
        await producer.stop()

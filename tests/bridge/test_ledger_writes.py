"""The ledger's writes through the real broker: a record sent to a named partition, and a
release that is queued (it rides with the next claim) still reaching its partition before the
next claim of the same key, so a table rebuilt from the log (a new owner, a restart) holds the
new claim."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from bridge.edge.idempotency import IdempotencyStore, LedgerPartition, Local
from bridge.kafka.partitioner import positive_murmur2
from bridge.kafka.producer import Producer
from bridge.model.config import KafkaSettings
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message


async def read_partition(bootstrap: str, topic: str, partition: int) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        found: list[Any] = []
        while not found or found[-1].offset + 1 < end:
            batches = await consumer.getmany(tp, timeout_ms=2000)
            assert batches, f"only {len(found)} records of partition {partition}"
            found.extend(batches[tp])
        return found
    finally:
        await consumer.stop()


async def test_send_to_a_named_partition_not_the_keys(
    kafka_bootstrap: str, kafka_settings: KafkaSettings, new_topic: Any
) -> None:
    topic = await new_topic(partitions=3)
    key = b"bet-1"
    named = (positive_murmur2(key) % 3 + 1) % 3  # any partition but the key's own
    producer = Producer(kafka_settings, kafka_bootstrap)
    await producer.start()
    try:
        produced = await producer.send(Message(topic, key, b"v"), "all", named)
        assert produced.partition == named
        with pytest.raises(KafkaUnavailable, match="no partition 7"):
            await producer.send(Message(topic, key, b"v"), "all", 7)
    finally:
        await producer.stop()
    records = await read_partition(kafka_bootstrap, topic, named)
    assert [(r.key, r.value) for r in records] == [(key, b"v")]


async def test_a_release_reaches_the_ledger_before_the_next_claim_of_its_key(
    kafka_bootstrap: str, kafka_settings: KafkaSettings, new_topic: Any
) -> None:
    topic = await new_topic(partitions=2, compact=True, prefix="ledger")
    producer = Producer(kafka_settings, kafka_bootstrap)
    await producer.start()
    store = IdempotencyStore(
        producer,
        kafka_settings,
        kafka_bootstrap,
        "127.0.0.1:1",
        rebuild=lambda _record, _recipe: b"",
        topic=topic,
        session_timeout_ms=1000,
    )
    key = b'["bets",null,"k1"]'
    try:
        await store.start(ready_timeout_s=30)
        where = await store.locate(key)
        assert isinstance(where, Local)
        first = await store.claim(where, key, "fp", "bets", {})
        store.release(first)  # Kafka refused the record: the key is free at once
        where = await store.locate(key)
        assert isinstance(where, Local) and where.entry is None
        second = await store.claim(where, key, "fp", "bets", {})  # the client's retry
        store.complete(second, b"outcome", 60)
        await first.done
        await store.stop()  # writes what is queued
        await second.done
    finally:
        await store.stop()
        await producer.stop()
    records = await read_partition(kafka_bootstrap, topic, where.partition)
    kinds = [(chr(r.value[1]), r.value[2:18]) for r in records]
    assert kinds == [
        ("C", first.claim),
        ("R", first.claim),
        ("C", second.claim),
        ("D", second.claim),
    ]
    # An owner that died before the completion was written: a new owner rebuilding the
    # partition must find the retry's claim pending (and recover it), not a free key that a
    # third attempt would produce again.
    rebuilt = LedgerPartition()
    for record in records[:3]:
        rebuilt.apply(record.key, record.value, record.timestamp)
    entry = rebuilt.lookup(key)
    assert entry is not None and entry.claim == second.claim and entry.outcome is None


async def test_the_owner_does_not_read_its_own_writes_back(
    kafka_bootstrap: str, kafka_settings: KafkaSettings, new_topic: Any
) -> None:
    """The owner is the ledger's only writer and applies each write itself: once loaded, its
    partitions are not fetched again (a fetch and a decode per write, for nothing)."""
    topic = await new_topic(partitions=1, compact=True, prefix="ledger")
    producer = Producer(kafka_settings, kafka_bootstrap)
    await producer.start()
    store = IdempotencyStore(
        producer,
        kafka_settings,
        kafka_bootstrap,
        "127.0.0.1:1",
        rebuild=lambda _record, _recipe: b"",
        topic=topic,
        session_timeout_ms=1000,
    )
    try:
        await store.start(ready_timeout_s=30)
        loaded = store.tables.records_read
        for n in range(5):
            key = b'["bets",null,"k%d"]' % n
            where = await store.locate(key)
            assert isinstance(where, Local)
            claimed = await store.claim(where, key, "fp", "bets", {})
            store.complete(claimed, b"outcome", 60)
            await asyncio.sleep(0)
        await asyncio.wait_for(claimed.done, 10)  # every write acknowledged by Kafka
        assert len(await read_partition(kafka_bootstrap, topic, 0)) == 10
        # Before, the owner's consumer read all ten back within a fetch wait (10 ms here).
        for _ in range(20):
            await asyncio.sleep(0.05)
            assert store.tables.records_read == loaded
        entry = (await store.locate(b'["bets",null,"k4"]')).entry  # type: ignore[union-attr]
        assert entry is not None and entry.outcome == b"outcome"
    finally:
        await store.stop()
        await producer.stop()

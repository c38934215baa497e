"""Producer.submit with a linger: acknowledged by Kafka, in order, on its own producer."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from bridge.kafka.producer import Producer
from bridge.model.config import KafkaSettings
from bridge.model.message import Message


async def read_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning()
        values: list[bytes] = []
        while len(values) < count:
            batches = await consumer.getmany(timeout_ms=2000)
            assert batches, f"only {len(values)} of {count} records in Kafka"
            for records in batches.values():
                values.extend(record.value for record in records)
        return values
    finally:
        await consumer.stop()


async def test_lingering_records_are_acknowledged_in_order(
    producer: Producer, kafka_bootstrap: str, new_topic
) -> None:
    topic = await new_topic(partitions=1)
    futures = []
    for n in range(300):
        # alternate between the lingering and the immediate producer of the same acks
        linger = 20 if n < 200 else 0
        futures.append(await producer.submit(Message(topic, b"k", b"%d" % n, ()), "1", linger))
        if n == 0:
            # Nothing is acknowledged before Kafka answered. Checked at once: by the end of the
            # loop a loaded machine may have spent the 20 ms linger and the round trip.
            assert not futures[0].done()
    produced = await asyncio.gather(*futures)
    lingering = [metadata.offset for metadata in produced[:200]]
    assert lingering == sorted(lingering) and len(set(lingering)) == 200
    values = await read_all(kafka_bootstrap, topic, 300)
    assert sorted(values, key=int) == [b"%d" % n for n in range(300)]
    in_kafka = [int(value) for value in values if int(value) < 200]
    assert in_kafka == list(range(200))  # one (acks, linger) pair keeps its order


async def test_negative_linger_is_refused(
    kafka_bootstrap: str, kafka_settings: KafkaSettings, new_topic
) -> None:
    topic = await new_topic(partitions=1)
    producer = Producer(kafka_settings, kafka_bootstrap)
    try:
        with pytest.raises(ValueError, match="linger_ms must be >= 0"):
            await producer.submit(Message(topic, b"k", b"v", ()), "1", -5)
    finally:
        await producer.stop()

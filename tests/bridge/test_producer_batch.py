"""Producer.submit/send through aiokafka's batch API (bridge/kafka/batch_producer.py), real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from bridge.kafka.producer import MAX_REQUEST_SIZE, Producer
from bridge.model.config import KafkaSettings
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message
from bridge.telemetry.metrics import KAFKA_PRODUCE_SECONDS


async def read_all(bootstrap: str, topic: str, partitions: int, count: int) -> list[ConsumerRecord]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        found: list[ConsumerRecord] = []
        while len(found) < count:
            batches = await consumer.getmany(timeout_ms=2000)
            assert batches, f"only {len(found)} of {count} records in Kafka"
            for records in batches.values():
                found.extend(records)
        return found
    finally:
        await consumer.stop()


def produced_count(acks: str) -> float:
    for metric in KAFKA_PRODUCE_SECONDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("acks") == acks:
                return sample.value
    return 0.0


async def test_one_turn_of_records_keeps_order_keys_headers_and_timestamps(
    producer: Producer, kafka_bootstrap: str, new_topic
) -> None:
    topic = await new_topic(partitions=3)
    done_order: list[int] = []
    counted = produced_count("1")
    futures = []
    for n in range(400):  # no await that yields in between: one loop turn, many batches
        message = Message(
            topic,
            b"device/%d" % (n % 7),
            b"%d" % n,
            (("n", b"%d" % n), ("empty", None)),
            1_700_000_000_000 + n,
        )
        on_done = lambda future, n=n: done_order.append(n)  # noqa: E731
        futures.append(await producer.submit(message, "1", 0, on_done))
    assert not any(future.done() for future in futures)  # nothing before Kafka's answer
    produced = await asyncio.gather(*futures)
    assert sorted(done_order) == list(range(400))
    assert produced_count("1") - counted == 400  # the latency histogram saw every record
    by_partition: dict[int, list[int]] = {}
    for n, metadata in enumerate(produced):
        assert metadata.topic == topic
        assert metadata.timestamp == 1_700_000_000_000 + n  # CreateTime: the record's own
        by_partition.setdefault(metadata.partition, []).append(metadata.offset)
    for offsets in by_partition.values():  # consecutive offsets in submit order
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
    records = await read_all(kafka_bootstrap, topic, 3, 400)
    for record in records:
        n = int(record.value)
        assert record.key == b"device/%d" % (n % 7)
        assert list(record.headers) == [("n", b"%d" % n), ("empty", None)]
        assert record.timestamp == 1_700_000_000_000 + n
        assert (record.partition, record.offset) == (produced[n].partition, produced[n].offset)
    for key in {record.key for record in records}:
        mine = [int(r.value) for r in sorted(records, key=lambda r: r.offset) if r.key == key]
        assert mine == sorted(mine)  # one key: one partition, in order


async def test_full_batches_and_big_records_go_out_in_order(
    producer: Producer, kafka_bootstrap: str, new_topic
) -> None:
    """More than one batch (16 KiB) in one turn, and records bigger than a batch."""
    topic = await new_topic(partitions=1)
    sizes = [100, 3000, 40_000, 10, 20_000, 20_000, 5] * 20
    futures = [
        await producer.submit(Message(topic, b"k", b"%06d" % n + b"x" * size, ()), "1")
        for n, size in enumerate(sizes)
    ]
    offsets = [metadata.offset for metadata in await asyncio.gather(*futures)]
    assert offsets == list(range(offsets[0], offsets[0] + len(sizes)))
    records = await read_all(kafka_bootstrap, topic, 1, len(sizes))
    assert [int(record.value[:6]) for record in records] == list(range(len(sizes)))
    assert [len(record.value) - 6 for record in records] == sizes


async def test_a_record_kafka_cannot_take_is_refused_and_the_others_go(
    producer: Producer, kafka_bootstrap: str, new_topic
) -> None:
    topic = await new_topic(partitions=1)
    before = await producer.submit(Message(topic, b"k", b"before", ()), "1")
    with pytest.raises(KafkaUnavailable, match="MessageSizeTooLarge"):
        await producer.submit(Message(topic, b"k", b"x" * (MAX_REQUEST_SIZE + 1), ()), "1")
    after = await producer.submit(Message(topic, b"k", b"after", ()), "1")
    first, second = await asyncio.gather(before, after)
    assert second.offset == first.offset + 1


async def test_send_and_submit_share_one_order(
    producer: Producer, kafka_bootstrap: str, new_topic
) -> None:
    """An awaited send() (MQTT retained publishes) never overtakes earlier submitted records."""
    topic = await new_topic(partitions=1)
    futures = [await producer.submit(Message(topic, b"k", b"%d" % n, ()), "1") for n in range(50)]
    sent = await producer.send(Message(topic, b"k", b"50", ()), "1")
    assert all(future.done() for future in futures)  # acknowledged with or before it
    offsets = [future.result().offset for future in futures]
    assert [*offsets, sent.offset] == list(range(offsets[0], offsets[0] + 51))


async def test_stop_flushes_records_not_yet_handed_to_kafka(
    kafka_bootstrap: str, kafka_settings: KafkaSettings, new_topic
) -> None:
    topic = await new_topic(partitions=1)
    producer = Producer(kafka_settings, kafka_bootstrap)
    await producer.start()
    futures = [await producer.submit(Message(topic, b"k", b"%d" % n, ()), "1") for n in range(20)]
    await producer.stop()  # same loop turn as the submits: the batch is still open
    assert all(future.done() and future.exception() is None for future in futures)
    records = await read_all(kafka_bootstrap, topic, 1, 20)
    assert [record.value for record in records] == [b"%d" % n for n in range(20)]

"""The caching partitioner: byte-compatible with Kafka's default partitioner, on a real broker."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.kafka.partitioner import CachingPartitioner
from bridge.kafka.partitioner import murmur2 as our_murmur2
from bridge.kafka.producer import Producer
from bridge.model.config import KafkaSettings
from bridge.model.message import Message

# Kafka's own vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java,
# testMurmur2): the Java client's murmur2 of these UTF-8 strings.
JAVA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


def java_partition(key: bytes, partitions: int) -> int:
    """Kafka's DefaultPartitioner: toPositive(murmur2(key)) % numPartitions."""
    signed = murmur2(key)
    signed = signed - (1 << 32) if signed >= 1 << 31 else signed
    return (signed & 0x7FFFFFFF) % partitions


def test_java_vectors() -> None:
    partitioner = CachingPartitioner()
    for text, java_hash in JAVA_MURMUR2.items():
        for count in (1, 3, 4, 7, 12, 100):
            expected = (java_hash & 0x7FFFFFFF) % count
            assert partitioner(text.encode(), list(range(count)), []) == expected, (text, count)


@settings(max_examples=2000, deadline=None)
@given(
    keys=st.lists(st.binary(max_size=300), min_size=1, max_size=20),
    partitions=st.integers(min_value=1, max_value=256),
)
def test_same_partition_as_aiokafka_default(keys: list[bytes], partitions: int) -> None:
    # A small cache so evictions happen too; every key twice: once computed, once cached.
    partitioner = CachingPartitioner(cached_keys=8)
    all_partitions = list(range(partitions))
    for key in keys + keys:
        ours = partitioner(key, all_partitions, all_partitions)
        assert ours == DefaultPartitioner()(key, all_partitions, all_partitions)
        assert ours == java_partition(key, partitions)


@settings(max_examples=3000, deadline=None)
@given(key=st.binary(max_size=200))
def test_our_murmur2_is_aiokafkas(key: bytes) -> None:
    """Word-at-a-time, every length modulo 4 (the tail bytes), the same 32-bit value."""
    assert our_murmur2(key) == murmur2(key)


@given(key=st.binary(max_size=64), partitions=st.integers(min_value=1, max_value=64))
def test_partition_ids_come_from_the_metadata(key: bytes, partitions: int) -> None:
    # aiokafka passes the partition ids sorted; the index picks the id, as in Kafka.
    ids = [10 + 2 * n for n in range(partitions)]
    assert CachingPartitioner()(key, ids, ids) == DefaultPartitioner()(key, ids, ids)


def test_mutable_keys_and_the_cache() -> None:
    partitioner = CachingPartitioner(cached_keys=2)
    ids = list(range(7))
    expected = DefaultPartitioner()(b"sport/42", ids, ids)
    assert partitioner(bytearray(b"sport/42"), ids, ids) == expected
    assert partitioner(memoryview(b"sport/42"), ids, ids) == expected
    assert partitioner(b"sport/42", ids, ids) == expected
    hits, misses, maxsize, size = partitioner.cache_info()
    assert (hits, misses, maxsize, size) == (2, 1, 2, 1)
    for n in range(10):
        partitioner(f"k{n}".encode(), ids, ids)
    assert partitioner.cache_info()[3] == 2  # bounded


def test_unkeyed_records_go_to_an_available_partition() -> None:
    partitioner = CachingPartitioner()
    assert {partitioner(None, [0, 1, 2], [2]) for _ in range(50)} == {2}
    assert {partitioner(None, [0, 1, 2], []) for _ in range(200)} == {0, 1, 2}


async def test_producer_places_keys_like_kafka(
    kafka_bootstrap: str, kafka_settings: KafkaSettings, new_topic
) -> None:
    """Through the real broker: each keyed record lands where Kafka's partitioner says."""
    topic = await new_topic(partitions=5)
    keys = [f"match/{n % 9}/odds".encode() for n in range(90)]
    producer = Producer(kafka_settings, kafka_bootstrap)
    await producer.start()
    try:
        futures = [
            await producer.submit(Message(topic, key, b"v%d" % n, ())) for n, key in enumerate(keys)
        ]
        placed = [metadata.partition for metadata in await asyncio.gather(*futures)]
    finally:
        await producer.stop()
    assert placed == [java_partition(key, 5) for key in keys]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(5)])
        await consumer.seek_to_beginning()
        seen: dict[bytes, int] = {}
        read = 0
        while read < len(keys):
            batches = await consumer.getmany(timeout_ms=1000)
            assert batches, f"only {read} of {len(keys)} records came back"
            for tp, records in batches.items():
                read += len(records)
                for record in records:
                    assert seen.setdefault(record.key, tp.partition) == tp.partition
    finally:
        await consumer.stop()
    assert seen == {key: java_partition(key, 5) for key in set(keys)}
